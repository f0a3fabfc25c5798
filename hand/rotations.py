"""Rotation helpers: axis-angle <-> matrix and quaternion, composing rotations.

Axis-angle vectors have the angle (rad) as their norm; quaternions are unit (w, x, y, z), w first.
The torch functions broadcast over leading dimensions, keep dtype and device, and are
differentiable (at zero angle too).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues map (..., 3) -> (..., 3, 3), exact and differentiable at zero angle.

    R = I + A K + B K^2 with A = sin t / t and B = (1 - cos t) / t^2, replaced by their Taylor
    series below t^2 = 1e-6 (the division would lose precision and give NaN gradients at 0).
    """
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(rotvec.shape + (3,))
    t2 = (rotvec * rotvec).sum(-1)
    small = t2 < 1e-6
    t2_safe = torch.where(small, torch.ones_like(t2), t2)
    t = t2_safe.sqrt()
    A = torch.where(small, 1 - t2 / 6 + t2 * t2 / 120, torch.sin(t) / t)
    B = torch.where(small, 0.5 - t2 / 24 + t2 * t2 / 720, (1 - torch.cos(t)) / t2_safe)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + A[..., None, None] * K + B[..., None, None] * (K @ K)


def rotation_about_axis(axis: np.ndarray, angle: float | np.ndarray) -> np.ndarray:
    """Rotation matrices about a unit axis (3,) by angle(s) (rad): scalar -> (3, 3), (...,) -> (..., 3, 3)."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.asarray(angle, dtype=np.float64)[..., None, None]
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def axis_angle_to_quat(aa: Tensor) -> Tensor:
    """Axis-angle (..., 3) -> unit quaternion (..., 4) (w first); safe at zero angle."""
    angle = aa.norm(dim=-1, keepdim=True)
    half = 0.5 * angle
    small = angle < 1e-8
    k = torch.where(small, 0.5 - angle * angle / 48.0, torch.sin(half) / angle.clamp_min(1e-8))
    return torch.cat([torch.cos(half), aa * k], dim=-1)


def quat_to_axis_angle(q: Tensor) -> Tensor:
    """Unit quaternion (..., 4) -> axis-angle (..., 3) with angle in [0, pi]."""
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    n = v.norm(dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(n, q[..., :1])
    k = torch.where(n < 1e-8, 2.0 / q[..., :1].clamp_min(1e-8), angle / n.clamp_min(1e-8))
    return v * k


def quat_mul(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a*b (..., 4): the rotation b followed by a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def quat_to_matrix(q: Tensor) -> Tensor:
    """Unit quaternion (..., 4) -> rotation matrix (..., 3, 3)."""
    w, x, y, z = q.unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def compose_global_rotation(omega: Tensor, view_q: Tensor) -> Tensor:
    """omega' (B, 3) with rot(omega') = R(view_q) @ rot(omega); omega (B, 3) axis-angle, view_q (B, 4)."""
    return quat_to_axis_angle(quat_mul(view_q, axis_angle_to_quat(omega)))
