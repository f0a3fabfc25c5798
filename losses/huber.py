"""The Huber loss H of spec 7.1, used by every coordinate and map loss."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def huber(pred: Tensor, target: Tensor, delta: float) -> Tensor:
    """Mean over all elements of 0.5 z^2 if |z| < delta else delta (|z| - delta/2), z = pred - target.

    With delta = cfg.huber_delta_nu = 0.01 and weight 100 this is 50 z^2 below 0.01 nu and |z| - 0.005
    above: an L1 loss in nu.  (Not PyTorch's default smooth-L1.)  Returns a scalar; computed in float32.
    """
    return F.huber_loss(pred.float(), target.float(), reduction="mean", delta=delta)
