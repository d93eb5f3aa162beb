"""slm-swap: prove from agent traces whether a small local model can replace the hosted LLM."""

__version__ = "0.1.0"
