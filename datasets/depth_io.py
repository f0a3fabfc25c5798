"""Depth image readers and writers of the dataset formats (datasets.md 2.2, 3.1, 4.2).

Every reader returns a full frame (H, W) float32 in millimetres (PNG readers: uint16 with raw=True),
0 = missing, and raises
`DatasetError` naming the file when it is missing or unreadable.

Formats
-------
* NYU: 8-bit RGB PNG, depth (mm) = 256*G + B, R unused (0).
* ICVL (and Kinect v2 frames): 16-bit single-channel PNG in mm.
* MSRA: little-endian .bin: six int32 (width, height, left, top, right, bottom), then
  (right-left)*(bottom-top) float32 depths (mm) of the box [left, right) x [top, bottom), row-major.
* .npy: a 2-D array in mm.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class DatasetError(RuntimeError):
    """Bad or missing dataset files; the message names the file (and the expected layout)."""


def _imread(path: str | Path) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"depth image not found: {p}")
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"depth image is corrupt or not an image: {p}")
    return img


def decode_nyu_rgb(img_bgr: np.ndarray) -> np.ndarray:
    """NYU 8-bit image as read by OpenCV (H, W, 3) BGR -> depth (H, W) uint16 mm = 256*G + B."""
    return (img_bgr[..., 1].astype(np.uint16) << 8) | img_bgr[..., 0]


def read_nyu_depth(path: str | Path, raw: bool = False) -> np.ndarray:
    """NYU depth PNG -> (H, W) float32 mm (raw=True: the uint16 mm array, cheaper for cropping)."""
    img = _imread(path)
    if img.ndim != 3 or img.shape[2] < 3 or img.dtype != np.uint8:
        raise DatasetError(f"{path}: expected an 8-bit RGB NYU depth PNG, got shape {img.shape} {img.dtype}")
    d = decode_nyu_rgb(img)
    return d if raw else d.astype(np.float32)


def write_nyu_depth(path: str | Path, depth_mm: np.ndarray) -> None:
    """Write (H, W) depth in mm (rounded, clipped to 0..65535) as an NYU RGB PNG (R = 0)."""
    d = np.clip(np.rint(np.asarray(depth_mm, dtype=np.float64)), 0, 65535).astype(np.uint16)
    bgr = np.stack([(d & 255).astype(np.uint8), (d >> 8).astype(np.uint8), np.zeros_like(d, np.uint8)], -1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), bgr):
        raise DatasetError(f"could not write {path}")


def read_png16(path: str | Path, raw: bool = False) -> np.ndarray:
    """16-bit single-channel PNG in mm -> (H, W) float32 mm (raw=True: the uint16 array)."""
    img = _imread(path)
    if img.ndim != 2 or img.dtype != np.uint16:
        raise DatasetError(f"{path}: expected a 16-bit single-channel depth PNG, got shape {img.shape} {img.dtype}")
    return img if raw else img.astype(np.float32)


def write_png16(path: str | Path, depth_mm: np.ndarray) -> None:
    """Write (H, W) depth in mm as a 16-bit PNG (rounded, clipped to 0..65535)."""
    d = np.clip(np.rint(np.asarray(depth_mm, dtype=np.float64)), 0, 65535).astype(np.uint16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), d):
        raise DatasetError(f"could not write {path}")


def read_msra_bin(path: str | Path) -> np.ndarray:
    """MSRA .bin -> full frame (height, width) float32 mm, zero outside the bounding box."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"depth file not found: {p}")
    raw = p.read_bytes()
    if len(raw) < 24:
        raise DatasetError(f"{p}: truncated MSRA .bin (no 24-byte header)")
    w, h, left, top, right, bottom = (int(v) for v in np.frombuffer(raw[:24], dtype="<i4"))
    if not (0 < w <= 4096 and 0 < h <= 4096 and 0 <= left <= right <= w and 0 <= top <= bottom <= h):
        raise DatasetError(f"{p}: corrupt MSRA header (width {w}, height {h}, box {left},{top},{right},{bottom})")
    n = (right - left) * (bottom - top)
    if len(raw) < 24 + 4 * n:
        raise DatasetError(f"{p}: truncated MSRA .bin ({len(raw)} bytes, box needs {24 + 4 * n})")
    frame = np.zeros((h, w), dtype=np.float32)
    frame[top:bottom, left:right] = np.frombuffer(raw[24:24 + 4 * n], dtype="<f4").reshape(bottom - top, right - left)
    return frame


def write_msra_bin(path: str | Path, depth_mm: np.ndarray) -> None:
    """Write a full frame (H, W) mm as MSRA .bin with the bounding box of its non-zero pixels."""
    d = np.asarray(depth_mm, dtype=np.float32)
    h, w = d.shape
    rows, cols = np.nonzero(d)
    if rows.size:
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    else:
        top = bottom = left = right = 0
    header = np.array([w, h, left, top, right, bottom], dtype="<i4").tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(header + d[top:bottom, left:right].astype("<f4").tobytes())


def read_npy(path: str | Path) -> np.ndarray:
    """.npy 2-D depth in mm -> (H, W) float32."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"depth file not found: {p}")
    try:
        a = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DatasetError(f"{p}: corrupt .npy depth file ({e})") from e
    if a.ndim != 2:
        raise DatasetError(f"{p}: expected a 2-D depth array, got shape {a.shape}")
    return a.astype(np.float32)


def read_depth(path: str | Path) -> np.ndarray:
    """Any supported depth file -> (H, W) float32 mm; PNGs are told apart by channels/bit depth."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".bin":
        return read_msra_bin(p)
    if suffix == ".npy":
        return read_npy(p)
    img = _imread(p)
    if img.ndim == 2 and img.dtype == np.uint16:
        return img.astype(np.float32)
    if img.ndim == 3 and img.dtype == np.uint8 and img.shape[2] >= 3:
        return decode_nyu_rgb(img).astype(np.float32)
    raise DatasetError(f"{p}: unsupported depth image (shape {img.shape}, {img.dtype})")
