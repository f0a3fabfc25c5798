"""Consis-CycleGAN losses (spec 9.2): LSGAN, cycle, identity, foreground-depth and pose consistency.

All inputs are normalized depth crops (B, 1, S, S) in [-1, 1] with background +1 unless stated.
Weights (lambda) are applied by the caller (stages/transfer.py) from the Config; these functions
return unweighted means.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.huber import huber
from models.densemap import decode


# ---- adversarial (least squares) ------------------------------------------------------------
def lsgan_generator_loss(pred_fake: Tensor) -> Tensor:
    """Generator side: mean((D(G(x)) - 1)^2) over the patch scores (B, 1, P, P) -> scalar."""
    return ((pred_fake - 1.0) ** 2).mean()


def lsgan_discriminator_loss(pred_real: Tensor, pred_fake: Tensor) -> Tensor:
    """Discriminator side: 0.5 * (mean((D(real) - 1)^2) + mean(D(fake)^2)) -> scalar."""
    return 0.5 * (((pred_real - 1.0) ** 2).mean() + (pred_fake ** 2).mean())


def hinge_discriminator_loss(real_scores: list[Tensor], fake_scores: list[Tensor]) -> Tensor:
    """Hinge loss of (multi-scale) discriminators: sum over scales of mean(relu(1 - D(real))) +
    mean(relu(1 + D(fake))) -> scalar (0 once real scores >= 1 and fake scores <= -1)."""
    return sum(F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean() for r, f in zip(real_scores, fake_scores))


def hinge_generator_loss(fake_scores: list[Tensor]) -> Tensor:
    """Generator side of the hinge loss: -sum over scales of mean(D(G(x))) -> scalar.  Its gradient
    does not vanish when the discriminator is confident (unlike the LSGAN term near the identity)."""
    return -sum(f.mean() for f in fake_scores)


def hole_budget_loss(hole_prob: Tensor, hand: Tensor, budget: float) -> Tensor:
    """relu(expected fraction of hand pixels made missing - budget) over the batch -> scalar.

    hole_prob (B, 1, S, S) per-pixel missing probability, hand (B, 1, S, S) bool mask of the clean
    hand.  Zero while the generator stays within the budget, so holes are free up to it."""
    return F.relu(masked_mean(hole_prob, hand) - budget)


# ---- reconstruction ---------------------------------------------------------------------------
def cycle_loss(reconstructed: Tensor, original: Tensor) -> Tensor:
    """||G_B(G_A(x)) - x||_1 mean over pixels (B, 1, S, S) -> scalar."""
    return (reconstructed - original).abs().mean()


def identity_loss(mapped: Tensor, original: Tensor) -> Tensor:
    """||G(x) - x||_1 mean over pixels for x already in G's output domain -> scalar."""
    return (mapped - original).abs().mean()


# ---- foreground-depth consistency -------------------------------------------------------------
def erode_mask(mask: Tensor, px: int) -> Tensor:
    """Binary erosion of a boolean mask (B, 1, H, W) by `px` pixels (square 3x3 steps); px=0 is identity.

    Pixels outside the image count as not-mask, so the hand shrinks at the crop border too.
    """
    m = mask.float()
    for _ in range(px):
        m = -F.max_pool2d(-F.pad(m, (1, 1, 1, 1), value=0.0), 3, stride=1)
    return m > 0.5


def hand_mask(x: Tensor, fg_threshold: float, erode_px: int = 0) -> Tensor:
    """Synthetic hand mask H = {p: x(p) < fg_threshold}, optionally eroded: (B, 1, S, S) bool."""
    return erode_mask(x < fg_threshold, erode_px)


def masked_mean(values: Tensor, mask: Tensor, count: Tensor | None = None) -> Tensor:
    """sum_{p in mask} values / count (default |mask|); 0 (with gradient graph) for an empty mask."""
    n = mask.sum() if count is None else count
    return (values * mask.to(values.dtype)).sum() / n.clamp(min=1).to(values.dtype)


