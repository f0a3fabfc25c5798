"""Hand localization in a depth frame without a given centre (inference on raw streams).

Detection: the hand is taken to be the nearest connected depth region of hand size.  Pixels within
`localize_band_mm` behind the nearest valid depth form a band; its connected components are tried
from the nearest; the first with at least `localize_min_pixels` pixels and a 3D extent no wider than
`localize_max_extent_mm` is the hand.  Its 3D centre of mass is then refined by mean shift inside
the crop cube (points farther than half a cube from the centre are dropped), which removes most of
an attached forearm.

Tracking: in a sequence the previous frame's predicted hand centre seeds the refinement directly;
when fewer than `localize_min_pixels` points fall inside its cube the track is lost and detection
runs again.  A frame where neither finds a hand is reported (None), never guessed.

All coordinates follow render/camera.py (x right, y down, z forward, mm).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from config import Config


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


def backproject_pixels(depth_mm: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                       K: tuple[float, float, float, float]) -> np.ndarray:
    """Pixels (rows, cols) of a depth frame -> camera points (N, 3) mm (pixel centre u=c, v=r)."""
    fx, fy, cx, cy = K
    z = depth_mm[rows, cols].astype(np.float64)
    return np.stack([(cols - cx) * z / fx, (rows - cy) * z / fy, z], axis=1)


def refine_center(depth_mm: np.ndarray, K: tuple[float, float, float, float], center: np.ndarray,
                  s: LocalizerSettings) -> tuple[np.ndarray | None, int]:
    """Mean shift of the 3D centre inside the cube.  Returns (centre or None, points used)."""
    fx, fy, cx, cy = K
    half = np.asarray(s.cube_mm, dtype=np.float64) / 2.0
    H, W = depth_mm.shape
    n = 0
    for _ in range(max(1, s.iterations)):
        if center[2] <= s.min_depth_mm:
            return None, 0
        # pixel window of the cube's front face around the centre
        u, v = fx * center[0] / center[2] + cx, fy * center[1] / center[2] + cy
        ru = half[0] * fx / max(center[2] - half[2], s.min_depth_mm)
        rv = half[1] * fy / max(center[2] - half[2], s.min_depth_mm)
        c0, c1 = int(max(0, np.floor(u - ru))), int(min(W, np.ceil(u + ru) + 1))
        r0, r1 = int(max(0, np.floor(v - rv))), int(min(H, np.ceil(v + rv) + 1))
        if c0 >= c1 or r0 >= r1:
            return None, 0
        win = depth_mm[r0:r1, c0:c1]
        rows, cols = np.nonzero((win > s.min_depth_mm) & (win < s.max_depth_mm))
        pts = backproject_pixels(depth_mm, rows + r0, cols + c0, K)
        inside = np.all(np.abs(pts - center) <= half, axis=1)
        n = int(inside.sum())
        if n < s.min_pixels:
            return None, n
        new = pts[inside].mean(axis=0)
        if np.linalg.norm(new - center) < 0.5:
            return new, n
        center = new
    return center, n


def detect_hand(depth_mm: np.ndarray, K: tuple[float, float, float, float],
                s: LocalizerSettings) -> np.ndarray | None:
    """Centre (3,) mm of the nearest hand-sized connected region, refined in the cube; None if none."""
    valid = (depth_mm > s.min_depth_mm) & (depth_mm < s.max_depth_mm)
    if valid.sum() < s.min_pixels:
        return None
    depths = np.sort(depth_mm[valid])
    tried_below = -np.inf
    for _ in range(8):  # a few nearer-to-farther attempts past small noise blobs
        candidates = depths[depths > tried_below]
        if candidates.size < s.min_pixels:
            return None
        z0 = candidates[0]
        band = (valid & (depth_mm >= z0) & (depth_mm <= z0 + s.band_mm)).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(band, connectivity=8)
        order = sorted(range(1, count), key=lambda i: float(np.min(depth_mm[labels == i])))
        for i in order:
            if stats[i, cv2.CC_STAT_AREA] < s.min_pixels:
                continue
            rows, cols = np.nonzero(labels == i)
            pts = backproject_pixels(depth_mm, rows, cols, K)
            extent = pts[:, :2].max(axis=0) - pts[:, :2].min(axis=0)
            if np.any(extent > s.max_extent_mm):
                # a large region (e.g. hand merged with the body): keep its nearest part only
                near = pts[pts[:, 2] <= pts[:, 2].min() + s.cube_mm[2] / 2]
                start = near.mean(axis=0)
            else:
                start = pts.mean(axis=0)
            center, _ = refine_center(depth_mm, K, start, s)
            if center is not None:
                return center
        tried_below = z0 + s.band_mm
    return None


class HandTracker:
    """Detect-then-track localizer for one sequence."""

    def __init__(self, K: tuple[float, float, float, float], settings: LocalizerSettings, track: bool = True):
        self.K, self.s, self.track = K, settings, track
        self.previous: np.ndarray | None = None
        self.lost_count = 0

    def locate(self, depth_mm: np.ndarray) -> tuple[np.ndarray | None, str]:
        """Centre for this frame and how it was found: 'tracked', 'detected' or 'missing'."""
        if self.track and self.previous is not None:
            center, _ = refine_center(depth_mm, self.K, self.previous.copy(), self.s)
            if center is not None:
                return center, "tracked"
            self.lost_count += 1
        center = detect_hand(depth_mm, self.K, self.s)
        return (center, "detected") if center is not None else (None, "missing")

    def update(self, predicted_center_mm: np.ndarray | None) -> None:
        """Seed the next frame with this frame's predicted hand centre (None: detect next time)."""
        self.previous = None if predicted_center_mm is None else np.asarray(predicted_center_mm, np.float64)
