"""Reading checkpoints: headers, index, configs, stored weights, local or remote. No torch."""

from mtpforge.checkpoint.checkpoint import Checkpoint, CheckpointLike, as_checkpoint, open_checkpoint

__all__ = ["Checkpoint", "CheckpointLike", "as_checkpoint", "open_checkpoint"]
