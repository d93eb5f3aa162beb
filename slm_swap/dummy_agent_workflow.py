"""Write simulated Langfuse traces of a tool-using agent (see ray_app/dummy_agent for what and why).

python slm_swap/dummy_agent_workflow.py --out-json storage/dummy_langfuse_traces.jsonl --agent-id dummy-agent
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import ray_app  # noqa: F401
except ModuleNotFoundError:  # run by path from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ray_app.data.rows import DatasetError
from ray_app.dummy_agent import DummyAgentConfig, ErrorProfile, write_dummy_traces
from ray_app.paths import DATASET_ROOT


def parse_args(argv: list[str] | None = None) -> DummyAgentConfig:
    defaults = DummyAgentConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-json", type=Path, required=True, help="trace JSONL to write (one trace per line)")
    parser.add_argument("--agent-id", default=defaults.agent_id, help="agent id the traces belong to")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="RNG seed (same seed, same bytes)")
    parser.add_argument(
        "--dataset-root", type=Path, default=DATASET_ROOT, help="holds {toolcall,structured}/test.jsonl"
    )
    parser.add_argument(
        "--error-profile", default="", help="rate overrides, e.g. 'wrong_tool=0.1,markdown_fence=0' (0..1 each)"
    )
    args = parser.parse_args(argv)
    try:
        error_profile = ErrorProfile().with_overrides(args.error_profile)
    except ValueError as error:
        parser.error(str(error))
    return DummyAgentConfig(
        out_json=args.out_json,
        agent_id=args.agent_id,
        seed=args.seed,
        dataset_root=args.dataset_root,
        error_profile=error_profile,
    )


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    try:
        summary = write_dummy_traces(config)
    except (FileNotFoundError, DatasetError) as error:
        sys.exit(f"error: {error}")
    print(summary.describe())


if __name__ == "__main__":
    main()
