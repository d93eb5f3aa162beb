"""One CodeAct test task, side by side: the teacher's run, the adapted SLM's and the base SLM's first step.

`side_by_side_part(results)` picks the first test task the teacher solved and the adapted SLM ran
(preferring one it solved too), and renders each model's steps (thought, code, observation) from its
trajectories.jsonl. Answers are re-checked (`answer_check`) only to pick the task and to print each run's
check; nothing is measured again.
"""

from __future__ import annotations

from pathlib import Path

from ray_app.codeact.answer_check import AnswerCheck, check_answer
from ray_app.codeact.records import Trajectory
from ray_app.decide.codeact_decide import eval_command
from ray_app.eval.codeact_store import TRAJECTORIES_NAME
from ray_app.json_text import canonical_json
from ray_app.report import markdown as md
from ray_app.report.codeact_results import ADAPTED_LABEL, CodeactResults, read_trajectories

TEXT_CHARS, CODE_CHARS = 600, 1500  # a thought or observation, a code block: longer ones are cut


def answer_check(trajectory: Trajectory) -> AnswerCheck:
    return check_answer(trajectory.task, trajectory.final_answer, trajectory.has_final_answer, trajectory.tool_calls)


def pick_task(teacher: list[Trajectory], student: list[Trajectory]) -> tuple[int, bool] | None:
    """(index into `teacher`, whether the student solved it too): the first task the teacher solved and the
    student ran, preferring one the student solved as well; None when there is none."""
    by_task = {trajectory.task.task_id: trajectory for trajectory in student}
    solved = [i for i, run in enumerate(teacher) if run.task.task_id in by_task and answer_check(run).correct]
    both = [i for i in solved if answer_check(by_task[teacher[i].task.task_id]).correct]
    if both:
        return both[0], True
    return (solved[0], False) if solved else None


def text_block(text: str, limit: int = TEXT_CHARS, info: str = "text") -> str:
    return md.code_block(md.shorten(text.strip(), limit) or "(empty)", info)


def render_steps(trajectory: Trajectory, first_only: bool = False) -> list[str]:
    parts = []
    for number, step in enumerate(trajectory.steps[:1] if first_only else trajectory.steps, start=1):
        parts += [f"**Step {number}.** Thought:", text_block(step.thought)]
        if step.code is None:
            parts += ["No code block (an invalid action); the model wrote:", text_block(step.model_output)]
            continue
        parts += ["Code:", text_block(step.code, CODE_CHARS, "python")]
        execution = step.execution
        if execution is not None:
            raised = f" (raised {md.code(md.shorten(md.one_line(execution.error), 160))})" if execution.error else ""
            refused = f", sandbox: {md.code(execution.violation)}" if execution.violation else ""
            parts += [f"Observation{raised}{refused}:", text_block(execution.observation)]
    return parts


def run_summary(trajectory: Trajectory) -> str:
    check = answer_check(trajectory)
    detail = f" ({check.detail})" if check.detail else ""
    answer = (
        f"final answer {md.code(md.shorten(canonical_json(trajectory.final_answer), 200))}"
        if trajectory.has_final_answer
        else "no final answer"
    )
    return (
        f"{len(trajectory.steps)} step(s), stopped on `{trajectory.stop_reason}`, {answer}; "
        f"check: `{check.code}`{detail}."
    )


def student_label(results: CodeactResults) -> str:
    """The adapted SLM shown beside the teacher: slm-codeact, else the first adapted label with trajectories."""
    adapted = results.columns[2:]
    with_runs = [label for label in adapted if results.path(label, TRAJECTORIES_NAME).is_file()]
    return ADAPTED_LABEL if ADAPTED_LABEL in with_runs or not with_runs else with_runs[0]


def side_by_side_part(results: CodeactResults) -> tuple[str, list[Path]]:
    config, student = results.config, student_label(results)
    teacher_label, slm_label = config.teacher_label, config.slm_label
    heading = "### One test task, side by side"
    paths = {label: results.path(label, TRAJECTORIES_NAME) for label in (teacher_label, student, slm_label)}
    missing = [label for label in (teacher_label, student) if not paths[label].is_file()]
    if missing:
        needed = ", ".join(f"{md.code(results.name(paths[label]))} (`{eval_command(label, config)}`)"
                           for label in missing)  # fmt: skip
        return f"{heading}\n\nNeeds {needed}.", []
    runs = {label: read_trajectories(path, eval_command(label, config))
            for label, path in paths.items() if path.is_file()}  # fmt: skip
    read = [paths[label] for label in runs]
    teacher_file = md.code(results.name(paths[teacher_label]))
    picked = pick_task(runs[teacher_label], runs[student])
    if picked is None:
        return f"{heading}\n\nNo task in {teacher_file} that the teacher solved and {md.code(student)} ran.", read
    index, both = picked
    task = runs[teacher_label][index].task
    why = (
        f"the first task in that file that the teacher and {md.code(student)} both solved"
        if both
        else f"the first task in that file that the teacher solved ({md.code(student)} solved none of them)"
    )
    request = task.request + (f"\n\nInstruction: {task.instruction}" if task.instruction else "")
    tools = ", ".join(md.code(tool.python_name) for tool in task.tools) or "none"
    parts = [
        heading,
        f"Task {md.code(task.task_id)} ({task.kind}, line {index + 1} of {teacher_file}"
        + (f", from {md.code(task.source)}" if task.source else "")
        + f"): {why}. Long texts are cut.",
        "Request:",
        text_block(request),
        f"Tools: {tools}. Expected: {md.code(md.shorten(canonical_json(task.gold), 300))}.",
    ]
    by_task = {label: {run.task.task_id: run for run in trajectories} for label, trajectories in runs.items()}
    shown = [("teacher", teacher_label, False), ("SLM + adapter", student, False), ("base SLM", slm_label, True)]
    for title, label, first_only in shown:
        run = by_task.get(label, {}).get(task.task_id)
        if run is None:
            why_not = "no trajectories.jsonl" if label not in runs else "no trajectory for this task"
            parts.append(f"#### {title} ({md.code(label)})\n\nNot shown: {why_not} (`{eval_command(label, config)}`).")
            continue
        first = ", first step only" if first_only else ""
        parts += [f"#### {title} ({md.code(label)}{first})", run_summary(run), *render_steps(run, first_only)]
    return "\n\n".join(parts), read
