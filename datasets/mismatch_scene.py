"""Poses, views, clutter and the sensor of the model-mismatch set (datasets/mismatch.py).

* Poses (`sample_gestures`): a mixture of 15 named gestures (counting one..five, fist, thumbs-up,
  pointing gun, rock, pinch, OK, cylindrical grasp with a random aperture, hook, claw, relaxed
  cascade) made of per-finger states (extended, curled, half, hook, claw, relaxed) and thumb states
  (out, tucked, opposed, side, up), plus per-joint noise.  Ranges differ from the training sampler
  (models.pose_sampler: one shared grasp level, DIP = 2/3 PIP, MCP >= -15, |abduction| <= 20): MCP
  hyper-extension to -30, abduction to +-28, DIP independent of PIP (hook, claw), thumb CMC to 65.
* Views (`sample_views`): palm toward the camera 55 %, back 30 %, radial or ulnar side 7.5 % each;
  roll N(0, 30 deg) (clipped to +-85), yaw N(0, 22), pitch N(-8, 18) -- Gaussian, where the training
  sampler draws U(+-60), U(+-50), U(+-40) with palm / back 1/2 each.
* Sensor (`StructuredLight`): a structured-light camera unlike simreal's Kinect 1 (75 mm baseline,
  projector right, 1/8 px disparity steps, missing = 2001 or 0): projector 60 mm to the LEFT (shadows
  on the right of near objects), 1/6 px disparity steps (depth step z^2 / (f b 6), 3.0 mm at 800 mm),
  white 0.06 px + correlated 0.05 px (12 px cells) disparity noise, foreground fattening at depth
  edges, flying pixels over a 3 x 3 neighbourhood, missing pixels at steep incidence (probability
  ramping from 62 to 84 degrees), speckle hole blobs, range 350-2400 mm, every missing pixel 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation
from torch import Tensor

from models.pose_sampler import SPREAD_SIGN

# finger states: mean flexion (MCP, PIP, DIP) deg and its std
FINGER_STATES = {"ext": ((0.0, 5.0, 5.0), 7.0), "curl": ((80.0, 95.0, 65.0), 8.0),
                 "half": ((45.0, 50.0, 30.0), 10.0), "hook": ((0.0, 95.0, 80.0), 8.0),
                 "claw": ((-15.0, 55.0, 55.0), 8.0), "relax": ((20.0, 30.0, 15.0), 10.0)}
# thumb states: CMC (palmar abduction, toward the fingers), MCP flexion, IP flexion (deg) and std
THUMB_STATES = {"out": ((5.0, -10.0, 5.0, 0.0), 8.0), "tuck": ((40.0, 30.0, 50.0, 40.0), 8.0),
                "oppose": ((45.0, 15.0, 20.0, 20.0), 8.0), "side": ((5.0, 20.0, 15.0, 10.0), 6.0),
                "up": ((0.0, -15.0, 0.0, -5.0), 6.0)}
# name: (weight, states of (index, middle, ring, pinky), thumb state, spread range)
GESTURES = {
    "one": (0.06, ("ext", "curl", "curl", "curl"), "tuck", (0.0, 0.4)),
    "two": (0.07, ("ext", "ext", "curl", "curl"), "tuck", (0.3, 1.0)),
    "three": (0.06, ("ext", "ext", "ext", "curl"), "tuck", (0.0, 0.8)),
    "four": (0.06, ("ext", "ext", "ext", "ext"), "tuck", (0.2, 1.0)),
    "five": (0.07, ("ext", "ext", "ext", "ext"), "out", (0.3, 1.3)),
    "fist": (0.07, ("curl", "curl", "curl", "curl"), "tuck", (0.0, 0.0)),
    "thumbs_up": (0.05, ("curl", "curl", "curl", "curl"), "up", (0.0, 0.0)),
    "gun": (0.05, ("ext", "curl", "curl", "curl"), "out", (0.0, 0.3)),
    "rock": (0.04, ("ext", "curl", "curl", "ext"), "tuck", (0.3, 1.0)),
    "pinch": (0.10, ("half", "relax", "relax", "relax"), "oppose", (0.0, 0.5)),
    "ok": (0.07, ("half", "ext", "ext", "ext"), "oppose", (0.2, 1.0)),
    "grasp": (0.12, ("grasp",) * 4, "oppose", (0.0, 0.3)),
    "hook": (0.05, ("hook",) * 4, "side", (0.0, 0.3)),
    "claw": (0.05, ("claw",) * 4, "out", (0.2, 0.8)),
    "relaxed": (0.08, ("relax",) * 4, "side", (0.0, 0.6)),
}
GESTURE_NAMES = tuple(GESTURES)
READING_ORDER = (0, 1, 3, 2)  # (index, middle, ring, pinky) -> MANO chain ids (index, middle, pinky, ring)
FINGER_LIMITS = ((-30.0, 95.0), (-5.0, 115.0), (-10.0, 90.0))
THUMB_LIMITS = ((-15.0, 65.0), (-25.0, 50.0), (-15.0, 70.0), (-20.0, 90.0))
ABDUCTION_LIMIT = 28.0


def _rn(g: torch.Generator, *shape) -> np.ndarray:
    return torch.randn(*shape, generator=g, dtype=torch.float64).numpy()


def _ru(g: torch.Generator, *shape) -> np.ndarray:
    return torch.rand(*shape, generator=g, dtype=torch.float64).numpy()


def sample_gestures(n: int, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(angles (n, 15, 3) deg (flexion, abduction, twist) for joints 1..15, gesture ids (n,))."""
    w = np.array([GESTURES[k][0] for k in GESTURE_NAMES])
    ids = np.searchsorted(np.cumsum(w / w.sum()), _ru(g, n), side="right").clip(max=len(w) - 1)
    ang = np.zeros((n, 15, 3))
    aperture = _ru(g, n)
    for i in range(n):
        _, fingers, thumb, (s0, s1) = GESTURES[GESTURE_NAMES[ids[i]]]
        spread = s0 + (s1 - s0) * _ru(g, 1)[0]
        for r, state in enumerate(fingers):
            c = READING_ORDER[r]
            if state == "grasp":  # cylinder aperture: relaxed (0) .. closed (1)
                a = aperture[i]
                mean, std = np.array([20 + 50 * a, 25 + 65 * a, 15 + 45 * a]), 8.0
            else:
                mean, std = np.array(FINGER_STATES[state][0]), FINGER_STATES[state][1]
                if GESTURE_NAMES[ids[i]] == "relaxed":
                    mean = mean * (0.7 + 0.2 * r)  # cascade: index least, pinky most flexed
            flex = mean + std * _rn(g, 3)
            ang[i, 3 * c:3 * c + 3, 0] = [np.clip(f, *lim) for f, lim in zip(flex, FINGER_LIMITS)]
            abd = (SPREAD_SIGN[c] * 22 * spread if state in ("ext", "claw", "relax") else 0.0) + 3 * _rn(g, 1)[0]
            if GESTURE_NAMES[ids[i]] == "two" and c == 1:
                abd = 14 * spread + 3 * _rn(g, 1)[0]  # V sign: the middle finger turns away from the index
            ang[i, 3 * c, 1] = np.clip(abd, -ABDUCTION_LIMIT, ABDUCTION_LIMIT)
            ang[i, 3 * c + 1:3 * c + 3, 1] = 2 * _rn(g, 2)
        mean, std = np.array(THUMB_STATES[thumb][0]), THUMB_STATES[thumb][1]
        t = np.clip(mean + std * _rn(g, 4), [lo for lo, _ in THUMB_LIMITS], [hi for _, hi in THUMB_LIMITS])
        ang[i, 12, :2], ang[i, 13, 0], ang[i, 14, 0] = t[:2], t[2], t[3]
    ang[..., 2] = 6 * (2 * _ru(g, n, 15) - 1)
    return ang, ids


