"""Training loop, callbacks, schedules and checkpoints."""

from nncompress.train.callbacks import Callback, CallbackList
from nncompress.train.checkpoint import atomic_write_bytes
from nncompress.train.loop import History, TrainConfig, evaluate, fit, make_optimizer
from nncompress.train.schedules import lr_multiplier

__all__ = [
    "Callback", "CallbackList", "History", "TrainConfig", "atomic_write_bytes",
    "evaluate", "fit", "lr_multiplier", "make_optimizer",
]
