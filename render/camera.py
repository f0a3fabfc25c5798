"""Camera, crop and normalized-space conventions: the one place they are defined.

Every module of the project (datasets, renderer, network heads, losses, export) converts
coordinates through these functions and nowhere else.

Conventions
-----------
* Camera frame: x right, y down, z forward, millimetres.
* Pixel (row r, column c) is centred at u = c, v = r.  Projection: u = fx*x/z + cx,
  v = fy*y/z + cy with positive fy.  Intrinsics K = [[fx,0,cx],[0,fy,cy],[0,0,1]].
* Crop transform A (3x3) maps frame pixel coordinates to crop pixel coordinates of an
  S x S crop (S = 128):  u' = s*(u - cu) + (S-1)/2 with s = (S/2)/w, w = max over x, y of
  (b/2)*f/Cz, (cu, cv) = projection of the crop centre C.  The window's long side maps onto
  the crop's outer pixel edges (-0.5 and S-0.5).
* Crop intrinsics K_crop = A @ K: a mesh projected with K_crop lands directly in the crop.
* Normalized uvd: u_n = (2u'+1)/S - 1 (crop pixel centres at (2c+1)/S - 1, edges at +-1),
  d_n = (z - Cz)/(bz/2).  Normalized xyz: X_n = (X - C)/(b/2) per axis.
* Normalized depth crop: background (missing or farther than Cz + bz/2) is +1, nearer than
  Cz - bz/2 is clamped to -1.

All torch functions broadcast over leading batch dimensions and keep dtype and device.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

CROP_SIZE = 128


def make_intrinsics(fx: float, fy: float, cx: float, cy: float,
                    dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Pinhole matrix K (3, 3)."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def project(xyz: Tensor, K: Tensor) -> Tensor:
    """Camera points (..., N, 3) mm -> (u, v, z) (..., N, 3) with K (..., 3, 3)."""
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    z = xyz[..., 2]
    return torch.stack([fx * xyz[..., 0] / z + cx, fy * xyz[..., 1] / z + cy, z], dim=-1)


def backproject(uvz: Tensor, K: Tensor) -> Tensor:
    """(u, v, z) (..., N, 3) -> camera points (..., N, 3) mm; exact inverse of `project`."""
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    z = uvz[..., 2]
    return torch.stack([(uvz[..., 0] - cx) * z / fx, (uvz[..., 1] - cy) * z / fy, z], dim=-1)


def crop_transform(center: Tensor, cube: Tensor, K: Tensor, size: int = CROP_SIZE) -> Tensor:
    """Crop transform A (..., 3, 3) from frame pixels to crop pixels.

    center (..., 3) mm, cube (..., 3) mm (full edge lengths), K (..., 3, 3).
    """
    fx, fy = K[..., 0, 0], K[..., 1, 1]
    cu = fx * center[..., 0] / center[..., 2] + K[..., 0, 2]
    cv = fy * center[..., 1] / center[..., 2] + K[..., 1, 2]
    w = torch.maximum(0.5 * cube[..., 0] * fx, 0.5 * cube[..., 1] * fy) / center[..., 2]
    s = (size / 2.0) / w
    half = (size - 1) / 2.0
    A = torch.zeros(center.shape[:-1] + (3, 3), dtype=center.dtype, device=center.device)
    A[..., 0, 0] = s
    A[..., 1, 1] = s
    A[..., 0, 2] = half - s * cu
    A[..., 1, 2] = half - s * cv
    A[..., 2, 2] = 1.0
    return A


def crop_intrinsics(K: Tensor, A: Tensor) -> Tensor:
    """Intrinsics of the crop camera, K_crop = A @ K (..., 3, 3)."""
    return A @ K


def crop_px_to_norm(uv_px: Tensor, size: int = CROP_SIZE) -> Tensor:
    """Crop pixel coordinates -> normalized [-1, 1] coordinates: (2u'+1)/S - 1."""
    return (2.0 * uv_px + 1.0) / size - 1.0


def norm_to_crop_px(uv_n: Tensor, size: int = CROP_SIZE) -> Tensor:
    """Normalized crop coordinates -> crop pixel coordinates; inverse of `crop_px_to_norm`."""
    return (uv_n + 1.0) * size / 2.0 - 0.5


def xyz_to_norm(xyz_mm: Tensor, center: Tensor, cube: Tensor) -> Tensor:
    """Camera mm (..., N, 3) -> normalized xyz (X - C)/(b/2); center, cube (..., 3)."""
    return (xyz_mm - center[..., None, :]) / (0.5 * cube[..., None, :])


def norm_to_xyz(xyz_n: Tensor, center: Tensor, cube: Tensor) -> Tensor:
    """Normalized xyz (..., N, 3) -> camera mm; inverse of `xyz_to_norm`."""
    return xyz_n * (0.5 * cube[..., None, :]) + center[..., None, :]


def xyz_to_uvd_norm(xyz_mm: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                    size: int = CROP_SIZE) -> Tensor:
    """Camera mm (..., N, 3) -> normalized uvd (..., N, 3) of the crop."""
    uvz = project(xyz_mm, K_crop)
    uv_n = crop_px_to_norm(uvz[..., :2], size)
    d_n = (uvz[..., 2] - center[..., None, 2]) / (0.5 * cube[..., None, 2])
    return torch.cat([uv_n, d_n[..., None]], dim=-1)


def uvd_norm_to_xyz(uvd_n: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                    size: int = CROP_SIZE) -> Tensor:
    """Normalized uvd (..., N, 3) -> camera mm (..., N, 3); inverse of `xyz_to_uvd_norm`."""
    uv_px = norm_to_crop_px(uvd_n[..., :2], size)
    z = center[..., None, 2] + uvd_n[..., 2] * (0.5 * cube[..., None, 2])
    return backproject(torch.cat([uv_px, z[..., None]], dim=-1), K_crop)


def uvd_norm_to_xyz_norm(uvd_n: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                         size: int = CROP_SIZE) -> Tensor:
    """Normalized uvd -> normalized xyz (rule 1.3 of the spec)."""
    return xyz_to_norm(uvd_norm_to_xyz(uvd_n, center, cube, K_crop, size), center, cube)


def xyz_norm_to_uvd_norm(xyz_n: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                         size: int = CROP_SIZE) -> Tensor:
    """Normalized xyz -> normalized uvd."""
    return xyz_to_uvd_norm(norm_to_xyz(xyz_n, center, cube), center, cube, K_crop, size)


def pixel_grid_norm(size: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Normalized (u_n, v_n) of every pixel centre of a size x size grid: (size, size, 2).

    Cell (i, j) -> ((2j+1)/size - 1, (2i+1)/size - 1); valid for the crop and any feature grid.
    """
    t = (2.0 * torch.arange(size, dtype=dtype, device=device) + 1.0) / size - 1.0
    v, u = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([u, v], dim=-1)


def normalize_depth(depth_mm: Tensor, center_z: Tensor, cube_z: Tensor) -> Tensor:
    """Depth crop in mm (B, ..., H, W) (0 = missing) -> normalized depth, background +1.

    center_z, cube_z: (B,) mm.  Pixels farther than Cz + bz/2 or missing become +1; nearer than
    Cz - bz/2 are clamped to -1 (no gradient through clamped pixels).
    """
    shape = (-1,) + (1,) * (depth_mm.dim() - 1)
    cz, half = center_z.reshape(shape), 0.5 * cube_z.reshape(shape)
    d = (depth_mm - cz) / half
    background = (depth_mm <= 0) | (d > 1.0)
    return torch.where(background, torch.ones_like(d), d.clamp(min=-1.0))


def denormalize_depth(depth_n: Tensor, center_z: Tensor, cube_z: Tensor, fg_threshold: float) -> Tensor:
    """Normalized depth -> mm, 0 where the pixel is background (>= fg_threshold)."""
    shape = (-1,) + (1,) * (depth_n.dim() - 1)
    mm = center_z.reshape(shape) + depth_n * 0.5 * cube_z.reshape(shape)
    return torch.where(depth_n < fg_threshold, mm, torch.zeros_like(mm))


def crop_points_norm(depth_n: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                     fg_threshold: float) -> tuple[Tensor, Tensor]:
    """Point cloud of normalized crops.

    depth_n (B, 1, S, S) -> points (B, S*S, 3) in normalized xyz and foreground mask (B, S*S)
    (pixels with d_n < fg_threshold).  Background pixels carry meaningless points.
    """
    B, _, S, _ = depth_n.shape
    grid = pixel_grid_norm(S, depth_n.dtype, depth_n.device).reshape(1, S * S, 2).expand(B, -1, -1)
    d = depth_n.reshape(B, S * S, 1)
    pts = uvd_norm_to_xyz_norm(torch.cat([grid, d], dim=-1), center, cube, K_crop, S)
    return pts, d[..., 0] < fg_threshold


def crop_frame_nearest(frame: np.ndarray, A: np.ndarray, size: int = CROP_SIZE,
                       fill: float = 0.0) -> np.ndarray:
    """Resample a full frame (H, W) into a size x size crop with crop transform A (3, 3).

    Crop pixel (r, c) takes the frame pixel nearest to A^-1 (c, r, 1) (round half up);
    positions outside the frame get `fill` (0 = missing depth).
    """
    H, W = frame.shape
    s, tu, tv = A[0, 0], A[0, 2], A[1, 2]
    idx = np.arange(size, dtype=np.float64)
    cols = np.floor((idx - tu) / s + 0.5).astype(np.int64)
    rows = np.floor((idx - tv) / s + 0.5).astype(np.int64)
    ok_c, ok_r = (cols >= 0) & (cols < W), (rows >= 0) & (rows < H)
    out = frame[np.clip(rows, 0, H - 1)[:, None], np.clip(cols, 0, W - 1)[None, :]].astype(np.float32)
    out[~(ok_r[:, None] & ok_c[None, :])] = fill
    return out


def crop_frame_mask(A: Tensor, frame_hw: tuple[int, int], size: int = CROP_SIZE) -> Tensor:
    """Boolean (..., size, size): crop pixels whose frame position lies inside the frame.

    Used to blank rendered crops where an off-axis crop window leaves the sensor frame.
    """
    H, W = frame_hw
    idx = torch.arange(size, dtype=A.dtype, device=A.device)
    s = A[..., 0, 0, None]
    u = (idx - A[..., 0, 2, None]) / s
    v = (idx - A[..., 1, 2, None]) / s
    ok_u = (u >= -0.5) & (u <= W - 0.5)
    ok_v = (v >= -0.5) & (v <= H - 0.5)
    return ok_v[..., :, None] & ok_u[..., None, :]
