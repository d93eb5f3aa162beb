"""Settings of the hosted LLM (the "teacher"): which endpoint, which model, and how it is called.

Two modes, chosen from the environment unless `mode` is given:
- azure: `AZURE_ENDPOINT` = `https://<resource>/openai/deployments/<deployment>`, `AZURE_API_KEY`,
  `AZURE_API_VERSION` (default DEFAULT_AZURE_API_VERSION); the model sent is the deployment;
- openai-compatible (vLLM, Ollama, the project's own Serve endpoint): `SLM_SWAP_TEACHER_BASE_URL`
  (e.g. http://127.0.0.1:8000/v1), `SLM_SWAP_TEACHER_MODEL`, `SLM_SWAP_TEACHER_API_KEY` (default
  "not-needed").
Every call is greedy and seeded (TEACHER_TEMPERATURE, TEACHER_SEED); the other knobs are fields
below, overridden by keyword (CLI flags).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

TeacherMode = Literal["azure", "openai-compatible"]
ToolcallMode = Literal["native", "prompt"]  # native: OpenAI `tools`; prompt: the project's text prompt
ToolChoice = Literal["auto", "required"]

DEFAULT_AZURE_API_VERSION = "2024-10-21"
DEFAULT_COMPATIBLE_API_KEY = "not-needed"  # vLLM and Ollama accept any key, the SDK needs one
TEACHER_TEMPERATURE = 0  # greedy, so two runs over the same rows compare
TEACHER_SEED = 42

AZURE_ENDPOINT_PATTERN = re.compile(r"^/openai/deployments/([^/]+)/?$")
AZURE_ENDPOINT_FORM = "https://<resource>.openai.azure.com/openai/deployments/<deployment>"


class TeacherConfigError(ValueError):
    """The teacher cannot be called as configured; the message names the variable to fix."""


@dataclass(frozen=True)
class TeacherSettings:
    mode: TeacherMode
    base_url: str  # azure: AZURE_ENDPOINT (ends in the deployment); else SLM_SWAP_TEACHER_BASE_URL
    model: str  # azure: the deployment name; else SLM_SWAP_TEACHER_MODEL
    api_key: str = field(repr=False)  # never printed, never in describe()
    api_version: str | None = None  # azure only
    max_tokens: int = 512
    concurrency: int = 4  # calls in flight at once
    timeout_s: float = 60.0  # per HTTP attempt
    max_retries: int = 5  # the openai SDK's retries: 408/409/429/5xx and timeouts, honouring Retry-After
    toolcall_mode: ToolcallMode = "native"
    tool_choice: ToolChoice = "auto"  # native toolcall mode only

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in get_args(TeacherMode):
            problems.append(f"mode must be one of {get_args(TeacherMode)}, got {self.mode!r}")
        if self.toolcall_mode not in get_args(ToolcallMode):
            problems.append(f"toolcall_mode must be one of {get_args(ToolcallMode)}, got {self.toolcall_mode!r}")
        if self.tool_choice not in get_args(ToolChoice):
            problems.append(f"tool_choice must be one of {get_args(ToolChoice)}, got {self.tool_choice!r}")
        for name in ("max_tokens", "concurrency"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            problems.append(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if not self.timeout_s > 0:
            problems.append(f"timeout_s must be positive, got {self.timeout_s!r}")
        if problems:
            raise TeacherConfigError("teacher settings: " + "; ".join(problems))

    @property
    def endpoint_host(self) -> str:
        """host[:port] of the endpoint (no path, no credentials): safe to log."""
        url = urlsplit(self.base_url)
        return f"{url.hostname}:{url.port}" if url.port else str(url.hostname)

    def to_json(self) -> dict[str, Any]:
        """The resolved settings without the API key (written beside a run's outputs)."""
        resolved = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "api_key"}
        resolved["base_url"] = urlsplit(self.base_url)._replace(query="", fragment="").geturl()
        return resolved


def azure_deployment(endpoint: str) -> str:
    """The deployment named at the end of AZURE_ENDPOINT, or TeacherConfigError saying the expected form."""
    url = urlsplit(endpoint)
    match = AZURE_ENDPOINT_PATTERN.match(url.path)
    if url.scheme not in ("http", "https") or not url.hostname or match is None:
        raise TeacherConfigError(f"AZURE_ENDPOINT must look like {AZURE_ENDPOINT_FORM}; got {endpoint!r}")
    return match.group(1)


