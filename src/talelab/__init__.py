"""talelab: build a small language model that writes stories, end to end."""

__version__ = "0.1.0"
