"""Point-to-mesh distance tests (spec 13 T10, 7.2, 7.3): analytic vertex/edge/face regions over six
orders of magnitude of triangle size, an independent float64 reference (plane projection + segments),
pruned search = brute force, gradients by finite differences, degenerate triangles, part distances."""
from __future__ import annotations

import pytest
import torch

from render.geometry import part_point_mesh_sqdist, point_mesh_sqdist, point_triangle_sqdist

F64 = torch.float64


def reference_sqdist(p, a, b, c):
    """Independent float64 formula: min(plane distance if the projection is inside, 3 segments)."""
    p, a, b, c = p.double(), a.double(), b.double(), c.double()
    n = torch.cross(b - a, c - a, dim=-1)
    nn = (n * n).sum(-1)
    ok = nn > 0
    nns = torch.where(ok, nn, torch.ones_like(nn))
    h = ((p - a) * n).sum(-1)
    proj = p - (h / nns)[..., None] * n
    s0 = (torch.cross(b - a, proj - a, dim=-1) * n).sum(-1)
    s1 = (torch.cross(c - b, proj - b, dim=-1) * n).sum(-1)
    s2 = (torch.cross(a - c, proj - c, dim=-1) * n).sum(-1)
    inside = ok & (s0 >= 0) & (s1 >= 0) & (s2 >= 0)
    best = torch.where(inside, h * h / nns, torch.full_like(h, float("inf")))
    for x, y in ((a, b), (b, c), (c, a)):
        e = y - x
        ee = (e * e).sum(-1)
        t = torch.where(ee > 0, ((p - x) * e).sum(-1) / torch.where(ee > 0, ee, torch.ones_like(ee)),
                        torch.zeros_like(ee)).clamp(0, 1)
        d = p - x - t[..., None] * e
        best = torch.minimum(best, (d * d).sum(-1))
    return best


def random_triangles(n, scale, g):
    a = torch.rand(n, 3, generator=g, dtype=F64)
    e = torch.randn(n, 2, 3, generator=g, dtype=F64) * scale
    return a, a + e[:, 0], a + e[:, 1]


@pytest.mark.parametrize("scale", [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2])
def test_analytic_regions(scale):
    g = torch.Generator().manual_seed(int(scale * 1e4) + 1)
    n = 400
    a, b, c = random_triangles(n, scale, g)
    nrm = torch.cross(b - a, c - a, dim=-1)
    nrm = nrm / nrm.norm(dim=-1, keepdim=True)
    h = (torch.rand(n, generator=g, dtype=F64) - 0.5) * scale
    # face region: above an interior point
    l = torch.rand(n, 3, generator=g, dtype=F64) + 0.05
    l = l / l.sum(-1, keepdim=True)
    q = l[:, :1] * a + l[:, 1:2] * b + l[:, 2:] * c
    cases = [(q + h[:, None] * nrm, h * h)]
    # edge region of ab: outward in-plane perpendicular (away from c) plus a normal offset
    t = torch.rand(n, 1, generator=g, dtype=F64) * 0.9 + 0.05
    e = b - a
    m = torch.cross(e, nrm, dim=-1)
    m = m * torch.sign(((a - c) * m).sum(-1, keepdim=True))
    m = m / m.norm(dim=-1, keepdim=True)
    delta = torch.rand(n, generator=g, dtype=F64) * scale
    cases.append((a + t * e + delta[:, None] * m + h[:, None] * nrm, delta ** 2 + h ** 2))
    # vertex region of a: direction u with u.ab <= 0 and u.ac <= 0
    u = -((b - a) / (b - a).norm(dim=-1, keepdim=True) + (c - a) / (c - a).norm(dim=-1, keepdim=True))
    u = u / u.norm(dim=-1, keepdim=True) + (torch.rand(n, 1, generator=g, dtype=F64) - 0.5) * nrm
    keep = (((u * (b - a)).sum(-1) <= 0) & ((u * (c - a)).sum(-1) <= 0))
    p = a + delta[:, None] * u
    cases.append((p[keep], ((p - a) ** 2).sum(-1)[keep]))
    for p, expect in cases:
        k = p.shape[0]
        got = point_triangle_sqdist(p, a[:k] if k == n else a[keep], b[:k] if k == n else b[keep],
                                    c[:k] if k == n else c[keep])
        torch.testing.assert_close(got, expect, rtol=1e-8, atol=1e-12 * scale ** 2)
        got32 = point_triangle_sqdist(p.float(), *(x.float() for x in ((a, b, c) if k == n else
                                                                     (a[keep], b[keep], c[keep]))))
        # float32 inputs: coordinates ~1 carry absolute error ~1e-7, i.e. relative 1e-7/scale
        tol = 1e-6 * max(1.0, 1.0 / scale) ** 2 * 10
        assert ((got32.double() - expect).abs() <= tol * expect + 1e-6 * scale ** 2 + 1e-12).all()
    assert keep.sum() > 100


