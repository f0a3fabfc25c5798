"""An exponential moving average of a network's weights (Polyak averaging), kept beside training.

    avg <- decay * avg + (1 - decay) * w        after every optimizer step, for every floating-point
                                                tensor of the state dict (parameters and batch-norm
                                                statistics); integer buffers are copied.

Why: self-supervised fine-tuning on small batches moves the weights a lot from step to step (the test
error of its snapshots swings by several mm every 50 steps on the mismatch set), so "the weights
after the last step" is a noisy pick; the average over the last ~1 / (1 - decay) steps is not, and it
needs no labels.  The engine saves the average as the checkpoint's 'model' (what phase=test, export
and load_model= read) and the trained weights as 'train_model' (what resume continues from).

With `keep_module=True` the average lives in a frozen copy of the network (`.module`, eval mode, no
gradients) whose tensors *are* the average, so it can be run as a mean teacher (fine-tuning's
`finetune_teacher=average`) without copying weights each step.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class WeightAverage:
    """EMA of `model`'s state dict, starting at its current weights. decay in [0, 1).

    keep_module: hold the average as the tensors of a frozen eval-mode copy of `model` (`.module`).
    """

    def __init__(self, model: nn.Module, decay: float, keep_module: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"weight-average decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.module: nn.Module | None = None
        if keep_module:
            self.module = copy.deepcopy(model).eval().requires_grad_(False)
            self.average = self.module.state_dict()   # detached views: updating them updates the module
        else:
            self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average toward the model's current weights."""
        for k, v in model.state_dict().items():
            avg = self.average[k]
            if avg.is_floating_point():
                avg.lerp_(v.detach(), 1.0 - self.decay)
            else:
                avg.copy_(v)

    def state_dict(self) -> dict:
        return self.average

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.average[k].copy_(v)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; its own ones come back afterwards."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield
        finally:
            model.load_state_dict(own)
