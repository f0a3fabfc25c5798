"""Model-fitting primitives (spec 7.2-7.5, 10.3, T13): hand box, point sampling, render residual,
data -> mesh and part data -> mesh."""
from __future__ import annotations

import pytest
import torch

from losses.fitting import (apply_hand_box, data_mesh_distance, gather_points, hand_box_mask, masked_mean,
                            mm_to_nu, part_mesh_distance, render_residual, sample_indices)
from render.camera import crop_intrinsics, crop_transform, make_intrinsics, xyz_to_norm

XY, FAR, NEAR, FG = 25.0, 20.0, 40.0, 0.99


def joints_mm() -> torch.Tensor:
    """21 joints spanning x [-30, 30], y [-40, 40], z [580, 620] mm."""
    g = torch.Generator().manual_seed(0)
    j = torch.rand(1, 21, 3, generator=g, dtype=torch.float64)
    j = j * torch.tensor([60.0, 80.0, 40.0], dtype=torch.float64) + torch.tensor([-30.0, -40.0, 580.0],
                                                                                   dtype=torch.float64)
    j[0, 0] = torch.tensor([-30.0, -40.0, 580.0], dtype=torch.float64)
    j[0, 1] = torch.tensor([30.0, 40.0, 620.0], dtype=torch.float64)
    return j


def test_mm_to_nu():
    torch.testing.assert_close(mm_to_nu(25.0, torch.tensor([[250.0] * 3, [200.0] * 3])), torch.tensor([0.2, 0.25]))


@pytest.mark.parametrize("axis,edge,sign,margin", [(0, -30.0, -1, XY), (0, 30.0, 1, XY), (1, -40.0, -1, XY),
                                                   (1, 40.0, 1, XY), (2, 580.0, -1, NEAR), (2, 620.0, 1, FAR)])
def test_hand_box_margins(axis, edge, sign, margin):
    j = joints_mm()
    base = torch.tensor([0.0, 0.0, 600.0], dtype=torch.float64)
    pts = base.repeat(3, 1)
    pts[0, axis] = edge + sign * (margin - 0.01)  # just inside
    pts[1, axis] = edge + sign * (margin + 0.01)  # just outside
    pts[2, axis] = edge + sign * margin  # on the boundary: not strictly inside
    assert hand_box_mask(pts[None], j, XY, FAR, NEAR).tolist() == [[True, False, False]]


def test_apply_hand_box_on_a_crop():
    K = make_intrinsics(588.03, 587.07, 320.0, 240.0, dtype=torch.float64)[None]
    center = torch.tensor([[0.0, 0.0, 600.0]], dtype=torch.float64)
    cube = torch.full((1, 3), 250.0, dtype=torch.float64)
    Kc = crop_intrinsics(K, crop_transform(center, cube, K))
    j_n = xyz_to_norm(joints_mm(), center, cube)

    def boxed(z_mm: float) -> torch.Tensor:
        depth = torch.full((1, 1, 128, 128), (z_mm - 600.0) / 125.0, dtype=torch.float64)
        return apply_hand_box(depth, j_n, center, cube, Kc, XY, FAR, NEAR, FG)

    fx, cx = float(Kc[0, 0, 0]), float(Kc[0, 0, 2])
    fy, cy = float(Kc[0, 1, 1]), float(Kc[0, 1, 2])
    for z, expect_any in [(540.5, True), (539.5, False), (639.5, True), (640.5, False)]:
        out = boxed(z)
        assert bool((out < 1).any()) == expect_any, z
    out = boxed(600.0)[0, 0]
    cols = torch.arange(128, dtype=torch.float64)
    x = (cols - cx) * 600.0 / fx
    y = (cols - cy) * 600.0 / fy
    inside = ((y > -65) & (y < 65))[:, None] & ((x > -55) & (x < 55))[None, :]
    assert torch.equal(out < 1, inside)
    assert torch.all(out[inside] == 0.0)  # kept pixels keep their depth
    # background stays background
    bg = torch.ones(1, 1, 128, 128, dtype=torch.float64)
    assert torch.equal(apply_hand_box(bg, j_n, center, cube, Kc, XY, FAR, NEAR, FG), bg)


