"""POST: privacy-preserving soft-prompt transfer between LLMs (ICML 2025), as a reproducible study."""

__version__ = "0.1.0"
