"""The one place that writes run traces: every eval, decide, train and pipeline run is one trace.

```python
with start_run_trace(name="eval toolcall slm", kind="eval", input={...}, metadata={...}) as run:
    with run.span("generate", input={...}) as span:
        span.update(output={...})
    run.event("fine_tune_decision", output={...})
    run.end(output={...})        # optional inside `with`; an exception ends the run as "error"
```

With LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY set (and LANGFUSE_BASE_URL, or LANGFUSE_HOST), the
run is a Langfuse trace (see `langfuse_backend`); without them it is `slm_swap/05_eval/traces/<run_id>.json`
(see `local_file`). Everything recorded is made JSON-able and scrubbed of secrets first (`redaction`).
"""

from ray_app.tracing.langfuse_backend import close_langfuse_clients
from ray_app.tracing.redaction import REDACTED, is_secret_name, redact_secrets, to_jsonable
from ray_app.tracing.run_trace import (
    DEFAULT_LOCAL_DIR,
    LangfuseRequiredError,
    RunTrace,
    Span,
    runs_nest_under,
    start_run_trace,
)

__all__ = [
    "DEFAULT_LOCAL_DIR",
    "REDACTED",
    "LangfuseRequiredError",
    "RunTrace",
    "Span",
    "close_langfuse_clients",
    "is_secret_name",
    "redact_secrets",
    "runs_nest_under",
    "start_run_trace",
    "to_jsonable",
]
