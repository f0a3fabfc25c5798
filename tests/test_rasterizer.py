"""Rasterizer tests (spec 13 T4 a/b/d, T5): analytic scenes, a float64 ray-casting reference,
finite-difference gradients, batch independence, empty scenes, degenerate and camera-crossing faces."""
from __future__ import annotations

import math

import pytest
import torch

from render.camera import backproject, crop_intrinsics, crop_transform, make_intrinsics, norm_to_xyz, project
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


# ---------------------------------------------------------------------------------------------------
# Exact coverage at silhouettes (issue 16 item 0): the torch backend decides every pixel centre as a
# float64 edge function of the projected vertices would.  The reference below is written
# independently of the rasterizer: for every face and every pixel centre of its (slightly enlarged)
# bounding box, the float64 signed distances of the centre to the three edge lines.
# ---------------------------------------------------------------------------------------------------

def edge_reference(verts, faces, K, H, W, tau=1e-9, rel=0.0):
    """Float64 reference rasterization of the torch backend's rule.

    Screen coordinates: `camera.project` in the dtype of `verts` (the very values the rasterizer sees),
    then converted to float64.  A face (skipped when a vertex has z <= 1e-6, a coordinate is not
    finite, or |area| <= 1e-10 px^2 in float64 or in the dtype of `verts`) covers a pixel centre
    when its three float64 signed distances to the edge lines (positive inside) are all >= 0.
    Depth: perspective-correct
    barycentric interpolation, 1/z = sum_i l_i / z_i.  Winner: nearest, ties to the smaller index.

    A pixel is *ambiguous* (either answer is right) when (i) a face whose boundary passes within
    `tau` px of the centre (min signed distance in (-tau, tau)) is not behind the nearest face that
    certainly covers it (min distance >= tau) by more than the relative depth `rel`: float64 rounding
    of the edge function may decide that face either way (a centre exactly on an edge, or on the
    shared edge of two faces); or (ii) the two nearest covering faces are within `rel` in depth.

    Returns face (B, H, W) long (-1 empty), depth (B, H, W) float64 (0 empty), ambiguous (B, H, W)
    bool and close (B, H, W) bool: unambiguous pixels where a face whose boundary passes within 1e-3 px
    of the centre is the winner or is nearer than the winner (the pixels that test the rule).
    """
    uvz_dt = project(verts, K.expand(verts.shape[0], 3, 3).to(verts.dtype))
    uvz = uvz_dt.double()
    B, F = verts.shape[0], faces.shape[0]
    face_out = torch.full((B, H, W), -1, dtype=torch.long)
    depth_out = torch.zeros(B, H, W, dtype=F64)
    amb_out = torch.zeros(B, H, W, dtype=torch.bool)
    close_out = torch.zeros(B, H, W, dtype=torch.bool)
    for b in range(B):
        tri = uvz[b][faces]  # (F, 3, 3)
        u, v, z = tri[..., 0], tri[..., 1], tri[..., 2]
        area = (u[:, 1] - u[:, 0]) * (v[:, 2] - v[:, 0]) - (v[:, 1] - v[:, 0]) * (u[:, 2] - u[:, 0])
        t = uvz_dt[b][faces]  # the area as the working dtype computes it (the depth divides by it)
        area_dt = ((t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1])
                   - (t[:, 1, 1] - t[:, 0, 1]) * (t[:, 2, 0] - t[:, 0, 0]))
        ok = (torch.isfinite(tri).all(-1).all(-1) & (z > 1e-6).all(-1) & (area.abs() > 1e-10)
              & (area_dt.abs() > 1e-10))
        m = 1e-3  # bounding box enlarged by 1e-3 px: also enumerates centres just outside a face
        c0 = torch.ceil(u.amin(1) - m).clamp(0, W).nan_to_num(W)
        c1 = torch.floor(u.amax(1) + m).clamp(-1, W - 1).nan_to_num(-1)
        r0 = torch.ceil(v.amin(1) - m).clamp(0, H).nan_to_num(H)
        r1 = torch.floor(v.amax(1) + m).clamp(-1, H - 1).nan_to_num(-1)
        nc, nr = (c1 - c0 + 1).clamp(min=0).long(), (r1 - r0 + 1).clamp(min=0).long()
        n = torch.where(ok, nc * nr, torch.zeros_like(nc))
        fidx = torch.repeat_interleave(torch.arange(F), n)
        if fidx.numel() == 0:
            continue
        k = torch.arange(fidx.numel()) - (torch.cumsum(n, 0) - n)[fidx]
        px = c0[fidx] + (k % nc[fidx]).double()
        py = r0[fidx] + torch.div(k, nc[fidx], rounding_mode="floor").double()
        uu, vv, zz = u[fidx], v[fidx], z[fidx]
        s = torch.sign(area[fidx])
        dist, lam = [], []
        for i, j in ((0, 1), (1, 2), (2, 0)):  # edge i -> j; its vertex opposite is 3 - i - j
            ex, ey = uu[:, j] - uu[:, i], vv[:, j] - vv[:, i]
            e = ex * (py - vv[:, i]) - ey * (px - uu[:, i])
            dist.append(s * e / torch.sqrt(ex * ex + ey * ey))
            lam.append(e / area[fidx])
        dmin = torch.stack(dist, 1).amin(1)
        lam = torch.stack(lam, 1)  # lam[:, 0] belongs to vertex 2, lam[:, 1] to 0, lam[:, 2] to 1
        zpair = 1.0 / (lam[:, 0] / zz[:, 2] + lam[:, 1] / zz[:, 0] + lam[:, 2] / zz[:, 1])
        key = (py * W + px).long()
        inf = torch.full((H * W,), float("inf"), dtype=F64)

        def nearest(mask):
            return inf.clone().scatter_reduce(0, key[mask], zpair[mask], reduce="amin")

        inside = dmin >= 0
        zbest = nearest(inside)
        cand = torch.where(inside & (zpair == zbest[key]), fidx, torch.full_like(fidx, F))
        win = torch.full((H * W,), F, dtype=torch.long).scatter_reduce(0, key, cand, reduce="amin")
        z2 = nearest(inside & (fidx != win[key]))
        zcert = nearest(dmin >= tau)
        near = (dmin > -tau) & (dmin < tau)
        amb = torch.zeros(H * W, dtype=torch.bool)
        amb[key[near & (zpair <= zcert[key] * (1 + rel))]] = True
        amb |= torch.isfinite(z2) & (z2 <= zbest * (1 + rel))
        cl = torch.zeros(H * W, dtype=torch.bool)
        cl[key[(dmin.abs() < 1e-3) & (zpair <= zbest[key])]] = True
        cov = win < F
        face_out[b].view(-1)[cov] = win[cov]
        depth_out[b].view(-1)[cov] = zbest[cov]
        amb_out[b].view(-1)[:] = amb
        close_out[b].view(-1)[:] = cl & ~amb
    return face_out, depth_out, amb_out, close_out


