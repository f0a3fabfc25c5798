"""Dense offset + heat maps of the PWE branch (spec 5.3): one codec for targets, decoding and the
rendered-pose encoding of the refinement stage.

Layout of a map tensor (B, 4J, F, F): channel 3k + a (a = u, v, d) is the unit offset of joint k,
channel 3J + k its closeness heat.  Cell (i, j) sits at p_ij = (u_n, v_n, d_ij) with (u_n, v_n) the
normalized centre of grid cell (i, j) (`camera.pixel_grid_norm`) and d_ij the normalized depth of
reference-crop pixel (s*i, s*j), s = S / F (nearest-neighbour downsampling, as the original).
Foreground cells: d_ij < fg_threshold.

Encoding: delta = J_k - p_ij, rho = sqrt(|delta|^2 + 1e-8), h = (kappa - rho)/kappa,
valid = (h >= 0) & foreground; offset = valid * delta / rho, heat = valid * h.
Decoding: h~ = h*m, o~ = o*m, w = softmax_cells(T * h~), vote = p + o~ * kappa * (1 - h~),
J_k = sum w * vote.  Everything is differentiable (the refinement stage encodes a rendering).
"""
from __future__ import annotations

import torch
from torch import Tensor

from render.camera import pixel_grid_norm

RHO_EPS = 1e-8  # keeps d rho / d delta finite when a joint sits exactly on a cell position


def reference_cells(ref_depth: Tensor, map_size: int, fg_threshold: float) -> tuple[Tensor, Tensor]:
    """Cell positions and foreground of the map grid.

    ref_depth (B, 1, S, S) normalized crop -> positions (B, F*F, 3) nu, foreground (B, F*F) float.
    """
    B, _, S, _ = ref_depth.shape
    stride = S // map_size
    if stride * map_size != S:
        raise ValueError(f"crop size {S} is not a multiple of the map size {map_size}")
    d = ref_depth[:, 0, ::stride, ::stride].reshape(B, map_size * map_size, 1)
    uv = pixel_grid_norm(map_size, ref_depth.dtype, ref_depth.device).reshape(1, -1, 2).expand(B, -1, -1)
    return torch.cat([uv, d], dim=-1), (d[..., 0] < fg_threshold).to(ref_depth.dtype)


def encode(joints_uvd: Tensor, ref_depth: Tensor, map_size: int, kappa: float, fg_threshold: float) -> Tensor:
    """Joints (B, J, 3) normalized uvd + reference crop (B, 1, S, S) -> maps (B, 4J, F, F)."""
    B, J, _ = joints_uvd.shape
    cells, fg = reference_cells(ref_depth, map_size, fg_threshold)             # (B,N,3), (B,N)
    delta = joints_uvd[:, :, :, None] - cells.transpose(1, 2)[:, None]          # (B,J,3,N): channel 3k+a
    rho = torch.sqrt(delta.square().sum(dim=2) + RHO_EPS)                       # (B,J,N)
    heat = (kappa - rho) / kappa
    valid = (heat >= 0).to(heat.dtype) * fg[:, None, :]
    offset = delta * (valid / rho)[:, :, None]                                  # (B,J,3,N)
    heat = valid * heat                                                         # channel 3J + k
    return torch.cat([offset.reshape(B, 3 * J, map_size, map_size), heat.reshape(B, J, map_size, map_size)], dim=1)


def decode(maps: Tensor, ref_depth: Tensor, kappa: float, temperature: float, fg_threshold: float) -> Tensor:
    """Maps (B, 4J, F, F) + reference crop (B, 1, S, S) -> joints (B, J, 3) normalized uvd.

    With all-zero maps every cell votes its own position with equal weight: the result is the
    mean of all cell positions (background cells included) - the leakage of the original.
    """
    B, C, F, _ = maps.shape
    J = C // 4
    cells, fg = reference_cells(ref_depth, F, fg_threshold)                     # (B,N,3), (B,N)
    offset = maps[:, :3 * J].reshape(B, J, 3, F * F)                            # (B,J,3,N)
    heat = maps[:, 3 * J:].reshape(B, J, F * F) * fg[:, None, :]                # h~ (B,J,N)
    weight = torch.softmax(temperature * heat, dim=-1)                          # (B,J,N)
    # sum_n w (p + o~ kappa (1 - h~)) with o~ = o * m, without materialising (B,J,N,3)
    pull = weight * (kappa * (1.0 - heat)) * fg[:, None, :]                     # (B,J,N)
    return torch.einsum("bjn,bna->bja", weight, cells) + torch.einsum("bjan,bjn->bja", offset, pull)
