"""What reaches a job's console: Ray Data's advice about a model worker's memory and Ray's token notice do not."""

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


LOG_TOKEN_NOTICE = """
import logging
from ray_app.ray_runtime import RAY_TOKEN_AUTHENTICATION_LOGGER, hide_token_authentication_notice
logging.basicConfig()
hide_token_authentication_notice()
hide_token_authentication_notice()  # once per process is enough; a second call adds nothing
notices = logging.getLogger(RAY_TOKEN_AUTHENTICATION_LOGGER)
notices.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
notices.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
"""


def test_rays_notice_that_it_turned_token_authentication_on_stays_off_the_console_and_its_other_warnings_print():
    result = subprocess.run([sys.executable, "-c", LOG_TOKEN_NOTICE], capture_output=True, text=True, check=True)
    console = result.stdout + result.stderr
    assert "Token authentication is disabled" in console
    assert "Token authentication is enabled" not in console