def test_scale_check_nu_vs_mm():
    g = torch.Generator().manual_seed(2)
    a, b, c = random_triangles(300, 0.03, g)  # MANO-like triangles in nu: areas ~1e-3 nu^2 or less
    p = torch.rand(300, 3, generator=g, dtype=F64)
    half = 125.0
    d_nu = point_triangle_sqdist(p, a, b, c)
    d_mm = point_triangle_sqdist(p * half, a * half, b * half, c * half)
    torch.testing.assert_close(d_nu, d_mm / half ** 2, rtol=1e-10, atol=0)
    d32 = point_triangle_sqdist(p.float(), a.float(), b.float(), c.float())
    torch.testing.assert_close(d32.double(), reference_sqdist(p, a, b, c), rtol=1e-4, atol=1e-10)


def test_matches_independent_reference_random_and_degenerate():
    g = torch.Generator().manual_seed(4)
    n = 3000
    a, b, c = random_triangles(n, 0.5, g)
    b[:200] = a[:200]  # repeated vertex
    c[200:400] = a[200:400] + 0.3 * (b[200:400] - a[200:400])  # collinear, inside ab
    c[400:500] = a[400:500] + 2.0 * (b[400:500] - a[400:500])  # collinear, beyond b
    b[500:600] = a[500:600]
    c[500:600] = a[500:600]  # a point
    p = torch.rand(n, 3, generator=g, dtype=F64) * 2 - 0.5
    torch.testing.assert_close(point_triangle_sqdist(p, a, b, c), reference_sqdist(p, a, b, c),
                               rtol=1e-9, atol=1e-14)


def _mesh_batch(g):
    verts = torch.randn(3, 60, 3, generator=g, dtype=F64) * torch.tensor([40.0, 30.0, 20.0], dtype=F64)
    faces = torch.randint(0, 60, (150, 3), generator=g)
    faces[:5, 1] = faces[:5, 0]  # degenerate faces
    pts = torch.randn(3, 500, 3, generator=g, dtype=F64) * 45
    pts[:, :100] = verts[:, faces[:100, 0]] + 0.5 * torch.randn(3, 100, 3, generator=g, dtype=F64)
    return verts, faces, pts


@pytest.mark.parametrize("chunk", [37, 8192])
def test_mesh_distance_equals_brute_force(chunk):
    verts, faces, pts = _mesh_batch(torch.Generator().manual_seed(5))
    got = point_mesh_sqdist(pts, verts, faces, chunk_size=chunk)
    t = verts[:, faces]  # (B, F, 3, 3)
    ref = reference_sqdist(pts[:, :, None], t[:, None, :, 0], t[:, None, :, 1], t[:, None, :, 2]).amin(-1)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    got32 = point_mesh_sqdist(pts.float(), verts.float(), faces)
    torch.testing.assert_close(got32.double(), ref, rtol=1e-4, atol=1e-3)
    # batch independence
    one = point_mesh_sqdist(pts[1:2], verts[1:2], faces)
    torch.testing.assert_close(one[0], got[1], rtol=0, atol=0)


def test_gradients_match_finite_differences():
    verts, faces, pts = _mesh_batch(torch.Generator().manual_seed(6))
    faces = faces[5:]  # non-degenerate
    verts, pts = verts[:1], pts[:1, :60]
    w = torch.rand(1, 60, generator=torch.Generator().manual_seed(0), dtype=F64)
    vv, pp = verts.clone().requires_grad_(True), pts.clone().requires_grad_(True)
    (w * point_mesh_sqdist(pp, vv, faces)).sum().backward()
    eps = 1e-6

    def f(v, p):
        return (w * point_mesh_sqdist(p, v, faces)).sum().item()

    for i in range(0, 60, 6):
        for a in range(3):
            d = torch.zeros_like(pts)
            d[0, i, a] = eps
            fd = (f(verts, pts + d) - f(verts, pts - d)) / (2 * eps)
            assert abs(fd - pp.grad[0, i, a].item()) <= 1e-5 * max(1.0, abs(fd))
    used = torch.unique(faces.reshape(-1))
    for i in used[::9].tolist():
        for a in range(3):
            d = torch.zeros_like(verts)
            d[0, i, a] = eps
            fd = (f(verts + d, pts) - f(verts - d, pts)) / (2 * eps)
            assert abs(fd - vv.grad[0, i, a].item()) <= 1e-5 * max(1.0, abs(fd))


