"""MSRA 2015 (cvpr15_MSRAHandGestureDB), leave-one-subject-out (datasets.md 4).

Frames are enumerated from the .bin files (subject, gesture, frame order), so `joint.txt` is opened only
when labels are requested (R9).  The known faulty frames (4.4) are excluded from training; test folds
keep every frame (scoring aligns by file name).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from config import MSRA_SUBJECT_CUBES_MM
from datasets.centers import CENTER_CONVENTIONS, load_centers, split_center_file
from datasets.common import CropDataset, crop_dataset, FrameTable, drop_invalid, select_split
from datasets.depth_io import DatasetError, read_msra_bin
from datasets.nyu import nyu_intrinsics

NUM_SUBJECTS = 9
NUM_JOINTS = 21
GESTURES = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "I", "IP", "L", "MP", "RP", "T", "TIP", "Y")
FAULTY_FRAMES = {  # DeepPrior++ list (datasets.md 4.4): (subject, gesture) -> frame numbers
    (2, "TIP"): (172, 173, 174),
    (2, "MP"): (173, 174, 175, *range(345, 355), 356, 359, 360),
    (3, "T"): (120, 489),
    (8, "4"): (168,),
}
EXPECTED_TREE = """expected MSRA layout:
<root>/
├── P0/ ... P8/
│   └── 1 ... 9, I, IP, L, MP, RP, T, TIP, Y/
│       ├── 000000_depth.bin ...     6 int32 header (width height left top right bottom) + float32 box
│       └── joint.txt                N, then N lines of 21 x (x y z) mm, y-up, z negative (labels only)
├── center_train_{k}_refined.txt     fold k: frames of the other subjects (subject, gesture, frame order)
└── center_test_{k}_refined.txt      fold k: frames of subject k; x y z mm, y-up, z positive, or 'invalid'
(centre files elsewhere: center_file_train= / center_file_test=)"""
_BIN = re.compile(r"(\d{6})_depth\.bin$")


def list_gesture(folder: Path) -> tuple[list[Path], list[int]]:
    """Sorted .bin frames of one gesture folder -> (paths, frame numbers)."""
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _BIN.match(p.name)))
    return [p for _, p in found], [n for n, _ in found]


def read_joint_file(path: Path) -> np.ndarray:
    """joint.txt -> (N, 21, 3) camera mm y-down, z positive (file: y-up, z negative)."""
    if not path.is_file():
        raise DatasetError(f"msra: label file not found: {path}\n{EXPECTED_TREE}")
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        n = int(lines[0][0])
        vals = np.asarray(lines[1:1 + n], dtype=np.float64) if n else np.zeros((0, 3 * NUM_JOINTS))
    except (ValueError, IndexError):
        raise DatasetError(f"{path}: expected a frame count, then lines of {3 * NUM_JOINTS} numbers") from None
    if vals.shape != (n, 3 * NUM_JOINTS):
        raise DatasetError(f"{path}: {n} frames announced, label block has shape {vals.shape}")
    xyz = vals.reshape(n, NUM_JOINTS, 3)
    xyz[..., 1:] = -xyz[..., 1:]
    return xyz


def build_msra(cfg, split: str, labels: bool) -> CropDataset:
    """MSRA fold cfg.msra_test_subject: train / val (other subjects) or test (the held-out subject)."""
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise DatasetError(f"msra: root not found: {root}\n{EXPECTED_TREE}")
    k = cfg.msra_test_subject
    sub = "test" if split == "test" else "train"
    subjects = [k] if sub == "test" else [s for s in range(NUM_SUBJECTS) if s != k]
    paths, cubes, joints, faulty = [], [], [], []
    for s in subjects:
        for g in GESTURES:
            folder = root / f"P{s}" / g
            if not folder.is_dir():
                raise DatasetError(f"msra: folder not found: {folder}\n{EXPECTED_TREE}")
            ps, nums = list_gesture(folder)
            if labels:
                j = read_joint_file(folder / "joint.txt")
                if len(j) != len(ps) or (nums and nums[-1] != len(ps) - 1):
                    raise DatasetError(f"{folder}: {len(ps)} .bin frames (numbered up to {nums[-1] if nums else '-'}) "
                                       f"but joint.txt lists {len(j)}")
                joints.append(j)
            bad = set(FAULTY_FRAMES.get((s, g), ())) if sub == "train" else set()
            faulty += [n in bad for n in nums]
            paths += ps
            cube = cfg.cube_mm if sub == "test" else [MSRA_SUBJECT_CUBES_MM[s]] * 3
            cubes += [cube] * len(ps)
    K = nyu_intrinsics(cfg)
    cfile = split_center_file(cfg, sub, root / f"center_{sub}_{k}_refined.txt", "msra", EXPECTED_TREE)
    centers, valid = load_centers(cfile, CENTER_CONVENTIONS["msra"], K, cfg.image_width, cfg.image_height,
                                  getattr(cfg, "center_format", "auto"))
    if len(centers) != len(paths):
        raise DatasetError(f"{cfile}: {len(centers)} centre lines for {len(paths)} frames of subjects {subjects}")
    ids = np.arange(len(paths), dtype=np.int64)
    table = FrameTable(paths, ids, centers, np.asarray(cubes, dtype=np.float64),
                       np.concatenate(joints) if labels else None)
    table = drop_invalid(table, valid, f"msra fold {k} {sub}")
    keep = ~np.asarray(faulty, dtype=bool)[table.ids]
    table = table.subset(np.flatnonzero(keep))
    table = select_split(table, split, cfg.val_fraction, cfg.max_frames)
    return crop_dataset(cfg, table, read_msra_bin, K, split, f"msra fold {k} {split}")
