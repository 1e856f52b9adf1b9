"""Hub sharing: push a written checkpoint folder with `huggingface_hub`."""

from .push import check_push_target, push_to_hub

__all__ = ["check_push_target", "push_to_hub"]
