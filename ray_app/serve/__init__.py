"""Ray Serve: the OpenAI-compatible endpoint for the SLM and its adapters (the swap kit's drop-in URL)."""
