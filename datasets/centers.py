"""Refined hand-centre files: parsing and conversion to the project convention (datasets.md 2.5, 3.1, 4.4).

Every file holds one line per frame, either `x y z` (mm) or `u v d` (px, px, mm), or the word
`invalid` when no usable hand was found.  Output: camera mm, x right, **y down**, z forward
(render/camera.py), plus a validity mask; invalid lines are counted and logged.

Provenance and convention of each supported file (R5):

| dataset | file | produced by | stored convention | conversion |
|---|---|---|---|---|
| nyu / simreal | `center_{train,test}_refined.txt` | V2V-PoseNet release (DeepPrior++-style refinement net), Kinect 1 | xyz mm, y-up | y -> -y |
| nyu / simreal | same names, uvd variant | the same centres projected with 588.03 / 587.07 | u v d | back-project with K |
| nyu | `center_{train,test}_{0,1,2}_refined.txt` | DSF authors, per view, provenance undocumented | xyz mm, y-down | none |
| icvl | `center_{train,test}_refined.txt` | V2V-PoseNet release | xyz mm, y-down, made with f = 241.42 | project with 241.42, back-project with K |
| msra | `center_{train,test}_{k}_refined.txt` | V2V-PoseNet release, fold k | xyz mm, y-up, z positive | y -> -y |

The uvd variant is told apart from xyz by value ranges: uvd when no value of the first two columns is
negative and all lie within the image (u in [0, W], v in [0, H]) while some row read as xyz would project
outside the image; xyz files hold signed millimetres.  Files that fit both readings (a few frames all in
one image quadrant) are read as xyz with a warning; `fmt` / cfg.center_format decides explicitly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datasets.depth_io import DatasetError
from render.camera import backproject, project

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CenterConvention:
    """How a centre file's xyz relates to camera mm y-down.

    y_up: the file stores -y.  source_K: (fx, fy, cx, cy) the xyz was made with, when it differs
    from the project's intrinsics (re-projected with it, back-projected with the project's K).
    """
    y_up: bool
    source_K: tuple[float, float, float, float] | None = None


CENTER_CONVENTIONS = {
    "nyu": CenterConvention(y_up=True),
    "nyu_dsf_view": CenterConvention(y_up=False),
    "icvl": CenterConvention(y_up=False, source_K=(241.42, 241.42, 160.0, 120.0)),
    "msra": CenterConvention(y_up=True),
}


def parse_center_lines(text: str, path: str | Path = "<text>") -> tuple[np.ndarray, np.ndarray]:
    """Centre-file text -> (values (N, 3) float64, NaN on invalid lines; valid (N,) bool).

    Empty lines (e.g. a trailing newline, CR/LF ends) are skipped; `invalid` lines keep their slot.
    """
    rows, valid = [], []
    for k, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if parts[0].lower() == "invalid":
            rows.append((np.nan, np.nan, np.nan))
            valid.append(False)
            continue
        try:
            vals = tuple(float(v) for v in parts[:3])
        except ValueError:
            raise DatasetError(f"{path}: line {k} is not three numbers or 'invalid': {line.strip()[:80]!r}") from None
        if len(vals) != 3 or not np.all(np.isfinite(vals)):
            raise DatasetError(f"{path}: line {k} is not three finite numbers: {line.strip()[:80]!r}")
        rows.append(vals)
        valid.append(True)
    if not rows:
        raise DatasetError(f"{path}: centre file is empty")
    return np.asarray(rows, dtype=np.float64), np.asarray(valid, dtype=bool)


def convert_centers(values: np.ndarray, convention: CenterConvention, K: np.ndarray,
                    is_uvd: bool) -> np.ndarray:
    """File values (N, 3) -> camera mm y-down (N, 3) with the project's intrinsics K (3, 3)."""
    Kt = torch.as_tensor(K, dtype=torch.float64)
    v = torch.as_tensor(values, dtype=torch.float64)
    if is_uvd:
        return backproject(v, Kt).numpy()
    xyz = v.clone()
    if convention.y_up:
        xyz[:, 1] = -xyz[:, 1]
    if convention.source_K is not None:
        fx, fy, cx, cy = convention.source_K
        Ks = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]], dtype=torch.float64)
        xyz = backproject(project(xyz, Ks), Kt)
    return xyz.numpy()


def looks_like_uvd(values: np.ndarray, valid: np.ndarray, width: int, height: int,
                   convention: CenterConvention, K: np.ndarray, path: str | Path = "<text>") -> bool:
    """uvd variant when every valid row has 0 <= u <= width, 0 <= v <= height, d > 0 and at least one
    row, read as xyz, would project outside the image.  When every row fits both readings (small files)
    the V2V xyz format is assumed, with a warning (set center_format to decide)."""
    v = values[valid]
    if v.size == 0:
        return False
    in_range = np.all((v[:, 0] >= 0) & (v[:, 0] <= width) & (v[:, 1] >= 0) & (v[:, 1] <= height) & (v[:, 2] > 0))
    if not in_range:
        return False
    uv = project(torch.as_tensor(convert_centers(v, convention, K, False)), torch.as_tensor(K, dtype=torch.float64))
    outside = (uv[:, 0] < -0.5) | (uv[:, 0] > width - 0.5) | (uv[:, 1] < -0.5) | (uv[:, 1] > height - 0.5)
    if bool(outside.any()):
        return True
    log.warning("%s: every centre line reads as valid uvd and as valid xyz; assuming xyz (V2V format). "
                "Set center_format=uvd if the file holds u v d.", path)
    return False


def split_center_file(cfg, split: str, default: str | Path, dataset: str, layout: str) -> Path:
    """The refined-centre file of `split` ('test' or a training split): cfg.center_file_test /
    cfg.center_file_train when set, else `default`; a missing file is a DatasetError naming the
    expected `layout`."""
    path = Path((cfg.center_file_test if split == "test" else cfg.center_file_train) or default)
    if not path.is_file():
        raise DatasetError(f"{dataset}: centre file not found: {path}\n{layout}")
    return path


def load_centers(path: str | Path, convention: CenterConvention, K: np.ndarray, width: int, height: int,
                 fmt: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Read a refined-centre file -> (centres (N, 3) camera mm y-down, NaN where invalid; valid (N,)).

    fmt: "auto" (uvd vs xyz by value ranges), "xyz" or "uvd".
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"centre file not found: {p}")
    values, valid = parse_center_lines(p.read_text(), p)
    if fmt not in ("auto", "xyz", "uvd"):
        raise ValueError(f"fmt must be auto, xyz or uvd, got {fmt!r}")
    is_uvd = looks_like_uvd(values, valid, width, height, convention, K, p) if fmt == "auto" else fmt == "uvd"
    out = convert_centers(values, convention, K, is_uvd)
    n_bad = int((~valid).sum())
    if n_bad:
        first = np.flatnonzero(~valid)[:5].tolist()
        log.warning("%s: %d 'invalid' centre lines; their frames are skipped (first 0-based lines: %s)",
                    p, n_bad, first)
    return out, valid
