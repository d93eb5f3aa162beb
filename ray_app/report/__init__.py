"""The parity report: `<eval_root>/report.md` with PNG charts, from the evaluate and decide outputs.

Entry: `write_report(eval_root, dataset_root, failing_rows_per_model) -> ReportOutcome` (`report.py`).
"""

from ray_app.report.inputs import ReportError
from ray_app.report.report import CHARTS_DIR, REPORT_FILE, ReportOutcome, write_report

__all__ = ["CHARTS_DIR", "REPORT_FILE", "ReportError", "ReportOutcome", "write_report"]
