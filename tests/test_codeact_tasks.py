"""CodeAct tasks: Python signatures and the system prompt, tasks from the committed data, generated
multi-step tasks, the tasks file, and the answer check. Pure and fast (the tokenizer test loads only
the demo model's tokenizer)."""

from __future__ import annotations

import ast
import json
import statistics
from pathlib import Path

import pytest

from ray_app.codeact.answer_check import AnswerCheck, check_answer
from ray_app.codeact.python_signatures import (
    AUTHORIZED_IMPORTS,
    first_sentence,
    python_signature,
    system_message,
    task_messages,
    tools_block,
)
from ray_app.codeact.records import CodeactTask, ToolCallRecord, ToolSpec
from ray_app.codeact.tasks import (
    MULTISTEP_FAMILIES,
    TaskFileError,
    build_tasks,
    multistep_tasks,
    read_tasks,
    structured_tasks,
    toolcall_tasks,
    write_tasks,
)
from ray_app.codeact.tool_stubs import parameter_order
from ray_app.json_text import canonical_json
from ray_app.paths import PROJECT_ROOT

DATASET = PROJECT_ROOT / "slm_swap" / "02_dataset"
TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "priority": {"type": "string", "enum": ["low", "high"], "description": "How urgent."},
        "customer_id": {"type": "string"},
    },
    "required": ["customer_id"],
}


def spec(name: str, description: str, properties: dict, required: list[str] | None = None) -> ToolSpec:
    schema = {"type": "object", "properties": properties, "required": required if required is not None else []}
    return ToolSpec(name, description, schema)


# ---- signatures and the system prompt -------------------------------------------------------------


def test_signature_enum_optional_and_dotted_name() -> None:
    tool = ToolSpec("crm.create_ticket", "Create a support ticket. It goes to the CRM queue.", TICKET_SCHEMA)
    # Required first even though listed second; the dot becomes "_"; only the first sentence is kept.
    assert python_signature(tool) == (
        'def crm_create_ticket(customer_id: str, priority: Literal["low", "high"] = None) -> dict: '
        '"""Create a support ticket."""'
    )
    assert parameter_order(TICKET_SCHEMA) == ["customer_id", "priority"]  # what a positional call binds to


def test_signature_types_arrays_unions_and_untyped() -> None:
    tool = spec(
        "plot",
        "Plot points.",
        {
            "points": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}}}},
            "origin": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}]},
            "label": {"type": ["string", "null"]},
            "scale": {"anyOf": [{"type": "integer"}, {"type": "number"}]},
            "tags": {"type": "array"},
            "flag": {"type": "boolean"},
            "func": {"x-python-type": "Callable[[float], float]"},
        },
        required=["points", "origin", "func"],
    )
    assert python_signature(tool) == (
        "def plot(points: list[dict], origin: list[float], func, label: str | None = None, "
        "scale: int | float = None, tags: list = None, flag: bool = None) -> dict:\n"
        '    """Plot points."""'
    )


def test_docstring_first_sentence_cut_and_quotes() -> None:
    assert first_sentence("Gets a stock (e.g. AAPL) by code. Uses RapidAPI.") == "Gets a stock (e.g. AAPL) by code."
    assert first_sentence('Say "hi"') == "Say 'hi'"  # a '"' could end the docstring early
    long = "Returns " + "very " * 30 + "long text."
    cut = first_sentence(long)
    assert len(cut) <= 100 and cut.endswith("very...")
    assert python_signature(spec("ping", "", {})) == "def ping() -> dict: ..."


def test_return_annotation_follows_a_results_table() -> None:
    tool = ToolSpec("fx.get_rate", "Rate.", TICKET_SCHEMA, results={'{"a":1}': 1.5, '{"a":2}': 2.0})
    assert python_signature(tool).split(" -> ")[1].startswith("float:")


def test_every_committed_tool_renders_as_valid_python() -> None:
    tools = {tool.name: tool for task in toolcall_tasks(DATASET / "toolcall" / "test.jsonl") for tool in task.tools}
    block = tools_block(tools.values())
    module = ast.parse(block)  # each tool is a real Python def (Literal needs no import to parse)
    assert [node.name for node in module.body] == [tool.python_name for tool in tools.values()]
    assert all(len(signature.splitlines()) <= 2 for signature in map(python_signature, tools.values()))