def sliver_scene(d_lo, d_hi, seed, H=48, W=48):
    """Silhouette-heavy scene (1, V, 3) float64, faces, K, whose edges pass 1e-4..1e-3 px (d_lo..d_hi,
    log-uniform) beside rows of pixel centres.

    * thin slivers (0.3-1.5 px wide, 6-16 px long) whose long edge runs along a lattice direction
      (1,0), (0,1), (1,1), (2,1), ...: every pixel centre on that lattice line is at the same distance
      d from the edge, on the inside or the outside (random);
    * fans of 8 triangles around an apex d from a pixel centre, spokes along the 8 lattice
      directions (each spoke passes within d of the centres on its lattice line); one fan shares its
      vertices (a watertight indexed fan), the others are triangle soups with a separate depth per
      triangle, so that a wrong face is a wrong depth;
    * needles 1e-6 px wide beside (d_lo >= 5e-7) or around (d_lo < 5e-7) lattice lines (their
      float32 area is below its rounding bound, so validity and orientation come from float64);
    * a tilted background plane behind everything (every pixel covered).
    The vertices are placed on screen (u, v, z) and back-projected with K.
    """
    g = torch.Generator().manual_seed(seed)
    K = make_intrinsics(300.0, 310.0, 23.7, 24.2, dtype=F64)

    def rnd(*shape):
        return torch.rand(*shape, generator=g, dtype=F64)

    def dist():
        return d_lo * (d_hi / d_lo) ** rnd(1).item()

    pts, faces = [], []

    def add(uvz_rows, tris):
        base = len(pts)
        pts.extend(uvz_rows)
        faces.extend([[base + a for a in t] for t in tris])

    add([[-5.3, -5.1, 900.0], [W + 5.2, -4.9, 930.0], [W + 4.8, H + 5.4, 960.0], [-4.7, H + 5.2, 910.0]],
        [[0, 1, 2], [0, 2, 3]])
    dirs = [(1, 0), (0, 1), (1, 1), (1, -1), (2, 1), (1, 2), (2, -1), (1, -2), (3, 1), (1, 3), (3, -2)]
    for i in range(66):
        p, q = dirs[i % len(dirs)]
        e = torch.tensor([p, q], dtype=F64) / math.hypot(p, q)
        nrm = torch.stack([-e[1], e[0]])
        c0 = torch.floor(8 + (torch.tensor([W, H], dtype=F64) - 16) * rnd(2))
        side = 1.0 if rnd(1).item() < 0.5 else -1.0
        P = c0 + side * dist() * nrm
        L = 3.0 + 5.0 * rnd(1).item()
        wdt = (0.3 + 1.2 * rnd(1).item()) * (1.0 if rnd(1).item() < 0.5 else -1.0)
        Q = P + wdt * nrm + (rnd(1).item() - 0.5) * L * e
        zs = 400.0 + 200.0 * rnd(3)
        add([[*(P - L * e).tolist(), zs[0].item()], [*(P + L * e).tolist(), zs[1].item()],
             [*Q.tolist(), zs[2].item()]], [[0, 1, 2]])
    for i in range(12):  # needles 1e-6 px wide along a lattice line (float32 area unreliable)
        p, q = dirs[i % len(dirs)]
        e = torch.tensor([p, q], dtype=F64) / math.hypot(p, q)
        nrm = torch.stack([-e[1], e[0]])
        c0 = torch.floor(8 + (torch.tensor([W, H], dtype=F64) - 16) * rnd(2))
        # d_lo < 5e-7: the needle holds the lattice line (its centres 5e-7 inside both long edges);
        # else it passes d beside it (float32 rounds the vertices by ~2e-6 px)
        P = c0 - 5e-7 * nrm if d_lo < 5e-7 else c0 + (1.0 if i % 2 else -1.0) * (dist() + 1e-6) * nrm
        L = 3.0 + 5.0 * rnd(1).item()
        zs = 380.0 + 40.0 * rnd(3)
        add([[*(P - L * e).tolist(), zs[0].item()], [*(P + L * e).tolist(), zs[1].item()],
             [*(P + 1e-6 * nrm).tolist(), zs[2].item()]], [[0, 1, 2]])
    ring = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]
    for k in range(5):
        c0 = torch.floor(8 + (torch.tensor([W, H], dtype=F64) - 16) * rnd(2))
        ang = (k + 0.3 + 0.4 * rnd(1).item()) * math.pi / 4  # never along a spoke
        A = c0 + dist() * torch.tensor([math.cos(ang), math.sin(ang)], dtype=F64)
        outer = [A + (2.5 + 2.0 * rnd(1).item()) * torch.tensor(d, dtype=F64) for d in ring]
        if k == 0:  # indexed fan: shared apex and spokes, one smooth surface
            rows = [[*A.tolist(), 450.0]] + [[*o.tolist(), 450.0 + 20.0 * j] for j, o in enumerate(outer)]
            add(rows, [[0, 1 + j, 1 + (j + 1) % 8] for j in range(8)])
        else:  # soup fan: each triangle its own vertices and depth
            for j in range(8):
                zt = 420.0 + 25.0 * ((j * 3 + k) % 8)
                add([[*A.tolist(), zt], [*outer[j].tolist(), zt + 5.0],
                     [*outer[(j + 1) % 8].tolist(), zt - 5.0]], [[0, 1, 2]])
    uvz = torch.tensor(pts, dtype=F64)
    return backproject(uvz, K)[None], torch.tensor(faces, dtype=torch.long), K


