"""Agent traces → structured/toolcall splits (the seed's entry point; logic in ray_app.data.trace_splits).

    python slm_swap/langfuse_dataset.py --trace-json storage/dummy_langfuse_traces.jsonl \
        --agent-id dummy-agent --output-root slm_swap/02_dataset/dummy_langfuse
    python slm_swap/langfuse_dataset.py --agent-id my-agent --output-root slm_swap/02_dataset/my_agent  # pulls

Same flags as `slm-swap data traces`.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path from anywhere: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ray_app.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["data", "traces", *sys.argv[1:]])
