"""Sphere proxy of the hand, collision prior and point segmentation (spec section 6).

Everything lives in network space (nu) per sample.  Thresholds given in mm are converted with the
sample's cube (`losses.fitting.mm_to_nu`).

Layout of the 66 spheres (6.2):
* 0            wrist (radius r_w, the palm-line radius)
* 1 + 4f + i   palm line f = 0..4 (end joints 1, 4, 7, 10, 13), i = 0..3 at t = 0.2, 0.4, 0.6, 0.8
* 21 + 3b + i  bone b = 0..14 (joint k = b + 1 to BONE_CHILD[b]), i = 0..2 at t = 0, 1/3, 2/3;
               finger f owns bones 3f..3f+2 (index, middle, pinky, ring, thumb)
"""
from __future__ import annotations

import torch
from torch import Tensor

from hand.skeleton import BONE_CHILD, NUM_JOINTS, TIP_PARENTS
from losses.fitting import mm_to_nu

NUM_SPHERES = 66
NUM_PALM_SPHERES = 21
PALM_LINE_ENDS = (1, 4, 7, 10, 13)
PALM_LINE_T = (0.2, 0.4, 0.6, 0.8)
BONE_T = (0.0, 1.0 / 3.0, 2.0 / 3.0)
TIP_RADIUS_SOURCE = TIP_PARENTS  # tips 16..20 take their parent joints' radii / 1.5
TIP_RADIUS_DIVISOR = 1.5
RADIUS_NEIGHBOURS = 10


def joint_radii(joints: Tensor, verts: Tensor, regressor_support: list[Tensor]) -> Tensor:
    """Radius of each of the 21 joints (6.1), nu.

    joints (B, 21, 3) nu (keep their gradient), verts (B, V, 3) nu (detached here),
    regressor_support: 16 LongTensors of vertex ids (original 778 vertices).
    r_j = mean of the 10 smallest |J_j - v| over j's support; tips = r_{3,6,9,12,15} / 1.5.
    Returns (B, 21).  All 16 supports at once: padded to the longest (padding at +inf distance).
    """
    ids, pad = _support_table(regressor_support, verts.device)                  # (16, n), (16, n)
    dist = (joints[:, :16, None, :] - verts.detach()[:, ids]).norm(dim=-1)      # (B, 16, n)
    dist = dist.masked_fill(pad, float("inf"))
    k = min(RADIUS_NEIGHBOURS, ids.shape[1])
    near = dist.topk(k, dim=2, largest=False).values                            # (B, 16, k)
    count = (~pad).sum(1).clamp(max=k)                                          # neighbours of each joint
    near = torch.where(torch.arange(k, device=verts.device) < count[:, None], near, torch.zeros_like(near))
    radii = near.sum(2) / count.to(near.dtype)                                  # (B, 16)
    tips = radii[:, list(TIP_RADIUS_SOURCE)] / TIP_RADIUS_DIVISOR
    return torch.cat([radii, tips], dim=1)


def _support_table(regressor_support: list[Tensor], device) -> tuple[Tensor, Tensor]:
    """The 16 supports as one padded id table (16, n) long and its padding mask (16, n) bool (cached)."""
    key = (tuple(t.data_ptr() for t in regressor_support), str(device))
    if key not in _SUPPORT_CACHE:
        n = max(len(t) for t in regressor_support)
        ids = torch.zeros(len(regressor_support), n, dtype=torch.long)
        pad = torch.ones(len(regressor_support), n, dtype=torch.bool)
        for j, t in enumerate(regressor_support):
            ids[j, :len(t)], pad[j, :len(t)] = t.cpu(), False
        _SUPPORT_CACHE.clear()                                                  # one hand model at a time
        _SUPPORT_CACHE[key] = (ids.to(device), pad.to(device), list(regressor_support))
    return _SUPPORT_CACHE[key][:2]


_SUPPORT_CACHE: dict = {}


