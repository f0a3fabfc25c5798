"""Readers and writers of evaluation results (dsf-method.md 11.4; datasets.md 7.1).

* u v d files: one line per frame, whitespace-separated `u v d` per joint (px, px, mm), 3 decimals;
  CRLF line ends and trailing spaces are tolerated when reading.
* curve CSV / PNG, metrics.json, parameter lines, OBJ meshes and overlay images.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


class ResultFileError(ValueError):
    """A malformed result file; the message names the file and the 1-based line."""


def read_uvd_file(path: str | Path, num_joints: int | None = None) -> np.ndarray:
    """Read a u v d file -> (N, J, 3) float64.

    Every non-empty line must hold 3*J numbers with the same J on every line (J = num_joints when
    given).  Blank lines at the end are ignored; a blank line in between is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file not found: {path}")
    with path.open(newline="") as f:  # keep CRs: they are whitespace to split(), never line breaks
        lines = f.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    tokens, width = [], None
    expected = None if num_joints is None else 3 * num_joints
    for i, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            raise ResultFileError(f"{path}, line {i}: empty line")
        want = expected if expected is not None else width
        if want is None:
            if len(parts) % 3:
                raise ResultFileError(f"{path}, line {i}: {len(parts)} values is not a multiple of 3 (u v d per joint)")
            width = len(parts)
        elif len(parts) != want:
            raise ResultFileError(f"{path}, line {i}: {len(parts)} values ({len(parts) / 3:g} joints); "
                                  f"expected {want} ({want // 3} joints x u v d)")
        tokens.extend(parts)
    if not tokens:
        raise ResultFileError(f"{path}: no frames")
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        for i, line in enumerate(lines, start=1):
            try:
                np.array(line.split(), dtype=np.float64)
            except ValueError:
                raise ResultFileError(f"{path}, line {i}: not a list of numbers: '{line.strip()[:60]}'") from None
        raise
    return values.reshape(len(lines), -1, 3)


def write_uvd_file(path: str | Path, uvd: np.ndarray, decimals: int = 3) -> Path:
    """Write (N, J, 3) u v d values, one frame per line, `decimals` places, LF line ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = np.asarray(uvd, dtype=np.float64).reshape(len(uvd), -1)
    fmt = f"%.{decimals}f"
    with path.open("w") as f:
        for row in flat:
            f.write(" ".join(fmt % v for v in row) + "\n")
    return path


def write_rows(path: str | Path, rows: np.ndarray, decimals: int = 6) -> Path:
    """Write a (N, K) array as N lines of K space-separated numbers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = f"%.{decimals}f"
    with path.open("w") as f:
        for row in np.asarray(rows, dtype=np.float64):
            f.write(" ".join(fmt % v for v in row) + "\n")
    return path


def write_curves_csv(path: str | Path, columns: dict[str, np.ndarray]) -> Path:
    """CSV with `threshold_mm` then one column per curve (fractions 0..1), rows th = 0..T-1."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    n = len(next(iter(columns.values())))
    with path.open("w") as f:
        f.write(",".join(["threshold_mm"] + names) + "\n")
        for t in range(n):
            f.write(",".join([str(t)] + [f"{float(columns[k][t]):.6f}" for k in names]) + "\n")
    return path


def _figure(size: tuple[float, float]):
    """A matplotlib Figure on the Agg canvas (no pyplot: no global state, fast import)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(path: str | Path, columns: dict[str, np.ndarray], title: str,
                ylabel: str = "fraction of frames within distance (%)") -> Path:
    """PNG of fraction-within-distance curves (x: 0..T-1 mm, y: percent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure((6, 4.5))
    ax = fig.add_axes((0.11, 0.11, 0.86, 0.82))
    for name, frac in columns.items():
        frac = np.asarray(frac)
        ax.plot(np.arange(len(frac)), 100.0 * frac, label=name)
    ax.set_xlabel("distance threshold (mm)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xlim(0, len(frac) - 1)
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path)
    return path


def write_json(path: str | Path, data: dict) -> Path:
    """Write JSON (NaN/inf become null)."""
    def clean(o):
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, float)):
            return float(o) if math.isfinite(o) else None
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.ndarray):
            return clean(o.tolist())
        return o
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=1))
    return path


def write_obj(path: str | Path, verts_mm: np.ndarray, faces: np.ndarray) -> Path:
    """Wavefront OBJ of one mesh: verts (V, 3) mm, faces (F, 3) 0-based."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for v in np.asarray(verts_mm, dtype=np.float64):
            f.write(f"v {v[0]:.4f} {v[1]:.4f} {v[2]:.4f}\n")
        for t in np.asarray(faces, dtype=np.int64) + 1:
            f.write(f"f {t[0]} {t[1]} {t[2]}\n")
    return path


def save_overlay(path: str | Path, depth_n: np.ndarray, joints_px: dict[str, np.ndarray],
                 parents: tuple[int, ...] | None = None, title: str = "") -> Path:
    """PNG of a normalized depth crop (S, S) with joint sets {label: (J, 2) crop px (u, v)} drawn."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure((3.2, 3.2))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    ax.imshow(np.asarray(depth_n), cmap="gray", vmin=-1, vmax=1)
    colors = ("red", "cyan", "yellow", "lime")
    for k, (label, uv) in enumerate(joints_px.items()):
        uv = np.asarray(uv)
        c = colors[k % len(colors)]
        if parents is not None and len(parents) == len(uv):
            for j, p in enumerate(parents):
                if p >= 0:
                    ax.plot([uv[j, 0], uv[p, 0]], [uv[j, 1], uv[p, 1]], color=c, linewidth=0.8)
        ax.scatter(uv[:, 0], uv[:, 1], s=6, color=c, label=label)
    ax.set_xlim(-0.5, depth_n.shape[1] - 0.5)
    ax.set_ylim(depth_n.shape[0] - 0.5, -0.5)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=7)
    ax.legend(loc="lower left", fontsize=5)
    fig.savefig(path)
    return path
