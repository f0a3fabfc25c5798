"""NYU hand pose dataset in its original layout (datasets.md 2), reader and writer.

Also reads the real-like `simreal` set, written in the same format by `write_nyu_split`.
Labels (`joint_data.mat`) are opened only when requested (R9).
"""
from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.io
import torch
from torch import Tensor

from datasets.centers import CENTER_CONVENTIONS, load_centers, split_center_file
from datasets.common import CropDataset, crop_dataset, FrameTable, drop_invalid, select_split
from datasets.depth_io import DatasetError, read_nyu_depth, write_nyu_depth
from datasets.joints import NYU14, NYU_EVAL_IDS_36
from models.palm_landmarks import apply_map
from render.camera import make_intrinsics, project

EXPECTED_TREE = """expected NYU layout (https://jonathantompson.github.io/NYU_Hand_Pose_Dataset.htm):
<root>/
├── train/
│   ├── depth_1_0000001.png ...      depth_{view}_{index:07d}.png, index 1-based, depth mm = 256*G + B
│   ├── joint_data.mat               joint_xyz / joint_uvd 3 x N x 36 x 3 (read only with labels)
│   └── center_train_refined.txt     V2V refined centres, one 'x y z' (mm, y-up) or 'invalid' per frame
│                                    (views 2, 3: center_train_{1,2}_refined.txt, DSF per-view, y-down)
└── test/
    ├── depth_1_0000001.png ...
    ├── joint_data.mat
    └── center_test_refined.txt
(centre files elsewhere: center_file_train= / center_file_test=)"""

NUM_JOINTS_36 = 36
JOINT_NAMES_36 = tuple(f"{f}_KNU{k}_{ab}" for f in ("F1", "F2", "F3", "F4", "TH") for k in (3, 2, 1)
                       for ab in ("A", "B")) + tuple(f"PALM_{i}" for i in range(1, 7))
_DSF_VIEW_FILE = re.compile(r"center_(train|test)_[0-2]_refined\.txt$")


def nyu_intrinsics(cfg) -> np.ndarray:
    """Full-frame K (3, 3) float64 from the (resolved) config."""
    return make_intrinsics(cfg.fx, cfg.fy, cfg.cx, cfg.cy, dtype=torch.float64).numpy()


def list_frames(split_dir: Path, view: int) -> tuple[list[Path], np.ndarray]:
    """Depth PNGs of one view in a split folder, sorted -> (paths, 0-based frame ids (N,))."""
    pat = re.compile(rf"depth_{view}_(\d{{7}})\.png$")
    found = []
    with os.scandir(split_dir) as it:
        for e in it:
            m = pat.match(e.name)
            if m:
                found.append((int(m.group(1)) - 1, split_dir / e.name))
    found.sort()
    return [p for _, p in found], np.asarray([i for i, _ in found], dtype=np.int64)


def default_center_file(root: Path, split_dir_name: str, view: int) -> Path:
    """<root>/<train|test>/center_<split>_refined.txt (view 1) or the DSF per-view file (views 2, 3)."""
    s = split_dir_name
    name = f"center_{s}_refined.txt" if view == 1 else f"center_{s}_{view - 1}_refined.txt"
    return root / s / name


def center_convention(path: Path):
    """DSF per-view files are y-down; every other NYU centre file is V2V-style y-up."""
    return CENTER_CONVENTIONS["nyu_dsf_view" if _DSF_VIEW_FILE.search(Path(path).name) else "nyu"]


def read_joint_data(path: Path, view: int) -> np.ndarray:
    """joint_data.mat -> joint_xyz of one view (N, 36, 3) camera mm y-down (file is y-up)."""
    if not path.is_file():
        raise DatasetError(f"label file not found: {path}\n{EXPECTED_TREE}")
    try:
        xyz = np.asarray(scipy.io.loadmat(str(path), variable_names=["joint_xyz"])["joint_xyz"], dtype=np.float64)
    except Exception as e:  # scipy raises several types for damaged files
        raise DatasetError(f"{path}: unreadable joint_data.mat ({type(e).__name__}: {e})") from e
    if xyz.ndim != 4 or xyz.shape[2:] != (NUM_JOINTS_36, 3) or xyz.shape[0] < view:
        raise DatasetError(f"{path}: joint_xyz has shape {xyz.shape}, expected (3, N, 36, 3)")
    out = xyz[view - 1].copy()
    out[..., 1] = -out[..., 1]
    return out