VIEW_MODES = ((0.55, (0.0, 0.0, -1.0)), (0.30, (0.0, 0.0, 1.0)), (0.075, (1.0, 0.0, 0.0)), (0.075, (-1.0, 0.0, 0.0)))


def sample_views(n: int, g: torch.Generator, axis: np.ndarray, palmar: np.ndarray) -> np.ndarray:
    """Global rotations (n, 3, 3) rest -> camera: fingers up (-y), the palm normal toward a view mode
    (VIEW_MODES: palm, back, and the two sides), then Rz(roll) Ry(yaw) Rx(pitch) in the camera frame.
    axis, palmar: the rest hand's finger direction and palm normal (unit, orthogonal)."""
    src = np.stack([axis, palmar, np.cross(axis, palmar)], 1)
    p = np.array([m[0] for m in VIEW_MODES])
    mode = np.searchsorted(np.cumsum(p / p.sum()), _ru(g, n), side="right").clip(max=len(p) - 1)
    up = np.array([0.0, -1.0, 0.0])
    base = np.stack([np.stack([up, np.array(VIEW_MODES[m][1]), np.cross(up, VIEW_MODES[m][1])], 1) @ src.T
                     for m in mode])
    ang = np.stack([np.clip(18 * _rn(g, n) - 8, -60, 45), 22 * _rn(g, n), np.clip(30 * _rn(g, n), -85, 85)], 1)
    jitter = (Rotation.from_rotvec(np.deg2rad(ang[:, 2, None]) * [0, 0, 1.0])
              * Rotation.from_rotvec(np.deg2rad(ang[:, 1, None]) * [0, 1.0, 0])
              * Rotation.from_rotvec(np.deg2rad(ang[:, 0, None]) * [1.0, 0, 0]))
    return jitter.as_matrix() @ base


