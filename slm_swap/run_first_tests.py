"""First tests: 50 seeded distinct prompts per track the teacher can answer, then the live compare.

    cd slm_swap && python run_first_tests.py --precision bf16      # or, from the repo root:
    python slm_swap/run_first_tests.py --precision bf16 --save

Writes the sampled rows to slm_swap/05_eval/first_tests/<track>.jsonl (logic in
ray_app/eval/live_first_tests.py). `--help` lists every flag.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path from anywhere: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ray_app.eval.live_cli import first_tests_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(first_tests_main())