def _azure_settings(environ: Mapping[str, str], overrides: dict[str, Any]) -> dict[str, Any]:
    endpoint = str(overrides.pop("base_url", None) or environ.get("AZURE_ENDPOINT", "")).strip().rstrip("/")
    api_key = str(overrides.pop("api_key", None) or environ.get("AZURE_API_KEY", "")).strip()
    api_version = overrides.pop("api_version", None) or environ.get("AZURE_API_VERSION", "").strip()
    if not endpoint:
        raise TeacherConfigError(f"azure mode needs AZURE_ENDPOINT ({AZURE_ENDPOINT_FORM})")
    deployment = azure_deployment(endpoint)
    if not api_key:
        raise TeacherConfigError("azure mode needs AZURE_API_KEY (the key of the Azure OpenAI resource)")
    return {
        "base_url": endpoint,
        "model": overrides.pop("model", None) or deployment,
        "api_key": api_key,
        "api_version": api_version or DEFAULT_AZURE_API_VERSION,
    }


def _compatible_settings(environ: Mapping[str, str], overrides: dict[str, Any]) -> dict[str, Any]:
    base_url = str(overrides.pop("base_url", None) or environ.get("SLM_SWAP_TEACHER_BASE_URL", ""))
    base_url = base_url.strip().rstrip("/")
    model = str(overrides.pop("model", None) or environ.get("SLM_SWAP_TEACHER_MODEL", "")).strip()
    api_key = str(overrides.pop("api_key", None) or environ.get("SLM_SWAP_TEACHER_API_KEY", "")).strip()
    if not base_url:
        raise TeacherConfigError(
            "openai-compatible mode needs SLM_SWAP_TEACHER_BASE_URL (e.g. http://127.0.0.1:8000/v1)"
        )
    if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).hostname:
        raise TeacherConfigError(f"SLM_SWAP_TEACHER_BASE_URL must be an http(s) URL, got {base_url!r}")
    if not model:
        raise TeacherConfigError(
            "openai-compatible mode needs SLM_SWAP_TEACHER_MODEL (the model name the server serves)"
        )
    overrides.pop("api_version", None)
    return {
        "base_url": base_url,
        "model": model,
        "api_key": api_key or DEFAULT_COMPATIBLE_API_KEY,
        "api_version": None,
    }


def teacher_settings_from_env(environ: Mapping[str, str] = os.environ, **overrides: Any) -> TeacherSettings:
    """Settings from the environment; keyword overrides (CLI flags) win. Raises TeacherConfigError.

    `mode` picks the API; without it, azure when AZURE_ENDPOINT is set, else openai-compatible when
    SLM_SWAP_TEACHER_BASE_URL is set. A None override means "not given".
    """
    known = {item.name for item in fields(TeacherSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TeacherConfigError(f"unknown teacher setting(s) {unknown}; known: {sorted(known)}")
    overrides = {name: value for name, value in overrides.items() if value is not None}
    mode = overrides.pop("mode", None)
    if mode is None:
        if environ.get("AZURE_ENDPOINT", "").strip():
            mode = "azure"
        elif environ.get("SLM_SWAP_TEACHER_BASE_URL", "").strip():
            mode = "openai-compatible"
        else:
            raise TeacherConfigError(
                "no hosted teacher configured: set AZURE_ENDPOINT and AZURE_API_KEY (Azure OpenAI), or "
                "SLM_SWAP_TEACHER_BASE_URL and SLM_SWAP_TEACHER_MODEL (an OpenAI-compatible server), "
                "or evaluate the teacher from recorded traces with the replay engine"
            )
    if mode == "azure":
        connection = _azure_settings(environ, overrides)
    elif mode == "openai-compatible":
        connection = _compatible_settings(environ, overrides)
    else:
        raise TeacherConfigError(f"mode must be one of {get_args(TeacherMode)}, got {mode!r}")
    return TeacherSettings(mode=mode, **connection, **overrides)
