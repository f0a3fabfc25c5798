"""Model-fitting primitives on real crops (spec 7.2-7.5, 10.3): hand box, point sampling, render
residual, data -> mesh and part-aware data -> mesh distances.

Points and meshes are in normalized xyz (nu); the hand box works in camera mm.  Conversions go
through `render.camera` only.  Samples whose crop has no foreground are flagged invalid (R20) and the
`masked_mean` helper excludes them from batch means.
"""
from __future__ import annotations

import torch
from torch import Tensor

from render.camera import crop_points_norm, norm_to_xyz
from render.geometry import part_point_mesh_sqdist, point_mesh_sqdist


def mm_to_nu(value_mm: float | Tensor, cube: Tensor) -> Tensor:
    """A length in mm -> nu of each sample: mm / (b/2).  cube (B, 3) mm (mean edge) -> (B,)."""
    return value_mm / (0.5 * cube.mean(dim=-1))


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of values (B,) over the samples with valid (B,) True; 0 when none is valid."""
    w = valid.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def hand_box_mask(points_mm: Tensor, joints_mm: Tensor, xy_margin_mm: float, far_margin_mm: float,
                  near_margin_mm: float) -> Tensor:
    """Points strictly inside the hand box of 7.4.

    points_mm (B, P, 3), joints_mm (B, J, 3) camera mm -> (B, P) bool.  Box:
    [x_min - xy, x_max + xy] x [y_min - xy, y_max + xy] x [z_min - near, z_max + far].
    """
    lo_m = points_mm.new_tensor([xy_margin_mm, xy_margin_mm, near_margin_mm])
    hi_m = points_mm.new_tensor([xy_margin_mm, xy_margin_mm, far_margin_mm])
    lo = joints_mm.min(dim=1).values - lo_m
    hi = joints_mm.max(dim=1).values + hi_m
    return ((points_mm > lo[:, None]) & (points_mm < hi[:, None])).all(dim=-1)


def apply_hand_box(depth_n: Tensor, joints_xyz_n: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                   xy_margin_mm: float, far_margin_mm: float, near_margin_mm: float, fg_threshold: float) -> Tensor:
    """Restrict a normalized crop to the hand box of the joints; other pixels become +1.

    depth_n (B, 1, S, S), joints_xyz_n (B, J, 3) nu, center/cube (B, 3) mm, K_crop (B, 3, 3).
    Gradients flow through the kept pixels.
    """
    pts_n, fg = crop_points_norm(depth_n, center, cube, K_crop, fg_threshold)
    inside = hand_box_mask(norm_to_xyz(pts_n, center, cube), norm_to_xyz(joints_xyz_n, center, cube),
                           xy_margin_mm, far_margin_mm, near_margin_mm)
    keep = (fg & inside).reshape(depth_n.shape)
    return torch.where(keep, depth_n, torch.ones_like(depth_n))


def sample_indices(mask: Tensor, num: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Pick `num` candidate indices per sample (7.5).

    mask (B, P) bool candidates -> (indices (B, num) long, valid (B,) bool).  n >= num: without
    replacement; 0 < n < num: every candidate floor(num/n) times plus a random subset for the rest;
    n = 0: indices 0 and valid False (R20).  Randomness from `generator` (CPU).
    """
    out = torch.zeros(mask.shape[0], num, dtype=torch.long)
    valid = torch.zeros(mask.shape[0], dtype=torch.bool)
    for b, cand in enumerate(mask.detach().cpu()):
        ids = cand.nonzero()[:, 0]
        n = ids.numel()
        if n == 0:
            continue
        if n >= num:
            pick = ids[torch.randperm(n, generator=generator)[:num]]
        else:
            rest = ids[torch.randperm(n, generator=generator)[: num % n]]
            pick = torch.cat([ids.repeat(num // n), rest])
        out[b], valid[b] = pick, True
    return out.to(mask.device), valid.to(mask.device)


def gather_points(values: Tensor, indices: Tensor) -> Tensor:
    """values (B, P, ...) gathered at indices (B, N) -> (B, N, ...)."""
    idx = indices.reshape(indices.shape + (1,) * (values.dim() - 2)).expand(*indices.shape, *values.shape[2:])
    return values.gather(1, idx)


def render_residual(observed: Tensor, rendered: Tensor, fg_threshold: float) -> Tensor:
    """rho(b) = sum over U of |x - R| / |U|, U = pixels foreground in either crop (10.3).

    observed, rendered (B, 1, S, S) normalized -> (B,) nu; 0 where U is empty.
    """
    union = (observed < fg_threshold) | (rendered < fg_threshold)
    diff = (observed - rendered).abs() * union
    return diff.flatten(1).sum(1) / union.flatten(1).sum(1).clamp_min(1)


def intersection_residual(observed: Tensor, rendered: Tensor, fg_threshold: float) -> Tensor:
    """epsilon_depth(b) = sum over I of |x - R| / |U| (10.4), I = foreground in both, U = in either.

    observed, rendered (B, 1, S, S) -> (B,) nu; 0 where U is empty.
    """
    fo, fr = observed < fg_threshold, rendered < fg_threshold
    diff = (observed - rendered).abs() * (fo & fr)
    return diff.flatten(1).sum(1) / (fo | fr).flatten(1).sum(1).clamp_min(1)


def data_mesh_distance(points: Tensor, verts: Tensor, faces: Tensor, trim_fraction: float) -> Tensor:
    """Mean squared point -> mesh distance (7.2) over each sample's (1 - trim_fraction) nearest points:
    points (B, N, 3), verts (B, V, 3) nu -> (B,) nu^2.

    trim_fraction 0 is the original mean over all points; above 0 the farthest points are left out,
    so sensor artefacts, clutter inside the hand box and surface the hand model cannot reach do not
    pull the mesh (a trimmed mean, robust to that share of outliers)."""
    d = point_mesh_sqdist(points, verts, faces)
    if trim_fraction > 0:
        keep = max(1, int(round(d.shape[1] * (1.0 - trim_fraction))))
        d = d.topk(keep, dim=1, largest=False).values
    return d.mean(dim=1)


def part_mesh_distance(points: Tensor, labels: Tensor, verts: Tensor, part_faces: list[Tensor],
                       faces: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Part-aware distance (7.3): points (B, N, 3) with labels (B, N) 0..15 (0 = palm, unused).

    part_faces: 15 face-index tensors into faces (F, 3) (or 15 triangle tensors (n_k, 3) without faces).
    Returns per-bone mean squared distance (B, 15) nu^2 (0 for bones without points) and the
    per-bone point counts (B, 15).
    """
    return part_point_mesh_sqdist(points, labels, verts, part_faces, faces)