# ---- scene geometry ------------------------------------------------------------------------------------
def forearm_rings(cap: np.ndarray, ring0: np.ndarray, direction: np.ndarray, length_mm: float,
                  sleeve_t: float, sleeve_gain: float, growth: float = 0.3) -> np.ndarray:
    """Forearm vertices (8 * L + 1, 3): 8 rings swept from the wrist loop ring0 (L, 3) around cap (3,)
    along the unit direction, widening by `growth`, with a sleeve cuff (radius x (1 + sleeve_gain)) from
    t = sleeve_t in (0, 1) on (a duplicated ring makes the cuff a sharp step), closed by an end vertex."""
    ts = [k / 6 for k in range(1, 7)]
    rings = ([(t, 0.0) for t in ts if t < sleeve_t] + [(sleeve_t, 0.0), (sleeve_t, sleeve_gain)]
             + [(t, sleeve_gain) for t in ts if t > sleeve_t])
    out = [cap + (ring0 - cap) * (1 + growth * t + cuff) + direction * length_mm * t for t, cuff in rings]
    out.append((cap + direction * length_mm)[None])
    return np.concatenate(out)


def box_mesh(centre: np.ndarray, half_mm: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A closed box: vertices (8, 3) and outward faces (12, 3)."""
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return centre + (corners * half_mm) @ rot.T, faces


def sphere_depth(K: Tensor, height: int, width: int, centres_mm: Tensor, radii_mm: Tensor) -> Tensor:
    """Analytic depth (H, W) mm of the union of spheres (S, 3), (S,) (0 where none is hit)."""
    rx = (torch.arange(width, dtype=torch.float64) - K[0, 2]) / K[0, 0]
    ry = (torch.arange(height, dtype=torch.float64) - K[1, 2]) / K[1, 1]
    ones = torch.ones(height, width, dtype=torch.float64)
    ray = torch.stack(torch.broadcast_tensors(rx[None, :], ry[:, None], ones), -1)
    rr = (ray * ray).sum(-1)
    out = torch.full((height, width), float("inf"), dtype=torch.float64)
    for c, r in zip(centres_mm.double(), radii_mm.double()):
        b = ray @ c
        disc = b * b - rr * (c @ c - r * r)
        z = (b - disc.clamp_min(0).sqrt()) / rr
        out = torch.where((disc > 0) & (z > 0), torch.minimum(out, z), out)
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


# ---- sensor ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StructuredLight:
    """Constants of the structured-light-like sensor (see the module docstring)."""
    baseline_mm: float = 60.0
    subpixel: float = 6.0
    noise_px: float = 0.06
    field_px: float = 0.05
    field_cell_px: int = 12
    range_mm: tuple = (350.0, 2400.0)
    steep_deg: tuple = (62.0, 84.0)
    edge_jump_mm: float = 20.0
    fatten_prob: float = 0.45
    flying_prob: float = 0.3
    speckle_rate: float = 0.004
    speckle_cell_px: int = 5
    dropout_prob: float = 0.001


def _neighbours(depth: Tensor, size: int, far: bool) -> Tensor:
    """Farthest (far=True) or nearest valid depth in the size x size window (0 = missing is ignored)."""
    x = depth if far else torch.where(depth > 0, -depth, torch.full_like(depth, -1e9))
    m = F.max_pool2d(x[None, None], size, stride=1, padding=size // 2)[0, 0]
    return m if far else -m


def left_projector_shadow(depth: Tensor, fx: float, baseline_mm: float, margin_px: float = 1.0) -> Tensor:
    """(H, W) bool: pixels the projector (baseline_mm to the camera's LEFT) cannot light -- a nearer
    surface to the left covers them: max_{c'<c} (D[c'] + c') > D[c] + c with disparity D = f b / z."""
    W = depth.shape[-1]
    disp = torch.where(depth > 0, fx * baseline_mm / depth.clamp_min(1e-3), torch.zeros_like(depth))
    h = disp + torch.arange(W, dtype=depth.dtype)
    before = torch.cat([torch.full_like(h[..., :1], -float("inf")), h.cummax(-1).values[..., :-1]], -1)
    return (depth > 0) & (before > h + margin_px)


def incidence_deg(depth: Tensor, fx: float, fy: float, jump_mm: float) -> Tensor:
    """(H, W) angle (deg) between the surface normal and the viewing axis from depth gradients
    (0 where a neighbour is across a depth edge or missing)."""
    pad = F.pad(depth[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    gx, gy = (pad[1:-1, 2:] - pad[1:-1, :-2]) / 2, (pad[2:, 1:-1] - pad[:-2, 1:-1]) / 2
    ok = (gx.abs() < jump_mm) & (gy.abs() < jump_mm) & (depth > 0)
    z = depth.clamp_min(1.0)
    slope2 = (gx * fx / z) ** 2 + (gy * fy / z) ** 2
    return torch.where(ok, torch.rad2deg(torch.atan(slope2.sqrt())), torch.zeros_like(depth))


def sense(depth: Tensor, fx: float, fy: float, g: torch.Generator, s: StructuredLight = StructuredLight()) -> Tensor:
    """Clean scene depth (H, W) mm (0 = nothing) -> structured-light frame (H, W) float mm, integer
    valued, 0 = missing."""
    H, W = depth.shape
    z = torch.where((depth > s.range_mm[0]) & (depth < s.range_mm[1]), depth, torch.zeros_like(depth)).double()
    u = torch.rand(4, H, W, generator=g, dtype=torch.float64)
    near = _neighbours(z, 3, far=False)
    fatten = (u[0] < s.fatten_prob) & (near < 1e8) & ((z == 0) | (z - near > s.edge_jump_mm))
    z = torch.where(fatten, near, z)
    near, far = _neighbours(z, 3, far=False), _neighbours(z, 3, far=True)
    fg = (z > 0) & (far - z > s.edge_jump_mm)
    bg = (z > 0) & (z - near > s.edge_jump_mm) & ~fg
    fly = u[1] < s.flying_prob
    a = u[1] / s.flying_prob
    z = torch.where(fg & fly, z + a * (far - z), torch.where(bg & fly, z - a * (z - near), z))
    missing = left_projector_shadow(z, fx, s.baseline_mm)
    steep = incidence_deg(z, fx, fy, s.edge_jump_mm)
    missing |= u[2] < ((steep - s.steep_deg[0]) / (s.steep_deg[1] - s.steep_deg[0])).clamp(0, 1)
    c = s.speckle_cell_px
    blobs = F.interpolate(torch.randn(1, 1, H // c + 2, W // c + 2, generator=g, dtype=torch.float64),
                          scale_factor=c, mode="bilinear", align_corners=False)[0, 0, :H, :W]
    missing |= blobs > torch.quantile(blobs.flatten()[::7], 1 - s.speckle_rate)
    missing |= u[3] < s.dropout_prob
    c = s.field_cell_px
    field = F.interpolate(torch.randn(1, 1, H // c + 2, W // c + 2, generator=g, dtype=torch.float64),
                          scale_factor=c, mode="bilinear", align_corners=False)[0, 0, :H, :W]
    fb = fx * s.baseline_mm
    disp = fb / z.clamp_min(1.0) + s.noise_px * torch.randn(H, W, generator=g, dtype=torch.float64) + s.field_px * field
    q = torch.round(disp * s.subpixel).clamp_min(1.0) / s.subpixel
    out = torch.round(fb / q)
    return torch.where(missing | (z <= 0), torch.zeros_like(out), out).float()
