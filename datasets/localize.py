"""Hand localization in a depth frame without a given centre (inference on raw streams).

Detection: the hand is taken to be the nearest connected depth region of hand size.  Valid pixels
(between `localize_min_depth_mm` and `localize_max_depth_mm`) within `localize_band_mm` behind the
nearest valid depth form a band; its 8-connected components are tried from the nearest.  A component
is a hand candidate when it has at least `localize_min_pixels` pixels and
* its near part (points within half a cube depth of its nearest point) covers at most half of a
  `localize_max_extent_mm` square (6.1 dm^2 at 350 mm; a hand with its forearm covers 0.6-2.2 dm^2,
  a wall or a torso facing the camera far more), and
* its front `SEED_DEPTH_MM` is no wider than `localize_max_extent_mm` (a floor or a slanted wall is a
  strip across the frame).
When every component of a band is rejected the band behind it is tried; a frame without a candidate
is reported missing.

Centre: mean shift with a spherical window of radius `HAND_RADIUS_FRACTION` x the cube's smallest
edge over the candidate's own points (never the body or wall), seeded at the mean of its front
`SEED_DEPTH_MM`, at most `localize_iterations` steps; it stays on the hand end of an attached
forearm.  The result is a centre of the visible surface: about 10 mm in front of the joints (half
the hand's thickness) and a few centimetres toward the palm and wrist from the 21-joint mean (which
the 15 finger joints and 5 tips dominate).  The exporter re-centres detected frames on a first
prediction, and tracking carries that offset (below).

Tracking: in a sequence the previous frame's predicted hand centre defines a search window (the crop
cube enlarged by `TRACK_WINDOW_SCALE`); detection runs on the points inside it only, so a nearer
object elsewhere in the frame does not steal the track.  When nothing hand-like is inside, the track
is lost and detection runs on the whole frame.  A frame where neither finds a hand is reported
(None), never guessed.

All coordinates follow render/camera.py (x right, y down, z forward, mm; pixel (r, c) at u=c, v=r).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from config import Config

HAND_RADIUS_FRACTION = 0.35   # mean-shift window radius / cube edge (87.5 mm for a 250 mm cube)
TRACK_WINDOW_SCALE = 1.5      # tracking search window = cube x this, around the previous centre
MAX_BANDS = 8                 # nearer-to-farther depth bands tried before a frame is called missing
MAX_OFFSET_FRACTION = 0.25    # largest surface-to-joints offset carried by tracking / cube edge
SEED_DEPTH_MM = 50.0          # the mean shift starts at the mean of the region's front 50 mm

Intrinsics = tuple[float, float, float, float]


@dataclass(frozen=True)
class LocalizerSettings:
    band_mm: float
    min_pixels: int
    max_extent_mm: float
    min_depth_mm: float
    max_depth_mm: float
    iterations: int
    cube_mm: tuple[float, float, float]

    @staticmethod
    def from_config(cfg: Config) -> "LocalizerSettings":
        return LocalizerSettings(cfg.localize_band_mm, cfg.localize_min_pixels, cfg.localize_max_extent_mm,
                                 cfg.localize_min_depth_mm, cfg.localize_max_depth_mm,
                                 cfg.localize_iterations, tuple(float(c) for c in cfg.cube_mm))

    @property
    def radius_mm(self) -> float:
        return HAND_RADIUS_FRACTION * min(self.cube_mm)


def backproject_pixels(depth_mm: np.ndarray, rows: np.ndarray, cols: np.ndarray, K: Intrinsics) -> np.ndarray:
    """Pixels (rows, cols) of a depth frame -> camera points (N, 3) mm (pixel centre u=c, v=r)."""
    fx, fy, cx, cy = K
    z = depth_mm[rows, cols].astype(np.float64)
    return np.stack([(cols - cx) * z / fx, (rows - cy) * z / fy, z], axis=1)


def valid_mask(depth_mm: np.ndarray, s: LocalizerSettings) -> np.ndarray:
    return (depth_mm > s.min_depth_mm) & (depth_mm < s.max_depth_mm)


def mean_shift(points: np.ndarray, start: np.ndarray, radius: float, iterations: int) -> np.ndarray:
    """Flat spherical-kernel mean shift of `start` over points (N, 3); stops when it moves < 0.5 mm."""
    center = np.asarray(start, np.float64)
    for _ in range(max(1, iterations)):
        near = np.einsum("ij,ij->i", points - center, points - center) <= radius * radius
        if not near.any():
            break
        new = points[near].mean(axis=0)
        moved = np.linalg.norm(new - center)
        center = new
        if moved < 0.5:
            break
    return center


def _components_nearest_first(depth_mm: np.ndarray, band: np.ndarray, min_pixels: int) -> tuple[np.ndarray, list[int]]:
    """Labels of the band's 8-connected components and the ids of those large enough, nearest first."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(band.astype(np.uint8), connectivity=8)
    ids = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_pixels]
    nearest = [float(depth_mm[labels == i].min()) for i in ids]
    return labels, [i for _, i in sorted(zip(nearest, ids))]