def test_degenerate_mesh_is_nan_free():
    verts = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0]]], requires_grad=True)
    faces = torch.tensor([[0, 1, 2], [0, 3, 0], [1, 1, 1]])
    pts = torch.tensor([[[0.5, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0, 2]]], requires_grad=True)
    d = point_mesh_sqdist(pts, verts, faces)
    torch.testing.assert_close(d, torch.tensor([[1.0, 1.0, 0.0, 5.0]]))
    d.sum().backward()
    assert torch.isfinite(verts.grad).all() and torch.isfinite(pts.grad).all()


def test_part_distances():
    g = torch.Generator().manual_seed(8)
    verts, faces, pts = _mesh_batch(g)
    faces = faces[5:]
    labels = torch.randint(0, 16, (3, 500), generator=g)
    labels[0, labels[0] == 7] = 8  # bone 7 has no points in sample 0
    part_idx = [torch.randperm(faces.shape[0], generator=g)[: 5 + 3 * k] for k in range(15)]
    part_idx[13] = part_idx[13][:0]  # an empty part
    pts[1, 0] = verts[1, faces[part_idx[2][0], 0]]  # a point exactly on its part: distance 0
    labels[1, 0] = 3
    vv = verts.clone().requires_grad_(True)
    means, counts = part_point_mesh_sqdist(pts, labels, vv, part_idx, faces=faces)
    means_t, counts_t = part_point_mesh_sqdist(pts, labels, verts, [faces[i] for i in part_idx])
    torch.testing.assert_close(means.detach(), means_t, rtol=0, atol=0)
    assert torch.equal(counts, counts_t)
    for b in range(3):
        for k in range(1, 16):
            sel = labels[b] == k
            assert counts[b, k - 1] == sel.sum()
            fk = faces[part_idx[k - 1]]
            if sel.sum() == 0 or fk.shape[0] == 0:
                assert means[b, k - 1] == 0
                continue
            t = verts[b][fk]
            p = pts[b][sel]
            d = reference_sqdist(p[:, None], t[None, :, 0], t[None, :, 1], t[None, :, 2]).amin(-1)
            expect = d.sum() / (d > 0).sum().clamp(min=1)
            torch.testing.assert_close(means[b, k - 1].detach(), expect, rtol=1e-9, atol=1e-12)
    assert means[0, 6] == 0 and counts[0, 6] == 0
    means.sum().backward()
    assert torch.isfinite(vv.grad).all() and vv.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="faces"):
        part_point_mesh_sqdist(pts, labels, verts, part_idx)


@pytest.mark.parametrize("grouping", ["random", "one group", "singletons"])
def test_any_face_grouping_gives_the_same_faces(hand_model, grouping, monkeypatch):
    """The cluster pruning of `nearest_face` only saves work: a random grouping, one group of all
    faces and one group per face pick the same faces as the default k-d grouping, with and without
    part labels, on posed stand-in hands with points near and far from the surface."""
    import render.geometry as geometry
    g = torch.Generator().manual_seed(11)
    params = torch.zeros(3, 62)
    params[:, 3:48] = torch.randn(3, 45, generator=g) * 0.6
    verts = hand_model.mano_mm(params)[0] / 125.0
    near = verts[:, torch.randint(0, verts.shape[1], (300,), generator=g)] + 0.02 * torch.randn(3, 300, 3, generator=g)
    pts = torch.cat([near, 0.8 * torch.randn(3, 100, 3, generator=g)], dim=1)
    labels = torch.randint(0, 16, (3, 400), generator=g)
    faces = hand_model.faces
    _, allowed = geometry._part_table(hand_model.part_faces, faces, faces.device)
    default = [geometry.nearest_face(pts, verts, faces, 256),
               geometry.nearest_face(pts, verts, faces, 256, labels, allowed)]
    F = faces.shape[0]
    if grouping == "random":
        ids = torch.randperm(F, generator=g)
        table = torch.cat([ids, ids[:(-F) % 5]]).reshape(-1, 5)
    elif grouping == "one group":
        table = torch.arange(F)[None]
    else:
        table = torch.arange(F)[:, None]
    monkeypatch.setattr(geometry, "face_clusters", lambda centroids, faces_: table)
    other = [geometry.nearest_face(pts, verts, faces, 256),
             geometry.nearest_face(pts, verts, faces, 256, labels, allowed)]
    assert torch.equal(default[0], other[0]) and torch.equal(default[1], other[1])
    # and the unrestricted faces are the float64 brute-force nearest (ties -> smallest index)
    t = verts.double()[:, faces]
    ref = reference_sqdist(pts.double()[:, :, None], t[:, None, :, 0], t[:, None, :, 1], t[:, None, :, 2])
    d_got = ref.gather(2, default[0][..., None])[..., 0]
    assert (d_got - ref.amin(-1)).abs().max() <= 1e-6 * ref.amin(-1).clamp(min=1e-3).max()
