"""Depth streams for inference: a folder of frames, or the DHG-14/28 and SHREC'17 layouts.

A `Sequence` lists its frame files in order with the sensor intrinsics; `read_frame` returns depth
in mm (float32, 0 = missing) in the sensor's own image (mirroring is the caller's choice).

Layouts (datasets.md 6):
* folder: `*.png` (16-bit mm or NYU-style RGB with depth = 256*G + B) or `*.npy`, sorted by name;
  intrinsics from the config or from `intrinsics.yaml` / `intrinsics.json` beside the frames
  (keys fx, fy, cx, cy, optional width, height).
* DHG-14/28: `gesture_g/finger_f/subject_s/essai_e/depth_{k}.png` (k = 1..), trimmed to the
  start..end frames of `informations_troncage_sequences.txt` when that file exists at the root.
* SHREC'17: same folders, `{k}_depth.png` (k = 0..).
Both gesture datasets come from an Intel RealSense (463.889, 463.889, 320, 240), 640 x 480.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from datasets.depth_io import read_depth, read_npy, read_nyu_depth, read_png16

GESTURE_INTRINSICS = (463.889, 463.889, 320.0, 240.0)
SEQUENCE_DIR_PATTERN = "gesture_*/finger_*/subject_*/essai_*"
FOLDER_LAYOUT_HELP = """expected a folder of depth frames, e.g.
  <export_input>/
    frame_0001.png   (16-bit PNG in mm, or NYU-style RGB PNG with depth = 256*G + B)
    frame_0002.png   (or .npy arrays in mm)
    intrinsics.yaml  (optional: fx, fy, cx, cy; otherwise fx= fy= cx= cy= from the config)"""
GESTURE_LAYOUT_HELP = """expected the DHG-14/28 or SHREC'17 tree, e.g.
  <export_input>/gesture_1/finger_1/subject_1/essai_1/depth_1.png ...   (DHG: depth_{k}.png, k >= 1)
  <export_input>/gesture_1/finger_1/subject_1/essai_1/0_depth.png ...   (SHREC: {k}_depth.png, k >= 0)"""


@dataclass
class Sequence:
    """One depth sequence.  frame_ids are the dataset's own frame numbers."""
    name: str
    folder: Path
    frames: list[Path]
    frame_ids: list[int]
    intrinsics: tuple[float, float, float, float]
    layout: str
    extra: dict = field(default_factory=dict)


def read_frame(path: Path, fmt: str = "auto") -> np.ndarray:
    """Depth frame -> float32 (H, W) mm, 0 = missing.  fmt: auto, png16, nyu_rgb, npy."""
    readers = {"auto": read_depth, "png16": read_png16, "nyu_rgb": read_nyu_depth, "npy": read_npy}
    return readers[fmt](path)


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _read_intrinsics_file(folder: Path) -> tuple[float, float, float, float] | None:
    for name in ("intrinsics.yaml", "intrinsics.yml", "intrinsics.json"):
        f = folder / name
        if f.is_file():
            try:
                data = json.loads(f.read_text()) if f.suffix == ".json" else yaml.safe_load(f.read_text())
                return tuple(float(data[k]) for k in ("fx", "fy", "cx", "cy"))  # type: ignore[return-value]
            except (KeyError, TypeError, ValueError, yaml.YAMLError, json.JSONDecodeError) as e:
                raise ValueError(f"intrinsics file {f} must hold numbers fx, fy, cx, cy ({e})") from None
    return None


def folder_sequence(root: str | Path, intrinsics: tuple[float, float, float, float]) -> Sequence:
    """A folder of frames; intrinsics from a file beside them, else the given ones."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"export_input '{root}' is not a folder; {FOLDER_LAYOUT_HELP}")
    frames = sorted([p for p in root.iterdir() if p.suffix in (".png", ".npy")], key=_natural_key)
    if not frames:
        raise FileNotFoundError(f"no .png or .npy frames in '{root}'; {FOLDER_LAYOUT_HELP}")
    from_file = _read_intrinsics_file(root)
    return Sequence(root.name, root, frames, list(range(len(frames))), from_file or intrinsics, "folder",
                    {"intrinsics_from": "file" if from_file else "config"})


def _trim_table(root: Path) -> dict[tuple[int, int, int, int], tuple[int, int]]:
    f = root / "informations_troncage_sequences.txt"
    table = {}
    if f.is_file():
        for line in f.read_text().split("\n"):
            vals = line.split()
            if len(vals) == 6:
                g, fi, s, e, start, end = map(int, vals)
                table[(g, fi, s, e)] = (start, end)
    return table


def gesture_sequences(root: str | Path, layout: str) -> list[Sequence]:
    """All DHG ('dhg') or SHREC ('shrec') sequences under root, in g, f, s, e order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"export_input '{root}' is not a folder; {GESTURE_LAYOUT_HELP}")
    folders = sorted(root.glob(SEQUENCE_DIR_PATTERN),
                     key=lambda p: [int(x.split("_")[1]) for x in p.relative_to(root).parts])
    if not folders:
        raise FileNotFoundError(f"no gesture_*/finger_*/subject_*/essai_* folders under '{root}'; {GESTURE_LAYOUT_HELP}")
    trims = _trim_table(root) if layout == "dhg" else {}
    pattern = re.compile(r"depth_(\d+)\.png$" if layout == "dhg" else r"(\d+)_depth\.png$")
    out = []
    for folder in folders:
        key = tuple(int(x.split("_")[1]) for x in folder.relative_to(root).parts)
        found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.search(p.name)))
        if key in trims:  # DHG trimming: frames start..end (1-based, inclusive)
            start, end = trims[key]
            found = [(k, p) for k, p in found if start <= k <= end]
        if not found:
            raise FileNotFoundError(f"no depth frames in {folder}; {GESTURE_LAYOUT_HELP}")
        out.append(Sequence(str(folder.relative_to(root)), folder, [p for _, p in found],
                            [k for k, _ in found], GESTURE_INTRINSICS, layout, {"key": key}))
    return out


PRED_WORLD_FILE = "skeletons_world_pred.txt"
PRED_IMAGE_FILE = "skeletons_image_pred.txt"


def write_skeletons(folder: Path, world_m: np.ndarray, image_px: np.ndarray) -> tuple[Path, Path]:
    """Write one line per frame: 22 x (x, y, z) metres and 22 x (u, v) px (DHG/SHREC format)."""
    w, i = folder / PRED_WORLD_FILE, folder / PRED_IMAGE_FILE
    np.savetxt(w, world_m.reshape(len(world_m), -1), fmt="%.8f")
    np.savetxt(i, image_px.reshape(len(image_px), -1), fmt="%.4f")
    return w, i


def read_skeletons(path: Path, dims: int) -> np.ndarray:
    """A skeleton file -> (N, 22, dims)."""
    arr = np.loadtxt(path, ndmin=2)
    if arr.shape[1] != 22 * dims:
        raise ValueError(f"{path}: {arr.shape[1]} values per line; expected {22 * dims}")
    return arr.reshape(len(arr), 22, dims)
