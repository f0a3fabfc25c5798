"""Shared real-data logic: frame -> normalized crop + labels, augmentation, mirroring, splits.

Spec: dsf-method.md 1.2-1.5 and 2.  All conversions go through `render.camera`.

A loader (nyu.py, icvl.py, msra.py) builds a `FrameTable` (paths, ids, centres, cubes and optional
labels, all in camera mm y-down and already mirrored where the dataset is mirrored) and wraps it in a
`CropDataset` with a frame reader.  Items follow the sample dictionary of ARCHITECTURE.md.
"""
from __future__ import annotations

import dataclasses

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.depth_io import DatasetError
from render.camera import (CROP_SIZE, backproject, crop_frame_nearest, crop_transform, norm_to_crop_px, normalize_depth,
                           pixel_grid_norm, uvd_norm_to_xyz_norm, xyz_to_norm, xyz_to_uvd_norm)

log = logging.getLogger(__name__)
AUG_MODES = ("rot", "com", "sc", "none")


@dataclass
class FrameTable:
    """Per-frame records of one split.

    paths: N depth files; ids (N,) int64 frame index in the split (0-based, before any selection);
    centers, cubes (N, 3) float64 mm; joints_xyz (N, J, 3) float64 camera mm y-down, or None.
    """
    paths: list[Path]
    ids: np.ndarray
    centers: np.ndarray
    cubes: np.ndarray
    joints_xyz: np.ndarray | None = None
    dropped: dict = dataclasses.field(default_factory=dict)   # frame id -> why it is not in the table

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows: np.ndarray) -> "FrameTable":
        rows = np.asarray(rows, dtype=np.int64)
        return FrameTable([self.paths[r] for r in rows], self.ids[rows], self.centers[rows], self.cubes[rows],
                          None if self.joints_xyz is None else self.joints_xyz[rows], dict(self.dropped))


@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation ranges (spec 2.2): centre shift +-mm per axis, cube scale +-, rotation +-deg."""
    center_shift_mm: float = 10.0
    cube_scale: float = 0.2
    rotation_deg: float = 180.0


# ---- mirroring (spec 1.5) --------------------------------------------------------------------
def mirror_frame(frame: np.ndarray, cx: float) -> np.ndarray:
    """Mirror (H, W) about the principal point: new column c takes old column 2cx - c (nearest, round
    half up); columns that fall outside the frame become 0 (missing)."""
    W = frame.shape[1]
    src = np.floor(2.0 * cx - np.arange(W) + 0.5).astype(np.int64)
    ok = (src >= 0) & (src < W)
    out = np.zeros_like(frame)
    out[:, ok] = frame[:, src[ok]]
    return out


def mirror_uvd(uvd: np.ndarray, cx: float | np.ndarray) -> np.ndarray:
    """Labels or predictions (..., 3) in frame pixels: u -> 2cx - u (its own inverse); a copy, float64.

    cx: the principal point, or an array broadcasting against uvd[..., 0] (e.g. (N, 1) per frame)."""
    out = np.array(uvd, dtype=np.float64, copy=True)
    out[..., 0] = 2.0 * cx - out[..., 0]
    return out


def mirror_xyz(xyz: np.ndarray) -> np.ndarray:
    """Camera points (..., 3): x -> -x, the 3-D form of u -> 2cx - u."""
    out = np.array(xyz, dtype=np.float64, copy=True)
    out[..., 0] = -out[..., 0]
    return out


# ---- crop, rotation, labels ------------------------------------------------------------------
def uvd_px_to_xyz(uvd: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Frame-pixel labels (..., 3) (u px, v px, d mm) -> camera mm y-down with K (3, 3)."""
    return backproject(torch.as_tensor(uvd, dtype=torch.float64), torch.as_tensor(K, dtype=torch.float64)).numpy()