def grid_scene(d_lo, d_hi, seed, H=48, W=48):
    """Watertight indexed grid (1, V, 3) float64, faces, K: vertices (4i + du_i, 4j + dv_j) on screen
    (|du|, |dv| log-uniform in d_lo..d_hi, random signs), each cell split along a random diagonal,
    random depth per vertex (a wrong face is a wrong depth).  Its vertical and horizontal edges pass
    d beside whole columns and rows of pixel centres, its diagonals beside the centres on them."""
    g = torch.Generator().manual_seed(seed)
    K = make_intrinsics(300.0, 310.0, 23.7, 24.2, dtype=F64)
    n = W // 4 + 2

    def offs():
        mag = d_lo * (d_hi / d_lo) ** torch.rand(n, generator=g, dtype=F64)
        return mag * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(F64)

    du, dv = offs(), offs()
    gu = 4 * torch.arange(n, dtype=F64) - 2 + du
    gv = 4 * torch.arange(n, dtype=F64) - 2 + dv
    U, Vv = torch.meshgrid(gu, gv, indexing="xy")
    Z = 450.0 + 60.0 * torch.rand(n, n, generator=g, dtype=F64)
    uvz = torch.stack([U, Vv, Z], -1).reshape(-1, 3)
    idx = torch.arange(n * n).view(n, n)  # [row j, column i]
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    flip = torch.rand(a.shape, generator=g) < 0.5
    t1 = torch.where(flip[..., None], torch.stack([a, b, c], -1), torch.stack([a, b, d], -1))
    t2 = torch.where(flip[..., None], torch.stack([b, d, c], -1), torch.stack([a, d, c], -1))
    faces = torch.cat([t1.reshape(-1, 3), t2.reshape(-1, 3)])
    return backproject(uvz, K)[None], faces, K