def build_nyu(cfg, split: str, labels: bool, name: str = "nyu") -> CropDataset:
    """NYU-format dataset (nyu or simreal) of split train / val / test (val carved from train)."""
    root = Path(cfg.data_root)
    sub = "test" if split == "test" else "train"
    split_dir = root / sub
    if not split_dir.is_dir():
        raise DatasetError(f"{name}: folder not found: {split_dir}\n{EXPECTED_TREE}")
    paths, ids = list_frames(split_dir, cfg.nyu_view)
    if not paths:
        raise DatasetError(f"{name}: no depth_{cfg.nyu_view}_*.png frames in {split_dir}\n{EXPECTED_TREE}")
    K = nyu_intrinsics(cfg)
    cfile = split_center_file(cfg, sub, default_center_file(root, sub, cfg.nyu_view), name, EXPECTED_TREE)
    centers, valid = load_centers(cfile, center_convention(cfile), K, cfg.image_width, cfg.image_height,
                                  getattr(cfg, "center_format", "auto"))
    if ids[-1] >= len(centers):
        raise DatasetError(f"{cfile}: {len(centers)} centre lines but frame {paths[-1].name} needs line {ids[-1] + 1}")
    cubes = np.tile(np.asarray(cfg.cube_mm, dtype=np.float64), (len(ids), 1))
    if name == "nyu" and sub == "test":  # the unseen second test subject (datasets.md 1.2)
        cubes[ids >= cfg.nyu_subject2_first_index] *= cfg.nyu_subject2_cube_scale
    joints = None
    if labels:
        all_joints = read_joint_data(split_dir / "joint_data.mat", cfg.nyu_view)
        if ids[-1] >= len(all_joints):
            raise DatasetError(f"{split_dir / 'joint_data.mat'}: {len(all_joints)} frames, {paths[-1].name} needs more")
        joints = all_joints[ids][:, list(NYU_EVAL_IDS_36)]
    table = FrameTable(paths, ids, centers[ids], cubes, joints)
    if sub == "test":   # the benchmark file needs a row for every line of the centre file
        table.dropped = {int(i): "depth file missing" for i in np.setdiff1d(np.arange(len(centers)), ids)}
    table = drop_invalid(table, valid[ids], f"{name} {sub}")
    table = select_split(table, split, cfg.val_fraction, cfg.max_frames)
    return crop_dataset(cfg, table, partial(read_nyu_depth, raw=True), K, split, f"{name} {split}")


def _fmt(v: float) -> str:
    return f"{v:.14g}"


def write_nyu_split(root: str | Path, split: str, depth_frames_mm: np.ndarray | Iterable[np.ndarray],
                    joints_xyz_36: np.ndarray | None, centers_xyz: np.ndarray,
                    K: np.ndarray | None = None, view: int = 1) -> int:
    """Write one split in the exact NYU format; returns the number of frames written.

    depth_frames_mm: (N, 480, 640) array or an iterator of (480, 640) frames (mm, 0 = missing),
    written as <root>/<split>/depth_{view}_{i+1:07d}.png.  joints_xyz_36: (N, 36, 3) camera mm y-down
    or None (no joint_data.mat); stored y-up in all three views with joint_uvd = projection with K.
    centers_xyz: (N, 3) camera mm y-down (NaN rows -> 'invalid'), written y-up as the V2V file
    <root>/<split>/center_<split>_refined.txt (view 1; views 2, 3: the DSF per-view file
    center_<split>_<view-1>_refined.txt, y-down).  K: (3, 3), default the NYU intrinsics.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    out = Path(root) / split
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for frame in depth_frames_mm:
        write_nyu_depth(out / f"depth_{view}_{n + 1:07d}.png", frame)
        n += 1
    centers = np.asarray(centers_xyz, dtype=np.float64)
    if centers.shape != (n, 3):
        raise ValueError(f"centers_xyz has shape {centers.shape}, expected ({n}, 3)")
    sign = -1.0 if view == 1 else 1.0  # V2V file (y-up) for view 1, DSF per-view file (y-down) otherwise
    lines = ["invalid" if not np.all(np.isfinite(c)) else f"{_fmt(c[0])} {_fmt(sign * c[1])} {_fmt(c[2])}"
             for c in centers]
    default_center_file(Path(root), split, view).write_text("\n".join(lines) + "\n")
    if joints_xyz_36 is not None:
        xyz = np.asarray(joints_xyz_36, dtype=np.float64)
        if xyz.shape != (n, NUM_JOINTS_36, 3):
            raise ValueError(f"joints_xyz_36 has shape {xyz.shape}, expected ({n}, 36, 3)")
        Kt = torch.as_tensor(K if K is not None else
                             make_intrinsics(588.03, 587.07, 320.0, 240.0, dtype=torch.float64).numpy(),
                             dtype=torch.float64)
        uvd = project(torch.from_numpy(xyz), Kt).numpy()
        xyz_up = xyz.copy()
        xyz_up[..., 1] = -xyz_up[..., 1]
        names = np.empty((1, NUM_JOINTS_36), dtype=object)
        names[0, :] = JOINT_NAMES_36
        scipy.io.savemat(str(out / "joint_data.mat"), {
            "joint_xyz": np.repeat(xyz_up[None], 3, axis=0), "joint_uvd": np.repeat(uvd[None], 3, axis=0),
            "joint_names": names}, do_compression=False)
    return n


def nyu14_from_network(joints21: Tensor | np.ndarray, palm_map: np.ndarray,
                       palm1_from_map: bool = False) -> Tensor | np.ndarray:
    """(B, 21, 3) network joints -> (B, 14, 3) NYU joints in NYU order (any units, any frame).

    The 11 finger joints and PALM_1 (= wrist, as the original) are copied by `NYU14.to_network`;
    PALM_2/PALM_3 (no network joint; and PALM_1 when palm1_from_map) come from the label-free palm
    map (3, 21) of `models.palm_landmarks`.
    """
    palms = apply_map(joints21, palm_map)
    cols = []
    for i, j in enumerate(NYU14.to_network):
        k = i - 11  # palm row
        if j is None or (palm1_from_map and k >= 0):
            cols.append(palms[:, k])
        else:
            cols.append(joints21[:, j])
    return torch.stack(cols, dim=1) if isinstance(joints21, Tensor) else np.stack(cols, axis=1)
