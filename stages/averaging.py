"""An exponential moving average of a network's weights (Polyak averaging), kept beside training.

    avg <- decay * avg + (1 - decay) * w        after every optimizer step, for every floating-point
                                                tensor of the state dict (parameters and batch-norm
                                                statistics); integer buffers are copied.

Why: self-supervised fine-tuning on small batches moves the weights a lot from step to step (the test
error of its snapshots swings by several mm every 50 steps on the mismatch set), so "the weights
after the last step" is a noisy pick; the average over the last ~1 / (1 - decay) steps is not, and it
needs no labels.  The engine saves the average as the checkpoint's 'model' (what phase=test, export
and load_model= read) and the trained weights as 'train_model' (what resume continues from).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class WeightAverage:
    """EMA of `model`'s state dict, starting at its current weights. decay in [0, 1)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"weight-average decay must lie in [0, 1), got {decay}")
        self.decay = decay
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