def metric_area_mm2(points: np.ndarray, K: Intrinsics) -> float:
    """Surface area seen by the pixels of points (N, 3): each pixel covers (z/fx)(z/fy) mm^2."""
    return float(np.sum(points[:, 2] ** 2) / (K[0] * K[1]))


def hand_center_of_region(points: np.ndarray, K: Intrinsics, s: LocalizerSettings) -> np.ndarray | None:
    """Centre of a candidate region's points (N, 3), or None when its near part is not hand-sized.

    The near part (within half a cube depth of the nearest point) of a hand with its forearm covers
    0.6-2.5 dm^2; a wall or torso covers far more.  Limit: half of a max_extent square.  The front
    part (`SEED_DEPTH_MM`) of a hand is at most 24 cm wide; a floor's is a strip across the frame.
    """
    near = points[points[:, 2] <= points[:, 2].min() + s.cube_mm[2] / 2.0]
    if metric_area_mm2(near, K) > 0.5 * s.max_extent_mm ** 2:
        return None
    front = points[points[:, 2] <= points[:, 2].min() + SEED_DEPTH_MM]
    if np.any(np.ptp(front[:, :2], axis=0) > s.max_extent_mm):   # a floor or a slanted wall
        return None
    return mean_shift(points, front.mean(axis=0), s.radius_mm, s.iterations)


def locate_in_mask(depth_mm: np.ndarray, K: Intrinsics, s: LocalizerSettings, valid: np.ndarray) -> np.ndarray | None:
    """Nearest hand-sized region among the `valid` pixels -> its centre (3,) mm, or None."""
    if int(valid.sum()) < s.min_pixels:
        return None
    rows_any, cols_any = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    r0, c0 = int(rows_any[0]), int(cols_any[0])
    box = (slice(r0, int(rows_any[-1]) + 1), slice(c0, int(cols_any[-1]) + 1))  # work on the bounding box
    depth, valid = depth_mm[box], valid[box]
    depths = depth[valid]
    floor = -np.inf
    for _ in range(MAX_BANDS):
        remaining = depths[depths > floor]
        if remaining.size < s.min_pixels:
            return None
        z0 = float(remaining.min())
        band = valid & (depth >= z0) & (depth <= z0 + s.band_mm)
        labels, ids = _components_nearest_first(depth, band, s.min_pixels)
        for i in ids:
            rows, cols = np.nonzero(labels == i)
            points = backproject_pixels(depth_mm, rows + r0, cols + c0, K)
            center = hand_center_of_region(points, K, s)
            if center is not None:
                return center
        floor = z0 + s.band_mm
    return None


