"""ICVL in its original layout (datasets.md 3), mirrored to a right hand about c_x (spec 1.5).

Frames are enumerated from the depth folders (sorted: capture, then image name), so the frame list is
the same with and without labels and the label files are opened only when labels are requested (R9).
Training keeps the original captures only (top-level folder names longer than 6 characters); the
test order (test_seq_1 then test_seq_2, images sorted) is the official test-list order.
Centre files must list one line per enumerated frame in that order.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from datasets.centers import CENTER_CONVENTIONS, load_centers, split_center_file
from datasets.common import (CropDataset, crop_dataset, FrameTable, drop_invalid,
                             select_split, uvd_px_to_xyz)
from datasets.depth_io import DatasetError, read_png16
from datasets.nyu import nyu_intrinsics

NUM_JOINTS = 16
TEST_SEQUENCES = ("test_seq_1", "test_seq_2")
EXPECTED_TREE = """expected ICVL layout:
<root>/
├── Training/
│   ├── labels.txt                   '<capture>/image_XXXX.png u1 v1 d1 ... u16 v16 d16' per line
│   ├── center_train_refined.txt     V2V centres x y z (mm, y-down, made with f = 241.42) or 'invalid',
│   │                                one line per original frame in sorted (capture, image) order
│   └── Depth/<capture>/image_XXXX.png   16-bit PNG mm; captures with names > 6 chars are the originals
└── Testing/
    ├── test_seq_1.txt, test_seq_2.txt
    ├── center_test_refined.txt      one line per test frame, test_seq_1 then test_seq_2
    └── Depth/test_seq_1/image_XXXX.png, Depth/test_seq_2/...
(centre files elsewhere: center_file_train= / center_file_test=)"""


def list_frames(root: Path, sub: str) -> list[str]:
    """Relative frame names ('<folder>/image_XXXX.png') of the train (originals) or test split."""
    depth = root / ("Testing" if sub == "test" else "Training") / "Depth"
    if not depth.is_dir():
        raise DatasetError(f"icvl: folder not found: {depth}\n{EXPECTED_TREE}")
    if sub == "test":
        folders = [depth / s for s in TEST_SEQUENCES]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise DatasetError(f"icvl: folder not found: {missing[0]}\n{EXPECTED_TREE}")
    else:
        folders = sorted(f for f in depth.iterdir() if f.is_dir() and len(f.name) > 6)
    names = [f"{f.name}/{p.name}" for f in folders for p in sorted(f.glob("*.png"))]
    if not names:
        raise DatasetError(f"icvl: no depth PNGs under {depth}\n{EXPECTED_TREE}")
    return names


def parse_label_lines(text: str, path: Path) -> dict[str, np.ndarray]:
    """ICVL label text -> {relative name: (16, 3) u v d}; any line ending (CR CR LF) is accepted."""
    out = {}
    for k, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 1 + 3 * NUM_JOINTS:
            raise DatasetError(f"{path}: line {k} has {len(parts) - 1} values, expected {3 * NUM_JOINTS}")
        try:
            out[parts[0]] = np.asarray(parts[1:], dtype=np.float64).reshape(NUM_JOINTS, 3)
        except ValueError:
            raise DatasetError(f"{path}: line {k} holds a non-number") from None
    return out


def read_labels(root: Path, sub: str, names: list[str]) -> np.ndarray:
    """Labels of the listed frames (N, 16, 3) u v d, looked up by name."""
    files = [root / "Testing" / f"{s}.txt" for s in TEST_SEQUENCES] if sub == "test" \
        else [root / "Training" / "labels.txt"]
    table: dict[str, np.ndarray] = {}
    for f in files:
        if not f.is_file():
            raise DatasetError(f"icvl: label file not found: {f}\n{EXPECTED_TREE}")
        table.update(parse_label_lines(f.read_text(), f))
    missing = [n for n in names if n not in table]
    if missing:
        raise DatasetError(f"icvl: {len(missing)} frames have no label line in {', '.join(map(str, files))}; "
                           f"first: {missing[:3]}")
    return np.stack([table[n] for n in names])


def build_icvl(cfg, split: str, labels: bool) -> CropDataset:
    """ICVL dataset of split train / val / test (val carved from the training originals)."""
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise DatasetError(f"icvl: root not found: {root}\n{EXPECTED_TREE}")
    sub = "test" if split == "test" else "train"
    names = list_frames(root, sub)
    base = root / ("Testing" if sub == "test" else "Training")
    paths = [base / "Depth" / n for n in names]
    K = nyu_intrinsics(cfg)
    cfile = split_center_file(cfg, sub, base / f"center_{sub}_refined.txt", "icvl", EXPECTED_TREE)
    centers, valid = load_centers(cfile, CENTER_CONVENTIONS["icvl"], K, cfg.image_width, cfg.image_height,
                                  getattr(cfg, "center_format", "auto"))
    if len(centers) != len(names):
        raise DatasetError(f"{cfile}: {len(centers)} centre lines for {len(names)} {sub} frames (one line per "
                           f"frame in sorted order expected)")
    joints = None
    if labels:
        uvd = read_labels(root, sub, names)
        joints = uvd_px_to_xyz(uvd, K)  # mirrored with the frames by CropDataset
    ids = np.arange(len(names), dtype=np.int64)
    cubes = np.tile(np.asarray(cfg.cube_mm, dtype=np.float64), (len(names), 1))
    table = drop_invalid(FrameTable(paths, ids, centers, cubes, joints), valid, f"icvl {sub}")
    table = select_split(table, split, cfg.val_fraction, cfg.max_frames)
    return crop_dataset(cfg, table, partial(read_png16, raw=True), K, split, f"icvl {split}")
