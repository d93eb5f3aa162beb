"""What `slm-swap serve` and `serve run slm_swap/serve_config.yaml` take: one typed record, its defaults here.

Light on purpose (no Ray, no FastAPI): the CLI builds its options from these fields and defaults, and
a config file's `args` are parsed to these types by `ray_app/settings.py` (a wrong type names its line).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray_app.engines.adapter_weights import ADAPTER_WEIGHTS, AdapterWeights
from ray_app.engines.cpu_linear import CPU_LINEARS, CpuLinear
from ray_app.engines.decode.attention_kernel import DECODE_ATTENTIONS, DecodeAttention
from ray_app.engines.precision import PRECISIONS, Precision
from ray_app.engines.slm import SlmSettings
from ray_app.paths import ADAPTER_ROOT
from ray_app.serve.openai_protocol import RequestLimits
from ray_app.serve.request_constraint import ConstrainedMode
from ray_app.settings import (
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Source,
    build_settings,
    parse_settings,
)


@dataclass(frozen=True)
class ServeSettings:
    model_path: str | None = None  # None: SLM_MODEL_PATH, the seed's default checkpoint, else the demo SLM
    adapter_root: Path | None = ADAPTER_ROOT  # every adapter_<name>/ in it is served as slm-<name>
    precision: Precision = "auto"  # engines.precision, decided on the replica (GPU: bf16 if it fits, else 8-bit)
    adapter_weights: AdapterWeights = SlmSettings.adapter_weights  # merged copies or beside the base (as eval)
    cpu_linear: CpuLinear = SlmSettings.cpu_linear  # fp32 on CPU: torch's or oneDNN's packed kernels (as eval)
    decode_attention: DecodeAttention = SlmSettings.decode_attention  # CPU decode steps: compiled or torch (as eval)
    max_batch_size: PositiveInt = 8  # requests decoding at once (rows of the running batch; @serve.batch groups)
    batch_wait_timeout_s: float = 0.05  # how long the first request of a batch waits for company
    default_max_tokens: PositiveInt = 512  # when a request gives no max_tokens
    max_model_len: PositiveInt | None = None  # None: the model config's max_position_embeddings
    prefix_cache_tokens: NonNegativeInt = SlmSettings.prefix_cache_tokens  # shared prompt prefixes kept (0: off)
    prefill_chunk_tokens: PositiveInt = SlmSettings.prefill_chunk_tokens  # prompt tokens prefilled per decode step
    num_replicas: PositiveInt = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    cpu_threads: PositiveInt | None = None  # None on CPU: every core of the node
    max_ongoing_requests: PositiveInt = 64  # chat requests a replica holds (decoding + waiting); 429 beyond
    retry_after_s: PositiveInt = 1  # the 429's Retry-After: a row frees every few decode steps
    request_timeout_s: PositiveFloat = 600.0  # arrival to last token; then the row is freed and the client gets 504
    max_body_bytes: PositiveInt = 1024 * 1024  # 413 beyond (a 32k-token prompt is ~128 KB of text)
    max_messages: PositiveInt = RequestLimits.max_messages
    max_tools: PositiveInt = RequestLimits.max_tools
    # auto: a request with tools decodes under the tool-call grammar (once the answer opens the wrapper);
    # off: only where the request asks (response_format, tool_choice required or named, strict tools).
    constrained: ConstrainedMode = "auto"
    # The keys themselves (--api-key, SLM_SWAP_API_KEY) are no setting: they travel apart, never in a file or log.
    api_key_file: str | None = None  # one key a line, re-read on change (rotation); SLM_SWAP_API_KEY_FILE
    allow_unauthenticated: bool = False  # bind beyond loopback without a key (a gateway authenticates)
    load_timeout_s: PositiveFloat = 1800.0  # start-up waits this long for the replica to load the weights
    # On SIGTERM or Ctrl-C, running requests get this long to finish (Serve's graceful shutdown), then stop.
    shutdown_grace_s: PositiveFloat = 30.0
    host: str = "127.0.0.1"
    port: PositiveInt = 8000

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.adapter_weights not in ADAPTER_WEIGHTS:
            raise ValueError(
                f"adapter_weights must be one of {', '.join(ADAPTER_WEIGHTS)}, got {self.adapter_weights!r}"
            )
        if self.cpu_linear not in CPU_LINEARS:
            raise ValueError(f"cpu_linear must be one of {', '.join(CPU_LINEARS)}, got {self.cpu_linear!r}")
        if self.decode_attention not in DECODE_ATTENTIONS:
            raise ValueError(
                f"decode_attention must be one of {', '.join(DECODE_ATTENTIONS)}, got {self.decode_attention!r}"
            )
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be ≥ max_batch_size ({self.max_batch_size})"
            )
        for name in ("max_batch_size", "max_body_bytes", "max_messages", "max_tools", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.port > 65535:
            raise ValueError(f"port must be ≤ 65535, got {self.port}")
        if self.prefix_cache_tokens < 0:
            raise ValueError(f"prefix_cache_tokens must be ≥ 0 (0 turns the cache off), got {self.prefix_cache_tokens}")
        for name in ("request_timeout_s", "load_timeout_s", "shutdown_grace_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def request_limits(self) -> RequestLimits:
        return RequestLimits(max_messages=self.max_messages, max_tools=self.max_tools)

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["adapter_root"] = str(self.adapter_root) if self.adapter_root else None
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any], source: Source | None = None) -> ServeSettings:
        """Settings from JSON-like values (a config file's `args`, or `to_json()` on its way to a replica):
        each value parsed to its field's type, unknown keys refused; keys are refused outright."""
        if "api_keys" in values or "api_key" in values:
            raise ValueError("API keys do not belong in settings files: set SLM_SWAP_API_KEY or api_key_file")
        source = source or Source("serve settings")
        return build_settings(cls, parse_settings(cls, values, source), source)