def masked_l1(a: Tensor, b: Tensor, mask: Tensor, count: Tensor | None = None) -> Tensor:
    """sum_{p in mask} |a - b| / count (default |mask|); 0 (with gradient graph) for an empty mask."""
    return masked_mean((a - b).abs(), mask, count)


def foreground_consistency(translated: Tensor, source: Tensor, fg_threshold: float,
                           erode_px: int = 0, tolerance_nu: Tensor | float = 0.0) -> Tensor:
    """L_fg (unweighted): mean max(0, |G_A(x_s) - x_s| - tol) over the synthetic hand mask H of x_s.

    translated, source (B, 1, S, S); tolerance_nu a float or (B, 1, 1, 1) per-sample tolerance in
    normalized units (0 = the original plain L1).  Exactly 0 when the generator keeps every hand
    pixel within tol, whatever it does off the mask (background, artefacts, eroded edge pixels).
    A tolerance lets sensor-like noise onto the hand: with tol = 0 the constant L1 gradient holds a
    residual generator at the identity (bench/bench_transfer.py --diagnose).
    """
    mask = hand_mask(source, fg_threshold, erode_px)
    excess = ((translated - source).abs() - tolerance_nu).clamp(min=0.0)
    return masked_mean(excess, mask)


def symmetric_foreground_consistency(translated: Tensor, source: Tensor, fg_threshold: float) -> Tensor:
    """Symmetric option for G_B (real -> synthetic): residual over pixels foreground in BOTH x_r and
    G_B(x_r), divided by the count of the union -> scalar.  Lets G_B remove clutter (pixels leaving
    the foreground are not penalised) but not reshape the pixels that stay."""
    fg_src = source < fg_threshold
    fg_out = translated.detach() < fg_threshold
    return masked_l1(translated, source, fg_src & fg_out, (fg_src | fg_out).sum())


# ---- pose consistency ---------------------------------------------------------------------------
def pose_consistency(maps: Tensor, reference: Tensor, joints_uvd: Tensor, kappa: float,
                     temperature: float, delta: float, fg_threshold: float) -> Tensor:
    """L_pose (unweighted, includes the spec's factor 100): 100 * H(decode(maps, reference), J_uvd).

    maps (B, 4J, F, F) predicted by a frozen pose network on G_A(x_s); reference = the clean crop x_s
    (B, 1, S, S) used to decode (spec 5.3); joints_uvd (B, J, 3) synthetic labels (nu).  Gradients
    reach G_A through the maps only (the pose network's parameters are frozen by the caller).
    """
    joints = decode(maps, reference, kappa, temperature, fg_threshold)
    return 100.0 * huber(joints, joints_uvd, delta)


# ---- acceptance statistics (spec 9.2) -----------------------------------------------------------
@torch.no_grad()
def foreground_fidelity(translated: Tensor, source: Tensor, fg_threshold: float,
                        half_cube_mm: Tensor | None = None) -> dict[str, float]:
    """Acceptance numbers of spec 9.2 over the (uneroded) synthetic hand mask H of `source`.

    Returns mean |G_A(x) - x| over H in nu (pooled over all hand pixels of the batch), the same in mm
    when `half_cube_mm` (B,) = b_z/2 per sample is given, and the fraction of H turned into
    background (translated >= fg_threshold).
    """
    mask = source < fg_threshold
    diff = (translated - source).abs()
    n = mask.sum().clamp(min=1).item()
    out = {"fg_abs_nu": float((diff * mask).sum().item() / n),
           "fg_lost_frac": float(((translated >= fg_threshold) & mask).sum().item() / n)}
    if half_cube_mm is not None:
        mm = diff * half_cube_mm.reshape(-1, 1, 1, 1).to(diff)
        out["fg_abs_mm"] = float((mm * mask).sum().item() / n)
    return out
