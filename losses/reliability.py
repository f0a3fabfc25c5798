"""Reliability selection for the model -> pixel loss (spec 10.4, R20, R21).

A (sample, joint) pair is selected when the sample's fit is good (depth residual on the pixels
foreground in both the boxed crop and the boxed rendering, and the data -> mesh residual, both under
thresholds) and the joint's bone fits its labelled points.  Thresholds are Config values in mm,
converted per sample with the cube: depth in nu, squared residuals in nu^2 (RMS mm -> nu, squared).
"""
from __future__ import annotations

import torch
from torch import Tensor

from losses.fitting import mm_to_nu

NUM_JOINTS = 21
# joint k = 1..15 is judged by bone k; tips 16..20 inherit the distal bones 3, 6, 9, 12, 15
JOINT_BONE = tuple(range(1, 16)) + (3, 6, 9, 12, 15)


def sample_reliable(depth_residual: Tensor, fit_residual: Tensor, valid: Tensor, cube: Tensor,
                    depth_mm: float, fit_rms_mm: float) -> Tensor:
    """Sample test: eps_depth < depth threshold and data -> mesh residual < (fit RMS)^2.

    depth_residual (B,) nu, fit_residual (B,) nu^2, valid (B,) bool (crop has foreground, R20),
    cube (B, 3) mm -> (B,) bool.
    """
    fit_thr = mm_to_nu(fit_rms_mm, cube) ** 2
    return valid & (depth_residual < mm_to_nu(depth_mm, cube)) & (fit_residual < fit_thr)


def bone_reliable(bone_residual: Tensor, bone_counts: Tensor, cube: Tensor, fit_rms_mm: float,
                  min_bone_points: int = 0) -> Tensor:
    """Bone test: residual (B, 15) nu^2 < (fit RMS)^2; a bone with fewer than `min_bone_points`
    labelled points is unreliable (0 = original: an empty bone has residual 0 and passes, R21).
    bone_counts (B, 15) -> (B, 15) bool.
    """
    ok = bone_residual < (mm_to_nu(fit_rms_mm, cube) ** 2)[:, None]
    if min_bone_points > 0:
        ok = ok & (bone_counts >= min_bone_points)
    return ok


def joints_from_bones(bones_ok: Tensor) -> Tensor:
    """(B, 15) bool per bone -> (B, 21) bool per joint: wrist always, joints 1..15 their bone,
    tips their distal bone."""
    wrist = torch.ones_like(bones_ok[:, :1])
    return torch.cat([wrist, bones_ok[:, [b - 1 for b in JOINT_BONE]]], dim=1)


def select_reliable(depth_residual: Tensor, fit_residual: Tensor, bone_residual: Tensor,
                    bone_counts: Tensor, valid: Tensor, cube: Tensor, depth_mm: float,
                    fit_rms_mm: float, min_bone_points: int = 0) -> Tensor:
    """selected = sample test AND joint test, (B, 21) bool; computed without gradient."""
    with torch.no_grad():
        s = sample_reliable(depth_residual, fit_residual, valid, cube, depth_mm, fit_rms_mm)
        j = joints_from_bones(bone_reliable(bone_residual, bone_counts, cube, fit_rms_mm, min_bone_points))
        return s[:, None] & j