@pytest.mark.parametrize("n", [1, 100, 2048, 100_000])
def test_sampling_returns_n_points_with_repeat_rule(n):
    N = 2048
    P = max(n, 4096) + 7
    mask = torch.zeros(1, P, dtype=torch.bool)
    cand = torch.randperm(P, generator=torch.Generator().manual_seed(1))[:n]
    mask[0, cand] = True
    idx, valid = sample_indices(mask, N, torch.Generator().manual_seed(2))
    assert idx.shape == (1, N) and valid.tolist() == [True]
    assert mask[0, idx[0]].all()  # only candidates
    counts = torch.bincount(idx[0], minlength=P)[cand]
    if n >= N:
        assert counts.max() == 1  # without replacement
    else:
        assert counts.min() >= N // n and counts.max() <= N // n + 1 and int(counts.sum()) == N
        assert int((counts == N // n + 1).sum()) == N % n


def test_sampling_flags_empty_samples():
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[1, 3] = True
    idx, valid = sample_indices(mask, 16)
    assert valid.tolist() == [False, True] and idx.shape == (2, 16) and (idx[1] == 3).all()
    torch.testing.assert_close(masked_mean(torch.tensor([5.0, 2.0]), valid), torch.tensor(2.0))
    torch.testing.assert_close(masked_mean(torch.tensor([5.0, 2.0]), torch.zeros(2, dtype=torch.bool)),
                               torch.tensor(0.0))
    pts = torch.arange(2 * 50 * 3, dtype=torch.float64).reshape(2, 50, 3)
    torch.testing.assert_close(gather_points(pts, idx)[1, 0], pts[1, 3])


def test_render_residual_union_and_gradient():
    obs = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    obs[0, 0, 0, :2] = torch.tensor([0.1, 0.2])
    assert float(render_residual(obs, obs.clone(), FG)) == 0.0  # the mesh explains the crop exactly
    ren2 = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    ren2[0, 0, 0, 1:3] = torch.tensor([0.3, 0.5])
    ren2.requires_grad_(True)
    rho = render_residual(obs, ren2, FG)
    # U = 3 pixels: |0.1 - 1| + |0.2 - 0.3| + |1 - 0.5|
    torch.testing.assert_close(rho, torch.tensor([(0.9 + 0.1 + 0.5) / 3], dtype=torch.float64))
    rho.sum().backward()
    g = ren2.grad[0, 0, 0]
    assert g[1] > 0 and g[2] < 0 and g[3] == 0  # rendered too far -> pull nearer; extra pixel -> push back


# ---- point -> mesh distances -------------------------------------------------------------------
def octahedron(scale: float = 0.1):
    v = scale * torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                             dtype=torch.float32)
    f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return v, f


def points_on_faces(v, f, n_per_face: int, offset: float = 0.0, seed: int = 0):
    """Random points on each face, moved `offset` along the outward face normal."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    nrm = torch.nn.functional.normalize(torch.linalg.cross(b - a, c - a), dim=-1)
    w = torch.rand(len(f), n_per_face, 3, generator=g) + 0.05
    w = w / w.sum(-1, keepdim=True)
    p = w[..., :1] * a[:, None] + w[..., 1:2] * b[:, None] + w[..., 2:] * c[:, None]
    return p + offset * nrm[:, None], torch.arange(len(f))[:, None].expand(-1, n_per_face)


def test_data_mesh_zero_on_surface_and_h2_offset():
    v, f = octahedron()
    p, _ = points_on_faces(v, f, 8)
    assert float(data_mesh_distance(p.reshape(1, -1, 3), v[None], f, 0.0)) < 1e-10
    h = 0.004  # well inside the face regions seen from outside: the nearest point is on the own face
    p, _ = points_on_faces(v, f, 8, offset=h)
    verts = v[None].clone().requires_grad_(True)
    d = data_mesh_distance(p.reshape(1, -1, 3), verts, f, 0.0)
    torch.testing.assert_close(d, torch.tensor([h * h]), rtol=1e-3, atol=1e-9)
    d.sum().backward()
    assert torch.isfinite(verts.grad).all()
    # points outside: descent moves the vertices outward (along +position for this convex shape)
    assert float((verts.grad[0] * v).sum()) < 0


def test_trimmed_data_mesh_ignores_the_farthest_points():
    """90 points on the surface at h and 10 outliers 0.2 nu off: the full mean is pulled to
    (90 h^2 + 10 * 0.04) / 100, the 10 % trimmed mean is h^2 exactly."""
    v, f = octahedron()
    h = 0.004
    p, _ = points_on_faces(v, f, 12, offset=h)
    p = p.reshape(-1, 3)[:90]
    far, _ = points_on_faces(v, f, 2, offset=0.2)
    pts = torch.cat([p, far.reshape(-1, 3)[:10]])[None]
    full = float(data_mesh_distance(pts, v[None], f, 0.0))
    trimmed = float(data_mesh_distance(pts, v[None], f, 0.1))
    assert abs(full - (90 * h * h + 10 * 0.04) / 100) < 1e-3 * full
    assert abs(trimmed - h * h) < 1e-3 * h * h


def test_part_mesh_distance_per_bone():
    v, f = octahedron()
    part_faces = [torch.tensor([k % 8]) for k in range(15)]  # bone k+1 owns face k % 8
    p, face_id = points_on_faces(v, f, 4)
    labels = face_id + 1  # points of face k labelled bone k+1 -> on their own part
    means, counts = part_mesh_distance(p.reshape(1, -1, 3), labels.reshape(1, -1), v[None], part_faces, f)
    assert means.shape == (1, 15) and float(means.abs().max()) < 1e-10
    assert counts[0, :8].tolist() == [4] * 8 and counts[0, 8:].sum() == 0
    # the same points labelled one bone further: bone k+2 owns face k+1 -> positive distance
    verts = v[None].clone().requires_grad_(True)
    means, _ = part_mesh_distance(p.reshape(1, -1, 3), (labels + 1).clamp(max=15).reshape(1, -1), verts, part_faces, f)
    assert (means[0, 1:8] > 1e-4).all() and means[0, 0] == 0
    means.mean().backward()
    assert torch.isfinite(verts.grad).all() and verts.grad.abs().sum() > 0