def hand_poses(hand_model, B, seed):
    """Stand-in hand (float32 mm) in random poses, centred in NYU crops at 500-1200 mm, and K_crop."""
    g = torch.Generator().manual_seed(seed)
    K = make_intrinsics(588.03, 587.07, 320.0, 240.0).expand(B, 3, 3)
    z0 = 500 + 700 * torch.rand(B, generator=g)
    center = torch.stack([60 * torch.rand(B, generator=g) - 30, 60 * torch.rand(B, generator=g) - 30, z0], -1)
    cube = torch.full((B, 3), 250.0)
    params = torch.zeros(B, 62)
    params[:, :3] = (torch.rand(B, 3, generator=g) - 0.5) * 2.0
    params[:, 3:48] = torch.randn(B, 45, generator=g) * 0.7
    params[:, 58] = 1.0
    with torch.no_grad():
        _, joints = hand_model.network_space(params)
        params[:, 59:62] = -joints.mean(1)
        verts_n, _ = hand_model.network_space(params)
    verts = norm_to_xyz(verts_n, center, cube)
    return verts, hand_model.faces, crop_intrinsics(K, crop_transform(center, cube, K))


def _count_wrong(verts, faces, K, H, W, tau, rel):
    face, depth = rasterize_depth(verts, faces, K, H, W)[::-1]
    rf, rd, amb, close = edge_reference(verts, faces, K, H, W, tau=tau, rel=rel)
    wrong = (face != rf) & ~amb
    return wrong, close, face, depth, rf, rd, amb


@pytest.mark.parametrize("scene", [sliver_scene, grid_scene])
@pytest.mark.parametrize("dtype,d_lo,d_hi", [(torch.float32, 1e-4, 1e-3), (F64, 1e-7, 1e-4)])
def test_exact_coverage_slivers_fans_grid(scene, dtype, d_lo, d_hi):
    """Edges 1e-4..1e-3 px (float32) / 1e-7..1e-4 px (float64) beside pixel centres: 0 wrong faces
    where the float64 reference is unambiguous (tau = 1e-9 px); the grid has no crack."""
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    for seed in range(3):
        verts, faces, K = scene(d_lo, d_hi, seed)
        wrong, close, face, depth, rf, rd, amb = _count_wrong(verts.to(dtype), faces, K.to(dtype), 48, 48,
                                                              tau=1e-9, rel=rel)
        assert close.sum() > 150  # centres within 1e-3 px of a competing edge, all decided
        assert amb.sum() <= 2
        assert int(wrong.sum()) == 0, f"seed {seed}: {int(wrong.sum())} wrong of {int(close.sum())} close"
        assert (face >= 0).all()  # both scenes cover every pixel: no centre falls between faces
        same = (face == rf) & (rf >= 0)
        tol = 1e-5 if dtype == torch.float32 else 1e-8  # (needles interpolate badly)
        assert ((depth.double() - rd).abs() / rd)[same].max() < tol


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_needle_orientation_from_float64_area(dtype):
    """A needle around the pixel centre (10, 10) whose float32 area (-7.6e-6 px^2) has the wrong sign
    (float64: +7.2e-6): its orientation comes from float64, so the centre is the needle's.  K = I and
    z = 1 make the screen coordinates the float32 vertex coordinates exactly."""
    needle = [[3.503871440887451, 3.503873109817505], [16.49612808227539, 16.496126174926758],
              [11.569947242736816, 11.569947242736816]]
    back = [[-1.3, -1.1], [21.2, -0.9], [20.8, 21.4], [-0.7, 21.2]]
    v = torch.tensor([[x, y, 1.0] for x, y in needle] + [[2 * x, 2 * y, 2.0] for x, y in back],
                     dtype=dtype)[None]
    f = torch.tensor([[0, 1, 2], [3, 4, 5], [3, 5, 6]])
    K = make_intrinsics(1.0, 1.0, 0.0, 0.0, dtype=dtype)
    p = project(v.float(), K.float())[0, :3, :2]
    e1, e2 = p[1] - p[0], p[2] - p[0]
    assert e1[0] * e2[1] - e1[1] * e2[0] < 0  # float32 says clockwise
    depth, face = rasterize_depth(v, f, K, 20, 20)
    assert face[0, 10, 10] == 0 and abs(depth[0, 10, 10].item() - 1.0) < 1e-3
    rf = edge_reference(v, f, K, 20, 20)[0]
    assert torch.equal(face, rf)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_exact_coverage_hand_poses(hand_model, dtype):
    """The stand-in hand in 24 poses at 128^2: the winning face of every unambiguous pixel is that of
    the float64 edge-function reference (silhouettes, self-occlusion and shared edges)."""
    verts, faces, K = hand_poses(hand_model, 24, seed=11)
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    wrong, close, face, _, rf, _, amb = _count_wrong(verts.to(dtype), faces, K.to(dtype), 128, 128,
                                                     tau=1e-9, rel=rel)
    assert (rf >= 0).sum() > 24 * 1000
    assert int(wrong.sum()) == 0, f"{int(wrong.sum())} wrong ({int(close.sum())} close, {int(amb.sum())} amb)"
    assert amb.sum() < 100


