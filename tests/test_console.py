"""What reaches the console of a job: Ray Data's advice about a model worker's memory stays in its log file."""

from __future__ import annotations

import subprocess
import sys

LOG_BOTH = """
import logging
from ray_app.ray_runtime import keep_ray_data_progress_in_its_log
keep_ray_data_progress_in_its_log()
keep_ray_data_progress_in_its_log()  # a second call (every command calls it once) adds nothing
logging.getLogger("ray.data._internal.issue_detection.issue_detector_manager").warning("Found 1 issues.")
logging.getLogger("ray.data._internal.execution.streaming_executor").warning("a real Ray Data warning")
logging.getLogger("ray.data._internal.execution.streaming_executor").info("Execution progress block")
"""


def test_ray_data_issue_detector_advice_stays_off_the_console_and_its_other_warnings_print():
    result = subprocess.run([sys.executable, "-c", LOG_BOTH], capture_output=True, text=True, check=True)
    console = result.stdout + result.stderr
    assert "a real Ray Data warning" in console
    assert "Found 1 issues" not in console
    assert "Execution progress block" not in console
