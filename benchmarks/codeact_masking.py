"""Does masking help? The codeact adapter trained with the loss on the student's turns only (masked)
vs on every token (unmasked: system, task and observations too), same rows, steps and seed, both
evaluated on the same CodeAct test tasks with the same loop and sandbox.

Both sides are measured in the same run: two trainings (`slm-swap train --track codeact --loss-on
assistant|all`, each into its own adapter folder; a finished one is reused by its run key) and two
evaluations (`slm-swap eval --track codeact`, labels `slm-codeact` and `slm-codeact-unmasked`).
Prints one JSON object: each side's success rate, the paired difference (masked - unmasked) with its
bootstrap 95% interval and exact McNemar p over the same tasks, the training token counts, times,
and the CPU. Also writes it to `<eval-root>/codeact/masking_ablation.json`, where the report's
CodeAct section reads it.

    .venv/bin/python benchmarks/codeact_masking.py [--train-rows 96] [--eval-tasks 36] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/codeact_masking.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_limits import cpu_description
from ray_app.atomic_files import atomic_write_json
from ray_app.paths import DATASET_ROOT, EVAL_ROOT, PROJECT_ROOT

SIDES = {"masked": ("assistant", "slm-codeact"), "unmasked": ("all", "slm-codeact-unmasked")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=96, help="first N rows of codeact/train.jsonl")
    parser.add_argument("--eval-tasks", type=int, default=36, help="test tasks (kinds in turn); 0: all")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per model turn")
    parser.add_argument("--model-path", default=None, help="default: SLM_MODEL_PATH, else the demo SLM")
    parser.add_argument("--work", type=Path, default=PROJECT_ROOT / "storage" / "benchmarks" / "codeact_masking")
    parser.add_argument("--eval-root", type=Path, default=EVAL_ROOT)
    args = parser.parse_args()

    from ray_app.codeact.loop import LoopSettings
    from ray_app.codeact.ray_runner import agent_model_path
    from ray_app.decide.paired_statistics import discordant_counts, mcnemar_exact_p, paired_bootstrap_interval
    from ray_app.eval.codeact_eval import CodeactEvalConfig, run_codeact_eval
    from ray_app.pipeline.codeact_steps import evaluation_tasks
    from ray_app.pipeline.config import PipelineConfig
    from ray_app.train.config import TrainConfig
    from ray_app.train.train import run_train

    model_path = str(agent_model_path(args.model_path))
    pipeline = PipelineConfig(eval_root=args.eval_root, codeact_eval_tasks=args.eval_tasks or None)
    tasks_path = evaluation_tasks(pipeline, DATASET_ROOT / "codeact")
    cpu = cpu_description()
    features = ", ".join(name for name, present in cpu.items() if name != "model_name" and present)
    result: dict = {"cpu": f"{cpu['model_name']} ({features or 'no avx512/amx'})", "train_rows": args.train_rows,
                    "tasks": str(tasks_path)}  # fmt: skip
    hits: dict[str, list[bool]] = {}
    for side, (loss_on, label) in SIDES.items():
        adapter_root = args.work / side
        started = time.perf_counter()
        trained = run_train(
            TrainConfig(
                track="codeact",
                model_path=model_path,
                dataset_root=DATASET_ROOT,
                adapter_root=adapter_root,
                storage_path=args.work / "ray_train",
                eval_root=args.eval_root,
                max_train_rows=args.train_rows,
                max_val_rows=16,
                per_device_batch_size=2,
                gradient_accumulation_steps=1,
                gradient_checkpointing=False,
                loss_on=loss_on,  # type: ignore[arg-type]
                force=True,  # the ablation trains whatever the decision says
            )
        )
        train_s = time.perf_counter() - started
        training = json.loads((adapter_root / "adapter_codeact" / "training.json").read_text())
        started = time.perf_counter()
        outcome = run_codeact_eval(
            CodeactEvalConfig(
                model="slm",
                label=label,
                tasks_path=tasks_path,
                eval_root=args.eval_root,
                model_path=model_path,
                adapter_path=adapter_root / "adapter_codeact",
                loop=LoopSettings(max_new_tokens=args.max_new_tokens),
            )
        )
        eval_s = time.perf_counter() - started
        from ray_app.codeact.records import Trajectory
        from ray_app.metrics.codeact import trajectory_facts

        trajectories = [
            Trajectory.from_json(json.loads(line))
            for line in (outcome.output_dir / "trajectories.jsonl").read_text().splitlines()
        ]
        hits[side] = [trajectory_facts(trajectory).success for trajectory in trajectories]
        result[side] = {
            "label": label,
            "loss_on": loss_on,
            "success_rate": outcome.metrics.metrics["success_rate"],
            "valid_action_rate": outcome.metrics.metrics["valid_action_rate"],
            "trained": trained.trained or trained.reason,
            "token_counts": training.get("token_counts", {}).get("train"),
            "train_s": round(train_s, 1),
            "eval_s": round(eval_s, 1),
        }
    low, high = paired_bootstrap_interval(hits["masked"], hits["unmasked"])
    masked_only, unmasked_only = discordant_counts(hits["masked"], hits["unmasked"])
    result["difference"] = {
        "delta": round(sum(hits["masked"]) / len(hits["masked"]) - sum(hits["unmasked"]) / len(hits["unmasked"]), 6),
        "interval": [round(low, 6), round(high, 6)],
        "mcnemar_p": mcnemar_exact_p(hits["masked"], hits["unmasked"]),
        "rows": len(hits["masked"]),
        "masked_only": masked_only,
        "unmasked_only": unmasked_only,
    }
    atomic_write_json(args.eval_root / "codeact" / "masking_ablation.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