def palm_radius(wrist_radius: Tensor, cube: Tensor, offset_mm: float, min_mm: float,
                max_mm: float) -> Tensor:
    """Palm-line radius at the wrist end: clamp(r_0 - offset, min, max), mm converted per sample.

    wrist_radius (B,) nu, cube (B, 3) mm -> (B,) nu.
    """
    lo, hi = mm_to_nu(min_mm, cube), mm_to_nu(max_mm, cube)
    return torch.minimum(torch.maximum(wrist_radius - mm_to_nu(offset_mm, cube), lo), hi)


def _sphere_layout() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each sphere i as a point of a segment: start joint a, end joint b, t (all (66,)) and the
    column of its start radius (a, or 21 = the palm-line radius r_w for the wrist and palm spheres);
    the wrist sphere is joint 0 with t = 0."""
    start, end, t = [0], [0], [0.0]
    for e in PALM_LINE_ENDS:
        for ti in PALM_LINE_T:
            start.append(0), end.append(e), t.append(ti)
    for b, child in enumerate(BONE_CHILD):
        for ti in BONE_T:
            start.append(b + 1), end.append(child), t.append(ti)
    radius_start = [NUM_JOINTS if a == 0 else a for a in start]
    return (torch.tensor(start), torch.tensor(end), torch.tensor(t, dtype=torch.float64),
            torch.tensor(radius_start))


SPHERE_START, SPHERE_END, SPHERE_T, SPHERE_RADIUS_START = _sphere_layout()


def build_spheres(centre_joints: Tensor, radii: Tensor, wrist_end_radius: Tensor) -> tuple[Tensor, Tensor]:
    """The 66 spheres of 6.2: centre c_i = J_a + t (J_b - J_a) and radius r_a + t (r_b - r_a) along
    segment (a, b) of the layout above, with the wrist end of every palm line at radius r_w.

    centre_joints (B, 21, 3) nu: joints that place the centres; radii (B, 21) per joint;
    wrist_end_radius (B,) = r_w.  Returns centres (B, 66, 3), radii (B, 66).
    """
    dev = centre_joints.device
    a, b, a_r = SPHERE_START.to(dev), SPHERE_END.to(dev), SPHERE_RADIUS_START.to(dev)
    t = SPHERE_T.to(device=dev, dtype=centre_joints.dtype)
    J = centre_joints
    centres = J[:, a] + t[:, None] * (J[:, b] - J[:, a])
    r = torch.cat([radii, wrist_end_radius[:, None]], dim=1)                   # column NUM_JOINTS: r_w
    return centres, r[:, a_r] + t.to(r.dtype) * (r[:, b] - r[:, a_r])


def hand_spheres(joints: Tensor, verts: Tensor, regressor_support: list[Tensor], cube: Tensor,
                 offset_mm: float, min_mm: float, max_mm: float,
                 centre_joints: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Radii from (joints, verts) and centres from `centre_joints` (default: the same joints).

    Returns centres (B, 66, 3), radii (B, 66) in nu.
    """
    r = joint_radii(joints, verts, regressor_support)
    r_w = palm_radius(r[:, 0], cube, offset_mm, min_mm, max_mm)
    return build_spheres(joints if centre_joints is None else centre_joints, r, r_w)


def _bone_of_sphere(i: int) -> int:
    return (i - NUM_PALM_SPHERES) // 3


def collision_pair_mask(device=None) -> Tensor:
    """(66, 66) bool, symmetric, zero diagonal: True = pair penalized (6.3).  Built once per device."""
    key = str(torch.device(device) if device is not None else torch.device("cpu"))
    if key not in _PAIR_MASKS:
        _PAIR_MASKS[key] = _pair_mask().to(device)
    return _PAIR_MASKS[key]


_PAIR_MASKS: dict[str, Tensor] = {}


def _pair_mask() -> Tensor:
    m = torch.ones(NUM_SPHERES, NUM_SPHERES, dtype=torch.bool)
    m.fill_diagonal_(False)
    palm = range(NUM_PALM_SPHERES)
    m[:NUM_PALM_SPHERES, :NUM_PALM_SPHERES] = False
    for i in range(NUM_PALM_SPHERES, NUM_SPHERES):
        for j in range(NUM_PALM_SPHERES, NUM_SPHERES):
            bi, bj = _bone_of_sphere(i), _bone_of_sphere(j)
            if bi // 3 == bj // 3 and abs(bi - bj) <= 1:
                m[i, j] = False
    for f in range(5):
        for i in range(3):
            s = NUM_PALM_SPHERES + 9 * f + i  # first bone of finger f
            m[s, 4 * (f + 1)] = m[4 * (f + 1), s] = False
    for s in (57, 58, 59, 60):  # thumb's first bone and the first sphere of its second bone
        for p in palm:
            m[s, p] = m[p, s] = False
    return m


