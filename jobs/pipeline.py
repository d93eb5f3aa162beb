"""`ray job submit -- python jobs/pipeline.py`: the main job. Flags override the defaults of PipelineConfig."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run by path, also from a Ray working_dir

from ray_app.pipeline import PipelineConfig, PipelineError, run_pipeline  # noqa: E402


def main() -> None:
    defaults = PipelineConfig()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agent-id", default=defaults.agent_id)
    parser.add_argument("--trace-path", type=Path, default=defaults.trace_path)
    parser.add_argument("--slm-precision", default=defaults.slm_precision, choices=("fp32", "bf16", "auto"))
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args()
    config = PipelineConfig(
        agent_id=args.agent_id,
        trace_path=args.trace_path,
        slm_precision=args.slm_precision,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    try:
        run_pipeline(config)
    except PipelineError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
