"""Rasterizer tests (spec 13 T4 a/b/d, T5): analytic scenes, a float64 ray-casting reference,
finite-difference gradients, batch independence, empty scenes, degenerate and camera-crossing faces."""
from __future__ import annotations

import math

import pytest
import torch

from render.camera import backproject, crop_intrinsics, crop_transform, make_intrinsics, project
from render.rasterizer import pytorch3d_available, rasterize_depth

F64 = torch.float64


def icosphere(level: int, radius: float = 1.0, dtype=F64) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit icosahedron subdivided `level` times, projected onto the sphere; outward faces."""
    t = (1.0 + 5 ** 0.5) / 2.0
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t],
         [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
         [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
         [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    verts = [torch.tensor(p, dtype=F64) / math.sqrt(1 + t * t) for p in v]
    for _ in range(level):
        cache, nf = {}, []
        def mid(a, b):
            k = (min(a, b), max(a, b))
            if k not in cache:
                m = verts[a] + verts[b]
                verts.append(m / m.norm())
                cache[k] = len(verts) - 1
            return cache[k]
        for a, b, c in f:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            nf += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        f = nf
    return (torch.stack(verts) * radius).to(dtype), torch.tensor(f, dtype=torch.long)


def raycast_reference(verts, faces, K, H, W):
    """Float64 brute force: Moller-Trumbore ray/triangle for every pixel ray and every face.

    Ray through pixel (r, c) = backproject((c, r, 1)); its parameter t equals camera z.
    Faces with a vertex at z <= 1e-6 are skipped.  Returns depth (B,H,W), face (B,H,W).
    """
    B = verts.shape[0]
    r, c = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    depth = torch.zeros(B, H, W, dtype=F64)
    face = torch.full((B, H, W), -1, dtype=torch.long)
    for b in range(B):
        Kb = (K if K.dim() == 2 else K[b]).to(F64)
        d = backproject(torch.stack([c, r, torch.ones_like(c)], -1).reshape(-1, 3), Kb)  # (P,3)
        tri = verts[b].to(F64)[faces]  # (F,3,3)
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        pv = torch.cross(d[:, None], e2[None], dim=-1)
        det = (e1[None] * pv).sum(-1)
        ok = det.abs() > 1e-300
        inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
        tv = -tri[None, :, 0]
        uu = (tv * pv).sum(-1) * inv
        qv = torch.cross(tv, e1[None].expand_as(tv), dim=-1)
        vv = (d[:, None] * qv).sum(-1) * inv
        tt = (e2[None] * qv).sum(-1) * inv
        hit = ok & (uu >= 0) & (vv >= 0) & (uu + vv <= 1) & (tt > 0)
        hit &= (tri[:, :, 2] > 1e-6).all(-1)[None]
        tt = torch.where(hit, tt, torch.full_like(tt, float("inf")))
        best, idx = tt.min(1)
        cov = torch.isfinite(best)
        depth[b].view(-1)[cov] = best[cov]
        face[b].view(-1)[cov] = idx[cov]
    return depth, face


def test_square_plate_coverage_and_depth():
    K = make_intrinsics(500.0, 500.0, 63.5, 61.2, dtype=F64)
    for dtype in (F64, torch.float32):
        x0, x1, y0, y1 = -40.3, 37.9, -20.6, 44.1  # projected edges far from pixel centres
        v = torch.tensor([[x0, y0, 500], [x1, y0, 500], [x1, y1, 500], [x0, y1, 500]], dtype=dtype)[None]
        f = torch.tensor([[0, 1, 2], [0, 2, 3]])
        depth, face = rasterize_depth(v, f, K.to(dtype), 128, 120)
        u = torch.arange(120, dtype=F64)
        vv = torch.arange(128, dtype=F64)
        inside = ((vv[:, None] > 500 * y0 / 500 + 61.2) & (vv[:, None] < 500 * y1 / 500 + 61.2)
                  & (u[None] > x0 + 63.5) & (u[None] < x1 + 63.5))
        assert torch.equal(face[0] >= 0, inside)
        assert torch.allclose(depth[0][inside].double(), torch.full_like(depth[0][inside].double(), 500.0),
                              rtol=1e-6, atol=0)
        assert (depth[0][~inside] == 0).all()


def test_tilted_plane_closed_form():
    """z = a + b x + c y: the ray through pixel (u, v) hits it at z = a / (1 - b X - c Y),
    X = (u - cx)/fx, Y = (v - cy)/fy."""
    fx, fy, cx, cy = 420.0, 415.0, 70.3, 58.8
    K = make_intrinsics(fx, fy, cx, cy, dtype=F64)
    a, bb, cc = 600.0, 0.7, -0.4
    xy = torch.tensor([[-150.0, -140.0], [160.0, -120.0], [140.0, 150.0], [-130.0, 130.0]], dtype=F64)
    z = a + bb * xy[:, 0] + cc * xy[:, 1]
    v = torch.cat([xy, z[:, None]], -1)[None]
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    depth, face = rasterize_depth(v, f, K, 128, 140)
    r, c = torch.meshgrid(torch.arange(128, dtype=F64), torch.arange(140, dtype=F64), indexing="ij")
    truth = a / (1 - bb * (c - cx) / fx - cc * (r - cy) / fy)
    cov = face[0] >= 0
    assert cov.sum() > 5000
    rel = ((depth[0] - truth).abs() / truth)[cov]
    assert rel.max() < 1e-6
    d32, _ = rasterize_depth(v.float(), f, K.float(), 128, 140)
    both = cov & (d32[0] > 0)
    assert ((d32[0].double() - truth).abs() / truth)[both].max() < 2e-5


def test_sphere_matches_analytic_surface():
    R, zc = 60.0, 400.0
    v, f = icosphere(4, R)
    v = v + torch.tensor([5.0, -7.0, zc], dtype=F64)
    K = make_intrinsics(300.0, 300.0, 63.5, 63.5, dtype=F64)
    depth, face = rasterize_depth(v[None], f, K, 128, 128)
    r, c = torch.meshgrid(torch.arange(128, dtype=F64), torch.arange(128, dtype=F64), indexing="ij")
    d = backproject(torch.stack([c, r, torch.ones_like(c)], -1).reshape(-1, 3), K)  # z = 1 rays
    ctr = torch.tensor([5.0, -7.0, zc], dtype=F64)
    bq = (d * ctr).sum(-1)
    disc = bq ** 2 - (d * d).sum(-1) * ((ctr * ctr).sum() - R * R)
    t_hit = (bq - disc.clamp(min=0).sqrt()) / (d * d).sum(-1)  # z of the first hit
    hit = (disc > 0).view(128, 128)
    cov = face[0] >= 0
    assert not (cov & ~hit).any()  # the inscribed polyhedron lies inside the sphere
    # cos of the incidence angle; restrict to rays within 60 deg of the normal
    p = d * t_hit[:, None]
    n = (p - ctr) / R
    cosang = (-(n * d).sum(-1) / d.norm(dim=-1)).view(128, 128)
    good = cov & hit & (cosang > 0.5)
    edge = (v[f[:, 0]] - v[f[:, 1]]).norm(dim=-1).max().item()
    sag = edge ** 2 / (8 * R) * 1.5  # distance between chord triangles and the sphere
    err = depth[0][good] - t_hit.view(128, 128)[good]
    assert good.sum() > 3000
    assert err.min() > -1e-9 and err.max() < sag / 0.5


def test_vertices_on_pixel_centres_give_exact_depth():
    """A height field whose vertices lie exactly on pixel-centre rays: depth there = vertex z."""
    K = make_intrinsics(250.0, 260.0, 31.7, 29.4, dtype=F64)
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(4, 60, 4, dtype=F64), torch.arange(3, 62, 4, dtype=F64),
                                indexing="ij")
    z = 500 + 20 * torch.rand(rows.shape, generator=g, dtype=F64)
    v = backproject(torch.stack([cols, rows, z], -1).reshape(-1, 3), K)
    n0, n1 = rows.shape
    idx = torch.arange(n0 * n1).view(n0, n1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    f = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    depth, face = rasterize_depth(v[None], f, K, 64, 64)
    got = depth[0, rows.long(), cols.long()]
    assert torch.allclose(got, z, rtol=1e-12, atol=0)


def _soup(B: int, n: int, seed: int, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(B, n, 1, 3, generator=g, dtype=F64) * torch.tensor([160, 160, 300], dtype=F64) \
        + torch.tensor([-80, -80, 300], dtype=F64)
    tri = ctr + 40 * (torch.rand(B, n, 3, 3, generator=g, dtype=F64) - 0.5)
    return tri.reshape(B, 3 * n, 3).to(dtype), torch.arange(3 * n).view(n, 3)


def test_matches_raycast_reference_on_triangle_soup():
    verts, faces = _soup(3, 60, seed=1)
    verts[1, :3, 2] = torch.tensor([-10.0, 200.0, 300.0], dtype=F64)  # crosses the camera plane
    verts[2, 3:6] = verts[2, 3]  # degenerate: a point
    K = make_intrinsics(150.0, 160.0, 40.2, 33.9, dtype=F64)
    depth, face = rasterize_depth(verts, faces, K, 70, 80)
    rd, rf = raycast_reference(verts, faces, K, 70, 80)
    agree = (face == rf)
    assert agree.float().mean() > 0.999  # only pixel centres within rounding of an edge may differ
    assert (face >= 0).sum() > 2000
    both = (face >= 0) & (rf >= 0) & agree
    assert torch.allclose(depth[both], rd[both], rtol=1e-10, atol=0)
    assert not (face[1] == 0).any() and not (face[2] == 1).any()


def test_crop_rendering_equals_full_frame():
    """T4(d): unit-scale crops with integer offsets sample the full-frame image exactly."""
    S = 128
    setups = [(588.03, 587.07, 320.0, 240.0, 640, 480), (240.99, 240.96, 160.0, 120.0, 320, 240),
              (363.9, 363.9, 255.4, 206.3, 512, 424)]
    v, f = icosphere(3, 45.0)
    for fx, fy, cx, cy, W, H in setups:
        K = make_intrinsics(fx, fy, cx, cy, dtype=F64)
        for cu, cv in ((cx + 30.5 - (cx % 1), cy - 20.5 - (cy % 1)), (W - 10.5, 15.5)):
            cz = 450.0
            C = backproject(torch.tensor([[cu, cv, cz]], dtype=F64), K)[0]
            cube = torch.tensor([S * cz / fx, S * cz / fx * 0.9, 250.0], dtype=F64)  # w = S/2 -> s = 1
            A = crop_transform(C, cube, K, S)
            assert abs(A[0, 0].item() - 1.0) < 1e-12 and abs(A[0, 2] - round(A[0, 2].item())) < 1e-9
            mesh = (v + C + torch.tensor([10.0, -5.0, 20.0], dtype=F64))[None]
            full, ffull = rasterize_depth(mesh, f, K, H, W)
            crop, fcrop = rasterize_depth(mesh, f, crop_intrinsics(K, A), S, S)
            tu, tv = int(round(A[0, 2].item())), int(round(A[1, 2].item()))
            cols, rows = torch.arange(S) - tu, torch.arange(S) - tv
            okc, okr = (cols >= 0) & (cols < W), (rows >= 0) & (rows < H)
            ref = full[0][rows.clamp(0, H - 1)][:, cols.clamp(0, W - 1)]
            fref = ffull[0][rows.clamp(0, H - 1)][:, cols.clamp(0, W - 1)]
            m = okr[:, None] & okc[None, :]
            assert (fcrop[0][m] >= 0).sum() > 100
            assert torch.equal(fcrop[0][m], fref[m])
            assert torch.allclose(crop[0][m], ref[m], rtol=1e-12, atol=0)


def test_gradients_match_finite_differences():
    """T5: d(sum w * depth)/d verts by central differences (float64), coverage-stable pixels."""
    v, f = icosphere(2, 50.0)
    g = torch.Generator().manual_seed(3)
    v = v + 3 * torch.rand(v.shape, generator=g, dtype=F64) + torch.tensor([4.0, -3.0, 300.0], dtype=F64)
    K = make_intrinsics(200.0, 190.0, 31.3, 32.6, dtype=F64)
    w = torch.rand(1, 64, 64, generator=g, dtype=F64)
    _, face0 = rasterize_depth(v[None], f, K, 64, 64)
    h = 1e-5
    coords = [(i, a) for i in range(0, v.shape[0], 7) for a in range(3)]
    stable = face0 >= 0
    outs = {}
    for i, a in coords:
        for sgn in (1, -1):
            vp = v.clone()
            vp[i, a] += sgn * h
            dp, fp = rasterize_depth(vp[None], f, K, 64, 64)
            stable &= fp == face0
            outs[(i, a, sgn)] = dp
    vv = v.clone()[None].requires_grad_(True)
    depth, _ = rasterize_depth(vv, f, K, 64, 64)
    (w * depth * stable).sum().backward()
    checked = 0
    for i, a in coords:
        fd = ((w * (outs[(i, a, 1)] - outs[(i, a, -1)]) * stable).sum() / (2 * h)).item()
        ad = vv.grad[0, i, a].item()
        assert abs(fd - ad) <= 1e-4 * max(abs(fd), 1e-3), (i, a, fd, ad)
        checked += abs(fd) > 1e-3
    assert checked > 20
    # vertices of faces that win no pixel get no gradient
    used = torch.zeros(v.shape[0], dtype=torch.bool)
    used[f[face0[face0 >= 0].unique()].reshape(-1)] = True
    assert (vv.grad[0][~used] == 0).all()


def test_batch_independence_and_shared_K():
    verts, faces = _soup(3, 40, seed=5, dtype=torch.float32)
    K = make_intrinsics(150.0, 150.0, 32.0, 30.0)
    d, fi = rasterize_depth(verts, faces, K, 64, 60)
    dK, fK = rasterize_depth(verts, faces, K.expand(3, 3, 3), 64, 60)
    assert torch.equal(d, dK) and torch.equal(fi, fK)
    for b in range(3):
        db, fb = rasterize_depth(verts[b:b + 1], faces, K, 64, 60)
        assert torch.equal(db[0], d[b]) and torch.equal(fb[0], fi[b])


def test_empty_offscreen_behind_camera():
    v, f = icosphere(2, 30.0, dtype=torch.float32)
    K = make_intrinsics(100.0, 100.0, 31.5, 31.5)
    scenes = torch.stack([v + torch.tensor([0.0, 0.0, -200.0]),  # behind
                          v + torch.tensor([5000.0, 0.0, 300.0]),  # off to the side
                          v + torch.tensor([0.0, -9000.0, 300.0])])
    d, fi = rasterize_depth(scenes.requires_grad_(True), f, K, 64, 64)
    assert (d == 0).all() and (fi == -1).all()
    d.sum().backward()
    assert torch.isfinite(scenes.grad).all()
    d, fi = rasterize_depth(v[None], f[:0], K, 8, 8)
    assert (d == 0).all() and (fi == -1).all()


def test_degenerate_and_camera_crossing_faces_are_nan_free():
    K = make_intrinsics(100.0, 100.0, 31.5, 31.5, dtype=F64)
    v = torch.tensor([[0, 0, 100], [10, 0, 100], [20, 0, 100],  # collinear
                      [5, 5, 100], [5, 5, 100], [5, 5, 100],  # a point
                      [-20, -20, -5], [20, -20, 50], [0, 20, 50],  # crosses z = 0
                      [-20, -20, 0], [20, -20, 80], [0, 20, 80],  # touches z = 0
                      [-30, -30, 200], [30, -30, 200], [0, 30, 200],  # a normal face behind them
                      [1, 1, 100], [1 + 1e-9, 1, 100], [1, 1 + 1e-7, 100]], dtype=F64)  # sliver
    f = torch.arange(18).view(6, 3)
    for dtype in (F64, torch.float32):
        vv = v.to(dtype)[None].requires_grad_(True)
        d, fi = rasterize_depth(vv, f, K.to(dtype), 64, 64)
        assert torch.isfinite(d).all()
        assert set(fi.unique().tolist()) <= {-1, 4, 5}
        assert (fi == 4).sum() > 100
        (d * torch.rand_like(d)).sum().backward()
        assert torch.isfinite(vv.grad).all()
        assert (vv.grad[0, :12] == 0).all()


@pytest.mark.skipif(not pytorch3d_available(), reason="pytorch3d is not installed")
def test_pytorch3d_backend_agrees():
    verts, faces = _soup(2, 50, seed=7, dtype=torch.float32)
    K = make_intrinsics(150.0, 160.0, 40.2, 33.9)
    d0, f0 = rasterize_depth(verts, faces, K, 70, 80, backend="torch")
    d1, f1 = rasterize_depth(verts, faces, K, 70, 80, backend="pytorch3d")
    assert (f0 == f1).float().mean() > 0.999
    same = (f0 == f1) & (f0 >= 0)
    assert torch.allclose(d0[same], d1[same], rtol=1e-4)
