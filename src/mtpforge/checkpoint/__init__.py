"""Reading checkpoints: headers, index, configs, stored weights. No torch."""

from mtpforge.checkpoint.checkpoint import Checkpoint, open_checkpoint

__all__ = ["Checkpoint", "open_checkpoint"]
