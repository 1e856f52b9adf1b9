"""Hub sharing: push a written checkpoint folder with `huggingface_hub`."""

from .push import push_to_hub

__all__ = ["push_to_hub"]
