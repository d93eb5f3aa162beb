"""Model engines: local SLM (transformers), hosted LLM (openai SDK), replay of recorded traces."""

from ray_app.engines.base import Engine, EngineKind, EngineRequest, Generation

__all__ = ["Engine", "EngineKind", "EngineRequest", "Generation"]
