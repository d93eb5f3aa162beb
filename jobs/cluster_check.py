"""`slm-swap submit -- python jobs/cluster_check.py`: the job's secrets (names), model, roots and GPUs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run by path, also from a Ray working_dir

from ray_app.cluster_check import check_job_environment  # noqa: E402

if __name__ == "__main__":
    sys.exit(check_job_environment())