def detect_hand(depth_mm: np.ndarray, K: Intrinsics, s: LocalizerSettings) -> np.ndarray | None:
    """Centre (3,) mm of the nearest hand-sized connected region of the whole frame; None if none."""
    return locate_in_mask(depth_mm, K, s, valid_mask(depth_mm, s))


def window_mask(depth_mm: np.ndarray, K: Intrinsics, s: LocalizerSettings, center: np.ndarray,
                scale: float = TRACK_WINDOW_SCALE) -> np.ndarray:
    """Valid pixels whose 3D points lie in the cube (edges x scale) around `center`."""
    fx, fy, cx, cy = K
    half = scale * np.asarray(s.cube_mm, np.float64) / 2.0
    H, W = depth_mm.shape
    mask = np.zeros((H, W), bool)
    z_back = center[2] + half[2]
    if z_back <= s.min_depth_mm:
        return mask
    zs = np.array([max(center[2] - half[2], s.min_depth_mm), z_back])
    us = np.concatenate([fx * (center[0] + sgn * half[0]) / zs + cx for sgn in (-1, 1)])
    vs = np.concatenate([fy * (center[1] + sgn * half[1]) / zs + cy for sgn in (-1, 1)])
    c0, c1 = int(max(0, np.floor(us.min()))), int(min(W, np.ceil(us.max()) + 1))
    r0, r1 = int(max(0, np.floor(vs.min()))), int(min(H, np.ceil(vs.max()) + 1))
    if c0 >= c1 or r0 >= r1:
        return mask
    win = depth_mm[r0:r1, c0:c1]
    rows, cols = np.nonzero(valid_mask(win, s))
    pts = backproject_pixels(depth_mm, rows + r0, cols + c0, K)
    inside = np.all(np.abs(pts - center) <= half, axis=1)
    mask[rows[inside] + r0, cols[inside] + c0] = True
    return mask


def track_hand(depth_mm: np.ndarray, K: Intrinsics, s: LocalizerSettings, previous: np.ndarray) -> np.ndarray | None:
    """Hand centre near the previous one (detection inside the enlarged cube around it), or None."""
    return locate_in_mask(depth_mm, K, s, window_mask(depth_mm, K, s, np.asarray(previous, np.float64)))


class HandTracker:
    """Detect-then-track localizer for one sequence.

    The localizer finds a surface centre; a prediction gives the joint mean.  Their difference in
    one frame (clipped to `MAX_OFFSET_FRACTION` of the cube) is added to the next tracked surface
    centre, so tracked crops are centred on the joints rather than on the visible surface.
    """

    def __init__(self, K: Intrinsics, settings: LocalizerSettings, track: bool = True):
        self.K, self.s, self.track = K, settings, track
        self.previous: np.ndarray | None = None
        self.surface: np.ndarray | None = None
        self.offset = np.zeros(3)
        self.lost_count = 0

    def locate(self, depth_mm: np.ndarray) -> tuple[np.ndarray | None, str]:
        """Centre for this frame and how it was found: 'tracked', 'detected' or 'missing'."""
        if self.track and self.previous is not None:
            surface = track_hand(depth_mm, self.K, self.s, self.previous)
            if surface is not None:
                self.surface = surface
                return surface + self.offset, "tracked"
            self.lost_count += 1
        self.surface, self.offset = detect_hand(depth_mm, self.K, self.s), np.zeros(3)
        return (self.surface, "detected") if self.surface is not None else (None, "missing")

    def update(self, predicted_center_mm: np.ndarray | None) -> None:
        """Seed the next frame with this frame's predicted hand centre (None: detect next time)."""
        if predicted_center_mm is None or self.surface is None:
            self.previous, self.offset = None, np.zeros(3)
            return
        self.previous = np.asarray(predicted_center_mm, np.float64)
        offset = self.previous - self.surface
        limit = MAX_OFFSET_FRACTION * min(self.s.cube_mm)
        self.offset = offset * min(1.0, limit / max(float(np.linalg.norm(offset)), 1e-9))