def crop_sample(frame: np.ndarray, center: np.ndarray, cube: np.ndarray, K: np.ndarray,
                size: int = CROP_SIZE) -> tuple[torch.Tensor, np.ndarray]:
    """Frame (H, W) mm -> (normalized crop (1, S, S) float32, crop transform A (3, 3) float64)."""
    C = torch.as_tensor(center, dtype=torch.float64)
    b = torch.as_tensor(cube, dtype=torch.float64)
    A = crop_transform(C, b, torch.as_tensor(K, dtype=torch.float64), size).numpy()
    crop = torch.from_numpy(crop_frame_nearest(frame, A, size)).double()
    depth = normalize_depth(crop[None], C[2:3], b[2:3])
    return depth.float(), A


def rotate_crop(depth_n: torch.Tensor, phi: float) -> torch.Tensor:
    """Rotate a crop (1, S, S) about its centre by phi (rad), nearest neighbour, fill +1.

    Output pixel p (normalized) takes the input at R(-phi) p, so content at q moves to R(phi) q
    (the same rotation as `rotate_uv`).
    """
    S = depth_n.shape[-1]
    g = pixel_grid_norm(S, torch.float64)
    c, s = math.cos(phi), math.sin(phi)
    src = torch.stack([c * g[..., 0] + s * g[..., 1], -s * g[..., 0] + c * g[..., 1]], -1)
    idx = torch.floor(norm_to_crop_px(src, S) + 0.5).long()
    ok = (idx >= 0).all(-1) & (idx < S).all(-1)
    idx = idx.clamp(0, S - 1)
    out = depth_n[..., idx[..., 1], idx[..., 0]]
    return torch.where(ok, out, torch.ones_like(out))


def rotate_uv(uvd_n: torch.Tensor, phi: float) -> torch.Tensor:
    """Rotate normalized (u_n, v_n) of (..., J, 3) by phi (rad) about (0, 0); d_n unchanged."""
    c, s = math.cos(phi), math.sin(phi)
    u, v = uvd_n[..., 0], uvd_n[..., 1]
    return torch.stack([c * u - s * v, s * u + c * v, uvd_n[..., 2]], -1)


