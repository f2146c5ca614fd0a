"""Optimizer, metrics, EMA and checkpoints (public API only)."""

from nnxfn.training import metrics as metrics
from nnxfn.training import optimizer as optimizer
from nnxfn.training.checkpoint import (
    checkpoint_steps as checkpoint_steps,
    restore_checkpoint as restore_checkpoint,
    save_checkpoint as save_checkpoint,
)
from nnxfn.training.ema import EMA as EMA, EMAState as EMAState
from nnxfn.training.optimizer import (
    ModelAndOptimizer as ModelAndOptimizer,
    OptVariable as OptVariable,
    Optimizer as Optimizer,
)
