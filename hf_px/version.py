"""The installed hf-px version; a leaf so that records (`PruningConfig`) and the CLI read it
without importing the package root."""

__version__ = "0.1.0"
