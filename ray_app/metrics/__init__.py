"""Metrics of both tracks (pure functions, no Ray, no model) and the predictions file they score.

Structured: json_valid_rate, exact_match_rate, field_precision/recall/f1 (`structured.py`).
Toolcall: valid_call_rate, name_match_rate, args_exact_rate, args_lenient_rate (`toolcall.py`,
`lenient_args.py`). `CORE_METRICS` names the ones the fine-tune decision compares.
"""

from ray_app.metrics.lenient_args import lenient_args_match
from ray_app.metrics.predictions import (
    PredictionRecord,
    PredictionsFileError,
    read_predictions,
    score_predictions_file,
)
from ray_app.metrics.rates import rate
from ray_app.metrics.structured import (
    StructuredRowScore,
    flatten_fields,
    parse_json_prediction,
    score_structured_row,
    structured_metrics,
)
from ray_app.metrics.toolcall import ToolcallRowScore, gold_parameters_schema, score_toolcall_row, toolcall_metrics
from ray_app.metrics.tracks import CORE_METRICS, score_rows

__all__ = [
    "CORE_METRICS",
    "PredictionRecord",
    "PredictionsFileError",
    "StructuredRowScore",
    "ToolcallRowScore",
    "flatten_fields",
    "gold_parameters_schema",
    "lenient_args_match",
    "parse_json_prediction",
    "rate",
    "read_predictions",
    "score_predictions_file",
    "score_rows",
    "score_structured_row",
    "score_toolcall_row",
    "structured_metrics",
    "toolcall_metrics",
]