def penetration_sums(centres: Tensor, radii: Tensor, mask: Tensor) -> Tensor:
    """Sum over ordered pairs of e_ij = max(r_i + r_j - |c_i - c_j|, 0) * mask_ij.

    centres (B, 66, 3), radii (B, 66), mask (66, 66) -> (B,).
    """
    diff = centres[:, :, None, :] - centres[:, None, :, :]
    # the diagonal is masked; keep its norm differentiable (|0| has no gradient)
    eye = torch.eye(centres.shape[1], dtype=centres.dtype, device=centres.device)
    dist = (diff.pow(2).sum(-1) + eye).sqrt()
    e = torch.relu(radii[:, :, None] + radii[:, None, :] - dist)
    return (e * mask.to(e.dtype)).sum(dim=(1, 2))


def collision_loss(centres: Tensor, radii: Tensor, gate_nu: Tensor, mode: str = "gated") -> tuple[Tensor, Tensor]:
    """Collision prior (6.3): sum over samples of the gated/clipped penetration sums / (B * 66).

    gate_nu (B,): per-sample gate in nu.  mode 'gated' (original): a sample whose sum reaches the
    gate contributes 0.  'clipped' (R13): its value is capped at the gate while keeping the gradient
    direction, S * sg(min(1, gate/S)).  Returns (loss scalar, raw per-sample sums (B,)).
    """
    sums = penetration_sums(centres, radii, collision_pair_mask(centres.device))
    if mode == "gated":
        contrib = torch.where(sums < gate_nu, sums, torch.zeros_like(sums))
    elif mode == "clipped":
        scale = (gate_nu / sums.detach().clamp_min(torch.finfo(sums.dtype).tiny)).clamp(max=1.0)
        contrib = sums * scale
    else:
        raise ValueError(f"unknown collision mode '{mode}' (gated or clipped)")
    return contrib.sum() / (sums.shape[0] * centres.shape[1]), sums


def segment_points(points: Tensor, centres: Tensor, radii: Tensor, mask: Tensor | None = None) -> Tensor:
    """Label points by the nearest sphere surface (6.4).

    points (B, P, 3), centres (B, 66, 3), radii (B, 66), all nu -> labels (B, P) long:
    bone 1..15 of the nearest finger sphere, or 0 (palm) when the nearest palm sphere is strictly
    closer.  Surface distance |(|p - c| - r)|.  mask (B, P) bool: only these points are labelled
    (the others get 0), e.g. the foreground of a crop's point cloud.
    """
    if mask is None:
        return _nearest_sphere_labels(points, centres, radii)
    # the masked points of each sample packed to the left of a (B, pm) layout, labelled, put back
    count = mask.sum(1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :int(count.max())]
    packed = torch.gather(points, 1, order[..., None].expand(-1, -1, 3))
    valid = torch.arange(order.shape[1], device=points.device)[None] < count[:, None]
    labels = torch.zeros(mask.shape, dtype=torch.long, device=points.device)
    return labels.scatter_(1, order, torch.where(valid, _nearest_sphere_labels(packed, centres, radii), 0))


def _nearest_sphere_labels(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """`segment_points` of every point: (B, P, 3), (B, 66, 3), (B, 66) -> (B, P)."""
    dist = torch.cdist(points, centres, compute_mode="donot_use_mm_for_euclid_dist")  # (B, P, 66)
    surf = (dist - radii[:, None, :]).abs()
    palm_d = surf[..., :NUM_PALM_SPHERES].min(dim=-1).values
    finger_d, finger_i = surf[..., NUM_PALM_SPHERES:].min(dim=-1)
    labels = finger_i // 3 + 1
    return torch.where(palm_d < finger_d, torch.zeros_like(labels), labels)
