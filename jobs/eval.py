"""`ray job submit --runtime-env runtime_env.yaml -- python jobs/eval.py --track T --model {slm,teacher} ...`

Same flags as `slm-swap eval`; the job joins the cluster through RAY_ADDRESS, which Ray sets for jobs.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run by path, also from a Ray working_dir

from ray_app.memory_allocator import run_with_allocator  # noqa: E402

if __name__ == "__main__":
    run_with_allocator()  # first: it re-executes once with tcmalloc or jemalloc preloaded (ray_app/memory_allocator.py)
    from ray_app.cli import app

    app(["eval", *sys.argv[1:]])
