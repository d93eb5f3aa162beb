"""`ray job submit --runtime-env runtime_env.yaml -- python jobs/decide.py [--price-table FILE]`

Same flags as `slm-swap decide`: reads 05_eval/<track>/<label>/ and writes 05_eval/decision.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run by path, also from a Ray working_dir

from ray_app.memory_allocator import run_with_allocator  # noqa: E402

if __name__ == "__main__":
    run_with_allocator()  # first: it re-executes once with tcmalloc or jemalloc preloaded (ray_app/memory_allocator.py)
    from ray_app.cli import app

    app(["decide", *sys.argv[1:]])
