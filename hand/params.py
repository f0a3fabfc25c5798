"""The 62 hand parameters, defined once (spec 3.2): one row = ω, θ, β, s, t.

    ROTATION     0:3    global rotation ω, axis-angle (rad)
    POSE         3:48   45 pose PCA coefficients θ (articulation = θ · components + mean)
    SHAPE       48:58   10 shape coefficients β
    SCALE       58      isotropic scale s
    TRANSLATION 59:62   translation t (mm in source space, nu in network space)

Source space: verts = s · MANO_mm + t (camera mm).  Network space: X_n = s · MANO_mm / NETWORK_UNIT_MM + t,
normalized xyz of a crop (nu).  The first 58 values (ω, θ, β) alone pose the unscaled MANO hand.
"""
from __future__ import annotations

import torch
from torch import Tensor

NUM_PARAMS = 62
ROTATION = slice(0, 3)
POSE = slice(3, 48)
SHAPE = slice(48, 58)
SCALE = 58
TRANSLATION = slice(59, 62)
NUM_POSE_COEFFS = POSE.stop - POSE.start        # 45
NUM_SHAPE_COEFFS = SHAPE.stop - SHAPE.start     # 10
NUM_MANO_PARAMS = SHAPE.stop                    # 58: ω, θ, β without s and t
NETWORK_UNIT_MM = 125.0                         # network space: X_n = s * MANO_mm / 125 + t


def identity_params(n: int = 1, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """(n, 62) rows of the template hand: ω = 0, θ = 0 (mean articulation), β = 0, s = 1, t = 0."""
    p = torch.zeros(n, NUM_PARAMS, dtype=dtype, device=device)
    p[:, SCALE] = 1.0
    return p