def _reference_depth(verts, faces, K, H, W):
    return edge_reference(verts, faces, K, H, W)[1]


def _fd_check(verts, faces, K, H, W, coords, dirs, h, seed):
    """Autograd of S = sum over ALL pixels of w * depth (rasterizer, dtype of verts) against central
    differences in float64 of the reference S (coverage re-decided at every perturbed vertex set).
    coords: (vertex, axis) pairs; dirs: random directions over all vertices.  Returns the worst
    relative error."""
    g = torch.Generator().manual_seed(seed)
    B = verts.shape[0]
    w = torch.rand(B, H, W, generator=g, dtype=F64)
    vv = verts.clone().requires_grad_(True)
    depth, _ = rasterize_depth(vv, faces, K.to(verts.dtype), H, W)
    (w.to(depth.dtype) * depth).sum().backward()
    grad = vv.grad.double()
    v64, K64 = verts.double(), K.double()

    def fd(delta):
        dp = _reference_depth(v64 + h * delta, faces, K64, H, W)
        dm = _reference_depth(v64 - h * delta, faces, K64, H, W)
        return ((w * (dp - dm)).sum() / (2 * h)).item()

    worst, scale = 0.0, grad.abs().max().item()
    for b, i, a in coords:
        delta = torch.zeros_like(v64)
        delta[b, i, a] = 1.0
        num = fd(delta)
        worst = max(worst, abs(num - grad[b, i, a].item()) / max(abs(num), 1e-2 * scale))
    for _ in range(dirs):
        delta = torch.randn(v64.shape, generator=g, dtype=F64)
        num = fd(delta)
        worst = max(worst, abs(num - (grad * delta).sum().item()) / max(abs(num), 1e-12))
    return worst


@pytest.mark.parametrize("dtype,d_lo,d_hi,h,tol", [(torch.float32, 1e-4, 1e-3, 1e-6, 5e-4),
                                                  (F64, 1e-6, 1e-4, 1e-7, 2e-5)])
def test_gradients_over_all_pixels_slivers(dtype, d_lo, d_hi, h, tol):
    """Gradient of sum(w * depth) over all pixels (silhouettes included) w.r.t. every vertex of a
    silhouette-heavy scene = central differences of the float64 reference (a step h moves an edge by
    < 0.8 h px, far less than the >= d_lo between pixel centres and edges: no coverage change)."""
    verts, faces, K = sliver_scene(d_lo, d_hi, seed=5)
    V = verts.shape[1]
    coords = [(0, i, a) for i in range(4, V) for a in range(3)]  # every sliver and fan vertex
    worst = _fd_check(verts.to(dtype), faces, K, 48, 48, coords, dirs=3, h=h, seed=0)
    assert worst < tol, worst


def test_gradients_over_all_pixels_hand(hand_model):
    """Stand-in hand at two poses, float64: the all-pixel gradient against central differences of
    the reference, along random directions and for vertices of faces that own silhouette pixels."""
    verts, faces, K = hand_poses(hand_model, 2, seed=3)
    verts, K = verts.double(), K.double()
    rf, _, _, close = edge_reference(verts, faces, K, 128, 128)
    g = torch.Generator().manual_seed(1)
    coords = []
    for b in range(2):
        owners = rf[b][close[b]].unique()
        vids = faces[owners].reshape(-1).unique()
        vids = vids[torch.randperm(vids.numel(), generator=g)[:10]]
        coords += [(b, int(i), a) for i in vids for a in range(3)]
    worst = _fd_check(verts, faces, K, 128, 128, coords, dirs=4, h=1e-6, seed=2)
    assert worst < 5e-6, worst
