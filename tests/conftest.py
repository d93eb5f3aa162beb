"""Shared fixtures: a tiny random model with the demo SLM's tokenizer, and one Ray for the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.langfuse_capture import langfuse_server  # noqa: F401  (a fixture shared by the tracing tests)
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray takes seconds)."""
    import ray

    from ray_app.engines.determinism import DETERMINISM_ENV

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": DETERMINISM_ENV})
    yield ray
    ray.shutdown()
