"""T6: dense-map channel layout, round trip, all-zero leakage."""
from __future__ import annotations

import math

import torch

from models import densemap
from render.camera import pixel_grid_norm

S, F, J, KAPPA, T, FG = 128, 64, 21, 0.8, 30.0, 0.99


def _reference_crop(B: int, gen: torch.Generator) -> torch.Tensor:
    """A tilted plate inside a disc of radius 0.6 nu; background +1 elsewhere.  (B, 1, S, S) float64."""
    t = (2.0 * torch.arange(S, dtype=torch.float64) + 1.0) / S - 1.0
    v, u = torch.meshgrid(t, t, indexing="ij")
    out = []
    for _ in range(B):
        a, b, c = (torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * 0.4
        plate = a + b * u + c * v
        out.append(torch.where(u ** 2 + v ** 2 < 0.36, plate, torch.ones_like(plate)))
    return torch.stack(out)[:, None]


def _joints_near_foreground(ref: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Joints within 0.1 nu of a random foreground cell: (B, J, 3)."""
    B = ref.shape[0]
    d = ref[:, 0, ::2, ::2].reshape(B, -1)
    uv = pixel_grid_norm(F, torch.float64).reshape(-1, 2)
    out = torch.empty(B, J, 3, dtype=torch.float64)
    for b in range(B):
        fg = torch.nonzero(d[b] < 0.99)[:, 0]
        pick = fg[torch.randint(len(fg), (J,), generator=gen)]
        cell = torch.cat([uv[pick], d[b, pick, None]], dim=-1)
        step = torch.randn(J, 3, generator=gen, dtype=torch.float64)
        step = step / step.norm(dim=-1, keepdim=True) * 0.099 * torch.rand(J, 1, generator=gen, dtype=torch.float64)
        out[b] = cell + step
    return out


def test_channel_layout_matches_definition():
    gen = torch.Generator().manual_seed(1)
    ref = _reference_crop(1, gen)
    joints = _joints_near_foreground(ref, gen)
    maps = densemap.encode(joints, ref, F, KAPPA, FG)
    assert maps.shape == (1, 4 * J, F, F)
    k, i, j = 7, 30, 35                                     # a foreground cell near the middle
    p = torch.tensor([(2 * j + 1) / F - 1, (2 * i + 1) / F - 1, ref[0, 0, 2 * i, 2 * j].item()], dtype=torch.float64)
    assert p[2] < 0.99
    delta = joints[0, k] - p
    rho = math.sqrt(float((delta ** 2).sum()) + 1e-8)
    h = (KAPPA - rho) / KAPPA
    valid = float(h >= 0)
    for a in range(3):
        assert abs(maps[0, 3 * k + a, i, j].item() - valid * delta[a].item() / rho) < 1e-12
    assert abs(maps[0, 3 * J + k, i, j].item() - valid * h) < 1e-12
    # background cells carry nothing
    bg = ref[0, 0, ::2, ::2] >= 0.99
    assert maps[0][:, bg].abs().max() == 0
    # heats are within [0, 1], unit offsets have norm 1 where valid
    heats = maps[0, 3 * J:]
    assert heats.min() >= 0 and heats.max() <= 1
    norms = maps[0, :3 * J].reshape(J, 3, F, F).norm(dim=1)
    far = (heats > 0) & (heats < 0.99)            # rho > 0.008 nu: the 1e-8 under the root is negligible
    assert torch.allclose(norms[far], torch.ones_like(norms[far]), atol=1e-4)


def test_round_trip_within_1e6():
    gen = torch.Generator().manual_seed(2)
    ref = _reference_crop(3, gen)
    joints = _joints_near_foreground(ref, gen)
    maps = densemap.encode(joints, ref, F, KAPPA, FG)
    back = densemap.decode(maps, ref, KAPPA, T, FG)
    assert (back - joints).abs().max() < 1e-6


def test_zero_maps_decode_to_mean_cell_position():
    gen = torch.Generator().manual_seed(3)
    ref = _reference_crop(2, gen)
    out = densemap.decode(torch.zeros(2, 4 * J, F, F, dtype=torch.float64), ref, KAPPA, T, FG)
    uv_mean = pixel_grid_norm(F, torch.float64).reshape(-1, 2).mean(0)
    d_mean = ref[:, 0, ::2, ::2].reshape(2, -1).mean(1)
    expect = torch.cat([uv_mean.expand(2, 2), d_mean[:, None]], dim=-1)[:, None].expand(2, J, 3)
    assert torch.allclose(out, expect, atol=1e-12)
    assert abs(uv_mean).max() < 1e-12          # the grid is centred: leakage pulls joints to the crop centre


def test_encoding_is_differentiable_in_joints_and_reference():
    gen = torch.Generator().manual_seed(4)
    ref = _reference_crop(1, gen).requires_grad_(True)
    joints = _joints_near_foreground(ref.detach(), gen).requires_grad_(True)
    densemap.encode(joints, ref, F, KAPPA, FG).square().sum().backward()
    assert joints.grad.abs().sum() > 0 and ref.grad.abs().sum() > 0
