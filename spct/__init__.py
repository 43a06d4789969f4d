"""spct: Self-Principled Critique Tuning for generative reward models."""

__version__ = "0.1.0"
