"""Where the SLM checkpoint comes from: SLM_MODEL_PATH resolution and the demo SLM."""
