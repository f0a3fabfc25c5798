"""Reliability selection for the model -> pixel loss (spec 10.4, R20, R21).

A (sample, joint) pair is selected when the sample's fit is good (depth residual on the pixels
foreground in both the boxed crop and the boxed rendering, and the data -> mesh residual) and the
joint's bone fits its labelled points.

* absolute (the original): the residuals must lie under fixed thresholds, Config values in mm
  converted per sample with the cube (depth in nu, squared residuals in nu^2).  Tuned to a near
  perfect fit: with a hand that is not the model, or a noisy sensor, it selects nothing.
* relative (`select_reliable_relative`): "good" means good for this data: a sample passes when it
  passes the absolute test, or when both of its residuals are at most the batch's `quantile` of them
  (over valid samples) and under `ceiling` times the absolute thresholds (a batch of failed fits
  selects nothing); a bone likewise, against the bone's residuals over the selected samples.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hand.skeleton import NUM_MANO_JOINTS, TIP_PARENTS
from losses.fitting import mm_to_nu

# joint k = 1..15 is judged by bone k; tips 16..20 inherit the distal bones 3, 6, 9, 12, 15
JOINT_BONE = tuple(range(1, NUM_MANO_JOINTS)) + TIP_PARENTS


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


def _quantile_of(values: Tensor, mask: Tensor, q: float) -> Tensor:
    """q-quantile of values[mask] along dim 0 (per column for 2-D values); +inf where mask is empty.
    values (B,) or (B, K), mask of the same shape -> () or (K,)."""
    v = torch.where(mask, values, torch.full_like(values, float("nan")))
    out = torch.nanquantile(v, q, dim=0)
    return torch.nan_to_num(out, nan=float("inf"))


def select_reliable_relative(depth_residual: Tensor, fit_residual: Tensor, bone_residual: Tensor,
                             bone_counts: Tensor, valid: Tensor, cube: Tensor, depth_mm: float, fit_rms_mm: float,
                             quantile: float, ceiling: float, min_bone_points: int = 0) -> tuple[Tensor, Tensor]:
    """Relative selection (module docstring): -> (joints (B, 21) bool, samples (B,) bool), no gradient.

    Shapes as select_reliable; quantile in (0, 1]; ceiling >= 1 multiplies the absolute thresholds
    (depth_mm, fit_rms_mm; squared residuals scale with ceiling^2)."""
    with torch.no_grad():
        cap_depth = mm_to_nu(ceiling * depth_mm, cube)
        cap_fit = mm_to_nu(ceiling * fit_rms_mm, cube) ** 2
        ok = valid & (depth_residual < cap_depth) & (fit_residual < cap_fit)
        absolute = sample_reliable(depth_residual, fit_residual, valid, cube, depth_mm, fit_rms_mm)
        samples = absolute | (ok & (depth_residual <= _quantile_of(depth_residual, ok, quantile))
                              & (fit_residual <= _quantile_of(fit_residual, ok, quantile)))
        has = bone_counts >= max(1, min_bone_points)
        candidates = samples[:, None] & has & (bone_residual < cap_fit[:, None])
        bone_absolute = bone_residual < (mm_to_nu(fit_rms_mm, cube) ** 2)[:, None]
        bones = candidates & (bone_absolute | (bone_residual <= _quantile_of(bone_residual, candidates, quantile)[None]))
        if min_bone_points == 0:      # the original's rule: an empty bone does not disqualify its joint
            bones = bones | (samples[:, None] & ~has)
        return samples[:, None] & joints_from_bones(bones), samples
