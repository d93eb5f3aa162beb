"""Make values safe to trace: JSON-able (`to_jsonable`) and free of secrets (`redact_secrets`).

Both are pure functions; every input, output, metadata, name and error message goes through them
before it reaches Langfuse or a trace file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

REDACTED = "[redacted]"

# Always treated as secret when set, whatever the name rules below say.
SECRET_ENV_VARS = (
    "AZURE_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "OPENAI_API_KEY",
    "LANGFUSE_SECRET_KEY",
    "LANGFUSE_PUBLIC_KEY",
    "SLM_SWAP_TEACHER_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "WANDB_API_KEY",
)
# Shorter environment values would redact ordinary words ("true", "1234") from every string.
MIN_SECRET_LENGTH = 8

_SECRET_WORDS = {
    "apikey",
    "auth",
    "authorization",
    "cookie",
    "credential",
    "credentials",
    "passphrase",
    "passwd",
    "password",
    "secret",
    "secrets",
}
_GLUED_SECRET_SUFFIXES = ("apikey", "secret", "password", "token")  # "clientsecret", "accesstoken"
# `<word>_key` is a credential unless <word> says it is an identifier (run_key is a config hash).
_IDENTIFIER_KEY_PREFIXES = {
    "cache", "dedup", "foreign", "group", "hash", "idempotency", "index", "join", "lookup", "partition",
    "primary", "run", "shard", "sort",
}  # fmt: skip
# `token` is a credential unless it names a tokenizer token or a count (eos_token_id, max_token_count).
_VOCABULARY_TOKEN_PREFIXES = {"bos", "cls", "eos", "mask", "max", "min", "new", "num", "pad", "sep", "special", "unk"}
_TOKEN_COUNT_SUFFIXES = {"count", "counts", "id", "ids", "len", "length", "limit", "type"}


def _words(name: str) -> list[str]:
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()  # apiKey -> api_key
    return [word for word in re.split(r"[^a-z0-9]+", snake) if word]


def is_secret_name(name: str) -> bool:
    """True for names such as api_key, apiKey, x-api-key, secret, password, authorization, access_token,
    HF_TOKEN, LANGFUSE_PUBLIC_KEY; false for prompt_tokens, tokens, tokenizer, eos_token_id, run_key, keys."""
    words = _words(name)
    for position, word in enumerate(words):
        before = words[position - 1] if position else ""
        after = words[position + 1] if position + 1 < len(words) else ""
        if word in _SECRET_WORDS:
            return True
        if word == "key" and before not in _IDENTIFIER_KEY_PREFIXES:
            return True
        if word == "token" and before not in _VOCABULARY_TOKEN_PREFIXES and after not in _TOKEN_COUNT_SUFFIXES:
            return True
        if len(word) > 6 and word.endswith(_GLUED_SECRET_SUFFIXES):
            return True
    return False


def secret_env_values(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Values of secret-looking environment variables, longest first (so overlapping secrets redact fully)."""
    values = {
        value
        for name, value in environ.items()
        if (name in SECRET_ENV_VARS or is_secret_name(name)) and len(value.strip()) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact_secrets(value: Any, environ: Mapping[str, str] = os.environ) -> Any:
    """A copy of a JSON-like value with secrets replaced by "[redacted]".

    - a value under a secret-looking key (see `is_secret_name`) becomes "[redacted]", unless it is
      None, a bool or a number (a count or a flag is not a credential);
    - every occurrence of a secret environment variable's value inside any string (dict keys
      included) becomes "[redacted]".
    """
    return _redact(value, secret_env_values(environ))


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, Mapping):
        return {
            _redact(key, secrets): REDACTED if _hides(key, item) else _redact(item, secrets)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item, secrets) for item in value]
    return value


def _hides(key: Any, item: Any) -> bool:
    return (
        isinstance(key, str) and is_secret_name(key) and not (item is None or isinstance(item, bool | numbers.Number))
    )


def to_jsonable(value: Any) -> Any:
    """Paths → str, dataclasses → dicts, tuples and sets → lists, NaN/inf → "nan"/"inf", anything else → str."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else str(number)  # NaN is not JSON
    if isinstance(value, Mapping):
        return {str(to_jsonable(key)): to_jsonable(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, set | frozenset):
        items = [to_jsonable(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))  # stable order across runs
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    return str(value)


def safe_value(value: Any, environ: Mapping[str, str] = os.environ) -> Any:
    """What tracing records: JSON-able first, then redacted."""
    return redact_secrets(to_jsonable(value), environ)