def label_targets(xyz_mm: np.ndarray, center: np.ndarray, cube: np.ndarray, A: np.ndarray, K: np.ndarray,
                  phi: float = 0.0, size: int = CROP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Joints (J, 3) camera mm -> (uvd_n (J, 3), xyz_n (J, 3)) float32 of the crop; with a crop
    rotation phi the uvd is rotated and xyz recomputed from it by rule 1.3 (A unchanged)."""
    C = torch.as_tensor(center, dtype=torch.float64)
    b = torch.as_tensor(cube, dtype=torch.float64)
    K_crop = torch.as_tensor(A, dtype=torch.float64) @ torch.as_tensor(K, dtype=torch.float64)
    xyz = torch.as_tensor(xyz_mm, dtype=torch.float64)
    uvd = xyz_to_uvd_norm(xyz, C, b, K_crop, size)
    if phi:
        uvd = rotate_uv(uvd, phi)
        xyz_n = uvd_norm_to_xyz_norm(uvd, C, b, K_crop, size)
    else:
        xyz_n = xyz_to_norm(xyz, C, b)
    return uvd.float(), xyz_n.float()


def draw_augmentation(gen: torch.Generator, center: np.ndarray, cube: np.ndarray,
                      p: AugmentParams) -> tuple[str, np.ndarray, np.ndarray, float]:
    """One mode uniformly from rot/com/sc/none (spec 2.2) -> (mode, centre, cube, phi rad)."""
    mode = AUG_MODES[int(torch.randint(4, (1,), generator=gen))]
    r = torch.rand(3, generator=gen, dtype=torch.float64).numpy()
    center, cube, phi = np.array(center, np.float64), np.array(cube, np.float64), 0.0
    if mode == "com":
        center = center + (2.0 * r - 1.0) * p.center_shift_mm
    elif mode == "sc":
        cube = cube * abs(1.0 + (2.0 * r[0] - 1.0) * p.cube_scale)
    elif mode == "rot":
        phi = math.radians((2.0 * r[0] - 1.0) * p.rotation_deg)
    return mode, center, cube, phi


# ---- splits ------------------------------------------------------------------------------------
def carve_validation(n: int, val_fraction: float, chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val rows of an n-frame training list -> (train_rows, val_rows).

    Frames are grouped in consecutive chunks (<= `chunk`, smaller for short lists) so neighbouring
    video frames rarely straddle the split; round(n_chunks * val_fraction) chunks, evenly spaced over
    the list, form the validation set.
    """
    rows = np.arange(n)
    if val_fraction <= 0 or n < 2:
        return rows, rows[:0]
    chunk = max(1, min(chunk, n // 20))
    n_chunks = -(-n // chunk)
    n_val = min(n_chunks - 1, max(1, round(n_chunks * val_fraction)))
    val_chunks = np.floor((np.arange(n_val) + 0.5) * n_chunks / n_val).astype(np.int64)
    is_val = np.isin(rows // chunk, val_chunks)
    return rows[~is_val], rows[is_val]


def select_split(table: FrameTable, split: str, val_fraction: float, max_frames: int = 0) -> FrameTable:
    """train / val rows of a training table (carve_validation) or the whole test table; then the first
    max_frames rows (0 = all)."""
    if split in ("train", "val"):
        tr, va = carve_validation(len(table), val_fraction)
        table = table.subset(tr if split == "train" else va)
    elif split != "test":
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if max_frames > 0 and len(table) > max_frames:
        table = table.subset(np.arange(max_frames))
        table.dropped = {i: why for i, why in table.dropped.items() if i < table.ids[-1]}
    return table


def drop_invalid(table: FrameTable, valid: np.ndarray, what: str) -> FrameTable:
    """Drop frames whose centre line is `invalid` (counted in the log)."""
    if valid.all():
        return table
    log.warning("%s: %d of %d frames skipped for an invalid centre", what, int((~valid).sum()), len(valid))
    kept = table.subset(np.flatnonzero(valid))
    kept.dropped.update({int(i): "invalid centre" for i in table.ids[~valid]})
    return kept


# ---- dataset -------------------------------------------------------------------------------------
class CropDataset(Dataset):
    """Real frames -> sample dictionaries (ARCHITECTURE.md).

    reader(path) -> (H, W) mm (float32 or uint16; 0 = missing), before mirroring; K (3, 3) full-frame intrinsics;
    augment: AugmentParams for training crops or None; mirror: mirror about cx (spec 1.5) the frames
    and, with them, the table's centres and labels (the table is given in the sensor's own frame).  The
    augmentation of item i in an epoch is drawn from a generator seeded by (seed, epoch, i) (set_epoch).
    """

    def __init__(self, table: FrameTable, reader: Callable[[Path], np.ndarray], K: np.ndarray, *,
                 fg_threshold: float, augment: AugmentParams | None = None, mirror: bool = False,
                 frame_hw: tuple[int, int] | None = None, size: int = CROP_SIZE, name: str = "dataset"):
        if mirror:  # x -> -x is the 3-D form of the image mirror u -> 2cx - u
            joints = None if table.joints_xyz is None else mirror_xyz(table.joints_xyz)
            table = dataclasses.replace(table, centers=mirror_xyz(table.centers), joints_xyz=joints)
        self.table, self.reader, self.K = table, reader, np.asarray(K, dtype=np.float64)
        self.augment, self.mirror, self.fg_threshold = augment, mirror, fg_threshold
        self.frame_hw, self.size, self.name = frame_hw, size, name
        self.empty_ids: list[int] = []
        self.epoch, self.aug_seed = 0, 0

    def __len__(self) -> int:
        return len(self.table)

    @property
    def has_labels(self) -> bool:
        return self.table.joints_xyz is not None

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """Augmentation draws of the coming epoch: item i's come from its own generator seeded by
        (seed, epoch, i), so a crop does not depend on workers, item order or a resume."""
        self.epoch, self.aug_seed = epoch, seed

    def _generator(self, i: int) -> torch.Generator:
        key = (self.aug_seed * 1_000_003 + self.epoch) * 10_000_019 + i
        return torch.Generator().manual_seed(key % (2 ** 63))

    def load_frame(self, i: int) -> np.ndarray:
        """Frame i (H, W) in mm (float32, or uint16 from raw PNG readers), mirrored where the dataset is."""
        path = self.table.paths[i]
        frame = self.reader(path)
        if self.frame_hw is not None and frame.shape != tuple(self.frame_hw):
            raise DatasetError(f"{path}: frame is {frame.shape[1]}x{frame.shape[0]}, expected "
                               f"{self.frame_hw[1]}x{self.frame_hw[0]} (check the dataset / image size settings)")
        return mirror_frame(frame, self.K[0, 2]) if self.mirror else frame

    def _report_empty(self, i: int) -> None:
        fid = int(self.table.ids[i])
        self.empty_ids.append(fid)
        n = len(self.empty_ids)
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ... : counted, logged without flooding
            log.warning("%s: %d crop(s) so far contain no hand pixel (normalized depth < %.2f); first ids %s, "
                        "latest %s", self.name, n, self.fg_threshold, self.empty_ids[:5], self.table.paths[i])

    def __getitem__(self, i: int) -> dict:
        frame = self.load_frame(i)
        center, cube, phi = self.table.centers[i], self.table.cubes[i], 0.0
        if self.augment is not None:
            _, center, cube, phi = draw_augmentation(self._generator(i), center, cube, self.augment)
        depth, A = crop_sample(frame, center, cube, self.K, self.size)
        if phi:
            depth = rotate_crop(depth, phi)
        if not bool((depth < self.fg_threshold).any()):
            self._report_empty(i)
        item = {
            "depth": depth,
            "center": torch.as_tensor(center, dtype=torch.float32),
            "cube": torch.as_tensor(cube, dtype=torch.float32),
            "M": torch.as_tensor(A, dtype=torch.float32),
            "K": torch.as_tensor(self.K, dtype=torch.float32),
            "index": torch.tensor(int(self.table.ids[i]), dtype=torch.long),
        }
        if self.table.joints_xyz is not None:
            item["joints_uvd"], item["joints_xyz"] = label_targets(self.table.joints_xyz[i], center, cube, A,
                                                                   self.K, phi, self.size)
        return item

    def scan_empty(self) -> list[int]:
        """Crop every frame without augmentation; ids of crops with no hand pixel (logged as a warning)."""
        empty = []
        for i in range(len(self)):
            depth, _ = crop_sample(self.load_frame(i), self.table.centers[i], self.table.cubes[i], self.K, self.size)
            if not bool((depth < self.fg_threshold).any()):
                empty.append(int(self.table.ids[i]))
        if empty:
            log.warning("%s: %d of %d frames crop to no hand pixel; first ids %s", self.name, len(empty), len(self),
                        empty[:10])
        return empty


def crop_dataset(cfg, table: FrameTable, reader: Callable[[Path], np.ndarray], K: np.ndarray, split: str,
                 name: str) -> CropDataset:
    """The CropDataset of a split with the config's augmentation (training split only), mirroring,
    foreground threshold and sensor size: the common tail of every real-dataset builder."""
    aug = AugmentParams(cfg.aug_center_shift_mm, cfg.aug_cube_scale, cfg.aug_rotation_deg) \
        if (split == "train" and cfg.augment) else None
    return CropDataset(table, reader, K, augment=aug, mirror=bool(cfg.mirror), fg_threshold=cfg.fg_threshold_nu,
                       frame_hw=(cfg.image_height, cfg.image_width), name=name)
