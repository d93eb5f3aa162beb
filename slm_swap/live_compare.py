"""Teacher vs SLM on the same rows, side by side, live (logic in ray_app/eval/live_compare.py).

    python slm_swap/live_compare.py --track structured --limit 16 --precision bf16
    python slm_swap/live_compare.py --track toolcall --rows-file slm_swap/05_eval/first_tests/toolcall.jsonl --save

In-process and interactive; `slm-swap eval` is the Ray Data batch path. `--help` lists every flag.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path from anywhere: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ray_app.eval.live_cli import live_compare_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(live_compare_main())