def test_system_and_task_messages() -> None:
    tool = ToolSpec("crm.create_ticket", "Create a support ticket.", TICKET_SCHEMA)
    system = system_message([tool])
    assert python_signature(tool) + '\ndef final_answer(value): """End the task with value."""' in system
    assert system.endswith("Imports allowed: " + ", ".join(AUTHORIZED_IMPORTS) + ".")
    assert system_message([tool], ("math",)).endswith("Imports allowed: math.")
    toolcall = CodeactTask("toolcall", "Open a ticket for C-1.", (tool,), {"name": tool.name, "arguments": {}})
    assert task_messages(toolcall) == [
        {"role": "system", "content": system},
        {"role": "user", "content": "Open a ticket for C-1."},
    ]
    structured = CodeactTask("structured", "I am Ana.", (), {"name": "Ana"}, instruction="Return {name}.")
    assert task_messages(structured)[1]["content"] == "Return {name}. Pass it to final_answer.\n\nRequest: I am Ana."


def test_system_prompt_token_count() -> None:
    from ray_app.models.demo_checkpoint import DEMO_MODEL_DIR

    if not (DEMO_MODEL_DIR / "tokenizer.json").is_file():
        pytest.skip("demo model not installed (slm-swap models fetch-demo)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    tasks = toolcall_tasks(DATASET / "toolcall" / "test.jsonl")
    counts = sorted(len(tokenizer(system_message(task.tools), add_special_tokens=False)["input_ids"]) for task in tasks)
    print(f"CodeAct system prompt, SmolLM2 tokens over {len(counts)} toolcall test tasks: "
          f"min {counts[0]}, median {statistics.median(counts)}, max {counts[-1]}")  # fmt: skip
    # Measured 131 / 210 / 429 (smolagents' default CodeAgent prompt: 2,276).
    assert statistics.median(counts) <= 240 and counts[-1] <= 470


# ---- tasks from the committed data -----------------------------------------------------------------


def test_build_tasks_from_the_test_split() -> None:
    tasks = build_tasks(DATASET, "test", multistep_count=8)
    assert [task.kind for task in tasks] == ["toolcall"] * 50 + ["structured"] * 50 + ["multistep"] * 8
    assert len({task.task_id for task in tasks}) == len(tasks)
    lines = [json.dumps(task.to_json()) for task in tasks]
    assert lines == [json.dumps(task.to_json()) for task in build_tasks(DATASET, "test", multistep_count=8)]

    first = tasks[0]
    assert first.source == "slm_swap/02_dataset/toolcall/test.jsonl:1"
    assert first.request == (
        "Get detailed information about the USDC-DAI trading pair on the Polygon blockchain using Quickswap."
    )
    assert first.gold == {
        "name": "web_pair_details",
        "arguments": {"chain_slug": "polygon", "pair_slug": "USDC-DAI", "exchange_slug": "quickswap"},
    }
    assert [tool.name for tool in first.tools][:2] == ["get_the_stock_history_by_exchange_code_and_stock_code",
                                                       "web_pair_details"]  # fmt: skip
    assert all(task.gold["name"] in {tool.name for tool in task.tools} for task in tasks[:50])


def test_structured_tasks_keep_instruction_and_request() -> None:
    second = structured_tasks(DATASET / "structured" / "test.jsonl")[1]
    assert second.source == "slm_swap/02_dataset/structured/test.jsonl:2"
    assert second.instruction == (
        'Return the arguments for the tool "get_user_profile" as one JSON object.\n'
        'Parameters (name: JSON type): {"username":"string"}'
    )
    assert second.request == "Fetch the profile of the Pinterest user 'fashion_insider'."
    assert second.gold == {"username": "fashion_insider"}
    assert second.tools == ()


# ---- generated multi-step tasks ---------------------------------------------------------------------


def run_reference_steps(task: CodeactTask) -> tuple[object, list[str]]:
    """Play the task's reference steps with each tool answering only from its results table."""
    answers: list[object] = []
    called: list[str] = []

    def stub(tool: ToolSpec):
        def call(**arguments):
            called.append(tool.name)
            return tool.results[canonical_json(arguments)]  # KeyError: the step calls off the table

        return call

    namespace = {tool.python_name: stub(tool) for tool in task.tools}
    namespace.update(final_answer=answers.append, print=lambda *values: None)
    for step in task.reference_steps:
        exec(step, namespace)  # the task's own code; variables live on between steps, as in the sandbox
    assert len(answers) == 1
    return answers[0], called


def test_multistep_gold_is_reached_by_the_intended_calls() -> None:
    tasks = multistep_tasks(40)
    assert [task.source for task in tasks[:2]] == [
        "generated:multistep:generated:order_total:0",
        "generated:multistep:generated:support_ticket:1",
    ]
    assert [task.source.split(":")[3] for task in tasks[:4]] == [name for name, _ in MULTISTEP_FAMILIES]
    for task in tasks:
        answer, called = run_reference_steps(task)
        assert check_answer(task, answer, True, []).correct, task.source
        assert len(task.reference_steps) == 2 and called, task.source
        assert all(len(tool.results) >= 3 for tool in task.tools)  # distractors: the lookup matters
    tickets = [task for task in tasks if "ticket" in task.source]
    assert all(run_reference_steps(task)[1] == ["crm.find_customer", "crm.create_ticket"] for task in tickets)


def test_multistep_tasks_are_deterministic_and_split_apart() -> None:
    twenty = multistep_tasks(20, seed=7)
    assert [task.to_json() for task in multistep_tasks(10, seed=7)] == [task.to_json() for task in twenty[:10]]
    assert multistep_tasks(4, seed=8)[0].task_id != twenty[0].task_id
    train_ids = {task.task_id for task in build_tasks(DATASET, "train", 200)[600:]}
    test_ids = {task.task_id for task in build_tasks(DATASET, "test", 200)[100:]}
    assert len(train_ids) == len(test_ids) == 200 and not train_ids & test_ids
    assert build_tasks(DATASET, None, 3) == multistep_tasks(3)  # generated tasks only


# ---- the tasks file ---------------------------------------------------------------------------------


def test_tasks_file_round_trip(tmp_path: Path) -> None:
    tasks = build_tasks(DATASET, "test", multistep_count=4)
    path = write_tasks(tmp_path / "tasks.jsonl", tasks)
    assert read_tasks(path) == tasks


def test_tasks_file_errors_name_file_line_and_reason(tmp_path: Path) -> None:
    tool = ToolSpec("crm.create_ticket", "Create a ticket.", TICKET_SCHEMA)
    good = CodeactTask("toolcall", "Ticket for C-1.", (tool,), {"name": tool.name, "arguments": {"customer_id": "C-1"}})
    unknown = {**good.to_json(), "gold": {"name": "crm.delete", "arguments": {}}}
    unknown["task_id"] = CodeactTask.from_json(unknown).task_id  # only the tool is wrong
    bad_schema = {**good.to_json(), "tools": [{**tool.to_json(), "parameters": {"type": "string"}}]}
    lines = [
        json.dumps(good.to_json()),
        '{"kind": "toolcall",',
        json.dumps({key: value for key, value in good.to_json().items() if key != "request"}),
        json.dumps(unknown),
        json.dumps(bad_schema),
        json.dumps({**good.to_json(), "task_id": "0" * 16}),
        json.dumps(good.to_json()),
        "",
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TaskFileError) as raised:
        read_tasks(path)
    problems = str(raised.value).splitlines()
    assert [problem.split(": ")[0] for problem in problems] == [f"{path}:{line}" for line in (2, 3, 4, 5, 6, 7, 8)]
    assert problems[0].startswith(f"{path}:2: not valid JSON")
    assert "missing field(s) request" in problems[1]
    assert "unknown tool 'crm.delete'" in problems[2] and "crm.create_ticket" in problems[2]
    assert "tools[0].parameters must be a JSON Schema object" in problems[3]
    assert "content hashes to" in problems[4]
    assert "duplicate task" in problems[5] and "line 1" in problems[5]
    assert "empty line" in problems[6]


# ---- the answer check -------------------------------------------------------------------------------

CITY_TOOL = spec(
    "weather.get",
    "Weather for a city.",
    {"city": {"type": "string"}, "days": {"type": "integer", "default": 1}},
    required=["city"],
)
OTHER_TOOL = spec("news.get", "News.", {"topic": {"type": "string"}}, required=["topic"])
WEATHER_TASK = CodeactTask(
    "toolcall", "Weather in Paris?", (CITY_TOOL, OTHER_TOOL), {"name": "weather.get", "arguments": {"city": "Paris"}}
)


def call(name: str, error: str | None = None, **arguments: object) -> ToolCallRecord:
    return ToolCallRecord(name, dict(arguments), error)


def test_check_toolcall_verdicts() -> None:
    right = call("weather.get", city="Paris")
    assert check_answer(WEATHER_TASK, {"temp": 20}, True, [right]) == AnswerCheck("correct")
    # Lenient: case and spaces, and an optional parameter given at its default.
    assert check_answer(WEATHER_TASK, None, True, [call("weather.get", city=" paris", days=1)]).correct
    assert check_answer(WEATHER_TASK, None, False, [right]).code == "no_final_answer"

    nothing = check_answer(WEATHER_TASK, None, True, [])
    assert (nothing.code, nothing.detail) == ("wrong_call", "no successful tool call; expected weather.get")
    other = check_answer(WEATHER_TASK, None, True, [right, call("news.get", topic="Paris")])
    assert (other.code, other.detail) == ("wrong_call", "last call was to news.get, expected weather.get")
    wrong_args = check_answer(WEATHER_TASK, None, True, [call("weather.get", city="Paris", days=3)])
    assert wrong_args.code == "wrong_call" and '{"city":"Paris","days":3}' in wrong_args.detail
    # The last *successful* call counts: a refused call after the right one changes nothing.
    refused = call("weather.get", error="ToolCallError: missing city")
    assert check_answer(WEATHER_TASK, None, True, [right, refused]).correct
    only_refused = check_answer(WEATHER_TASK, None, True, [refused])
    assert only_refused.code == "wrong_call" and "1 refused" in only_refused.detail


def test_check_structured_verdicts() -> None:
    task = CodeactTask("structured", "I am Ana, 30.", (), {"name": "Ana", "age": 30}, instruction="Return it.")
    assert check_answer(task, {"age": 30, "name": "Ana"}, True, []).correct  # key order never matters
    assert check_answer(task, '{"name": "Ana", "age": 30}', True, []).correct  # the JSON text of it
    assert check_answer(task, {"name": "Ana", "age": 30.0}, True, []).code == "wrong_final_answer"  # 1 vs 1.0
    partly = check_answer(task, {"name": "Ana", "age": 31}, True, [])
    assert partly.code == "wrong_final_answer" and "(1/2 fields right)" in partly.detail
    assert "not JSON" in check_answer(task, "Ana, 30", True, []).detail
    assert check_answer(task, None, False, []).code == "no_final_answer"


def test_check_multistep_verdicts() -> None:
    def verdict(gold: object, answer: object) -> str:
        task = CodeactTask("multistep", "q", (CITY_TOOL,), gold)
        return check_answer(task, answer, True, []).code

    assert verdict(3910.0, 3910) == "correct"
    assert verdict(0.3, 0.1 + 0.2) == "correct"  # within 1e-9
    assert verdict(139.93, 19.99 * 7) == "correct"  # 139.92999999999998
    assert verdict(139.93, 139.9301) == "wrong_final_answer"
    assert verdict(3910.0, "3910.0") == "wrong_final_answer"  # a number is asked for
    assert verdict(1, True) == "wrong_final_answer"
    assert verdict("T-51234", " T-51234\n") == "correct"
    assert verdict("T-51234", "t-51234") == "wrong_final_answer"
    assert verdict([1, 2], [1, 2]) == "correct"
