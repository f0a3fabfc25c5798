"""Exact point-to-triangle-mesh squared distances with gradients (spec 7.2, 7.3, R22).

* No area threshold: any non-degenerate triangle, however small (MANO triangles are ~1e-3 nu^2),
  uses the exact Voronoi-region closest point (Ericson, Real-Time Collision Detection 5.1.5).
  Degenerate triangles (collinear or coincident vertices) fall back to the closest of their three
  edge segments, so they never produce NaN/Inf.
* Gradients (to points and vertices) are those of |p - q|^2 with q = sum_i l_i v_i the closest point
  and its barycentrics l_i held fixed (envelope theorem: d/dp = 2(p - q), d/dv_i = -2 l_i (p - q)),
  exact wherever the distance is differentiable; only the winning triangle of each point receives
  gradient.
* Speed and memory: the nearest face is searched without gradient, pruning with exact bounds (a
  two-level bounding-volume search): the faces are grouped once into clusters of <= CLUSTER_SIZE
  nearby faces (k-d tree leaves); per mesh each cluster gets a bounding sphere.  The distances of a
  chunk of points to all cluster centres come from one matmul, an on-mesh upper bound U per point
  from a face of the nearest cluster, then only the faces of clusters within U are tested, by their
  bounding sphere, then bounding disc in their plane, and the survivors exactly.  Against testing
  every face's sphere it picks the same faces; the part-aware search, whose clusters are also
  filtered by the part's faces, is ~2.5x faster, the plain one about as fast (bench/bench_render.py).
  Points are processed in chunks of `chunk_size` (default 8192: ~100 MiB at 32 x 2048 points), so
  memory is O(chunk_size * F / CLUSTER_SIZE) + O(candidate pairs).
  The part-aware search (7.3) is the same pass with a label -> allowed-faces table.
"""
from __future__ import annotations

import torch
from torch import Tensor

CLUSTER_SIZE = 6  # faces per cluster of the nearest-face search (a speed setting, not a result one)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


class _V:
    """A 3-vector field stored as three component tensors (fast elementwise dot products)."""
    __slots__ = ("x", "y", "z")

    def __init__(self, x: Tensor, y: Tensor, z: Tensor):
        self.x, self.y, self.z = x, y, z

    @staticmethod
    def of(t: Tensor) -> "_V":
        return _V(*t.unbind(-1))

    def __sub__(self, o: "_V") -> "_V":
        return _V(self.x - o.x, self.y - o.y, self.z - o.z)

    def dot(self, o: "_V") -> Tensor:
        return self.x * o.x + self.y * o.y + self.z * o.z

    def cross(self, o: "_V") -> "_V":
        return _V(self.y * o.z - self.z * o.y, self.z * o.x - self.x * o.z, self.x * o.y - self.y * o.x)


@torch.no_grad()
def closest_barycentric(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Barycentric coordinates (..., 3) of the point of triangle (a, b, c) closest to p (..., 3).

    Voronoi regions tested in Ericson's order (A, B, AB, C, AC, BC, face), computed in float64
    whatever the input dtype; degenerate triangles (|ab x ac|^2 <= 1e-12 |ab|^2 |ac|^2, i.e. an angle
    below 1e-6 rad, or a zero edge) use the closest of the three edge segments.
    """
    dtype = p.dtype
    P, A, Bv, C = (_V.of(t.double()) for t in (p, a, b, c))
    ab, ac, ap, bp, cp = Bv - A, C - A, P - A, P - Bv, P - C
    d1, d2, d3, d4, d5, d6 = ab.dot(ap), ac.dot(ap), ab.dot(bp), ac.dot(bp), ab.dot(cp), ac.dot(cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    zero, one = torch.zeros_like(d1), torch.ones_like(d1)

    def safe(x: Tensor) -> Tensor:
        return torch.where(x != 0, x, one)

    denom = safe(va + vb + vc)
    l1, l2 = vb / denom, vc / denom  # face region
    l0 = 1 - l1 - l2
    t_bc = (d4 - d3) / safe((d4 - d3) + (d5 - d6))
    w_ac = d2 / safe(d2 - d6)
    v_ab = d1 / safe(d1 - d3)
    regions = (  # lowest priority first (Ericson returns at the first match)
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), zero, 1 - t_bc, t_bc),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), 1 - w_ac, zero, w_ac),
        ((d6 >= 0) & (d5 <= d6), zero, zero, one),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), 1 - v_ab, v_ab, zero),
        ((d3 >= 0) & (d4 <= d3), zero, one, zero),
        ((d1 <= 0) & (d2 <= 0), one, zero, zero),
    )
    for m, r0, r1, r2 in regions:
        l0, l1, l2 = torch.where(m, r0, l0), torch.where(m, r1, l1), torch.where(m, r2, l2)
    lam = torch.stack([l0, l1, l2], -1)
    n = ab.cross(ac)
    degen = ~(n.dot(n) > 1e-12 * ab.dot(ab) * ac.dot(ac))
    if degen.any():
        idx = torch.nonzero(degen.reshape(-1), as_tuple=True)[0]
        flat = lambda x: x.double().reshape(-1, 3).index_select(0, idx)  # noqa: E731
        lam.view(-1, 3)[idx] = _segments_barycentric(flat(p), flat(a), flat(b), flat(c))
    return lam.to(dtype)


def _segments_barycentric(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Barycentrics (N, 3) of the closest point on the three edge segments (degenerate triangles)."""
    best_d, best = None, None
    for i, j in ((0, 1), (1, 2), (2, 0)):
        x, y = (a, b, c)[i], (a, b, c)[j]
        e = y - x
        ee = _dot(e, e)
        t = (_dot(p - x, e) / torch.where(ee > 0, ee, torch.ones_like(ee))).clamp(0, 1)
        t = torch.where(ee > 0, t, torch.zeros_like(t))
        d = _dot(p - (x + t[:, None] * e), p - (x + t[:, None] * e))
        lam = torch.zeros_like(p)
        lam[:, i], lam[:, j] = 1 - t, t
        if best is None:
            best_d, best = d, lam
        else:
            better = d < best_d
            best_d = torch.where(better, d, best_d)
            best = torch.where(better[:, None], lam, best)
    return best


def point_triangle_sqdist(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Squared distance (...) from points p (..., 3) to triangles (a, b, c) (..., 3), differentiable."""
    lam = closest_barycentric(p.detach(), a.detach(), b.detach(), c.detach())
    q = lam[..., 0:1] * a + lam[..., 1:2] * b + lam[..., 2:3] * c
    return _dot(p - q, p - q)


@torch.no_grad()
def nearest_face(p: Tensor, verts: Tensor, faces: Tensor, chunk_size: int, labels: Tensor | None = None,
                 allowed: Tensor | None = None) -> Tensor:
    """Index (B, P) into `faces` of the triangle nearest to each point p (B, P, 3) of its mesh.

    labels (B, P) long + allowed (L, F) bool restrict point i to the faces f with allowed[labels[i], f]
    (the part-aware search of spec 7.3 in the same pass); a point whose row allows no face gets index 0.
    Exact search, all meshes at once, in chunks of `chunk_size` points, pruned by bounds that hold
    for every face they discard:
    (1) the faces are grouped into clusters of nearby faces (`face_clusters`), each with a bounding
    sphere per mesh; (2) an upper bound U per point = exact distance to the (allowed) face of nearest
    centroid in the cluster of nearest centre; (3) candidate clusters = those whose sphere comes
    within U, candidate faces = their faces whose bounding sphere, then bounding disc in their plane,
    come within U; (4) their exact distances and the minimum, ties -> smallest face index.
    Any grouping gives the same result (it only changes how much is pruned).
    """
    B, P, _ = p.shape
    F, dev = faces.shape[0], verts.device
    off = verts.mean(1, keepdim=True)  # centre each mesh for precision
    verts, p = verts - off, p - off
    tri = verts[:, faces]  # (B, F, 3, 3)
    cen = tri.mean(2)
    rad = (tri - cen[:, :, None]).norm(dim=-1).amax(-1)  # (B, F)
    n = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    nn = n.norm(dim=-1, keepdim=True)
    # unit normals; (nearly) degenerate faces get 0, i.e. the trivial plane bound 0
    nrm = torch.where(nn > 1e-2 * rad[..., None] ** 2, n / nn.clamp(min=1e-30), torch.zeros_like(n))
    tol = 1e-5 * verts.abs().amax().item() + 1e-30
    groups = face_clusters(cen[0], faces)                                   # (K, G) face ids
    g_faces = cen[:, groups]                                                # (B, K, G, 3)
    g_cen = g_faces.mean(2)                                                 # (B, K, 3)
    g_rad = ((g_faces - g_cen[:, :, None]).norm(dim=-1) + rad[:, groups]).amax(-1)  # (B, K)
    soa = (*cen.reshape(B * F, 3).unbind(-1), *nrm.reshape(B * F, 3).unbind(-1), rad.reshape(-1))
    mesh = dict(tri=tri.reshape(B * F, 3, 3), cen=cen.reshape(B * F, 3), face_soa=[x.contiguous() for x in soa],
                groups=groups, g_cen=g_cen, g_rad=g_rad, F=F)
    g_allowed = None if allowed is None else allowed[:, groups].any(-1)     # (L, K)
    out = torch.empty(B, P, dtype=torch.long, device=dev)
    step = max(1, chunk_size // max(B, 1))
    for s in range(0, P, step):
        lab = None if labels is None else labels[:, s:s + step]
        out[:, s:s + step] = _search_chunk(p[:, s:s + step], mesh, tol, lab, allowed, g_allowed)
    return out


def _search_chunk(pc: Tensor, mesh: dict, tol: float, labels: Tensor | None, allowed: Tensor | None,
                  g_allowed: Tensor | None) -> Tensor:
    """Steps (2)-(4) of `nearest_face` for points pc (B, m, 3) (labels (B, m) or None).
    Returns face ids (B, m) (0 where no face is allowed)."""
    B, m, _ = pc.shape
    F, groups, dev = mesh["F"], mesh["groups"], pc.device
    K, G = groups.shape
    N = B * m
    pts = pc.reshape(N, 3)
    base = (F * torch.arange(B, device=dev)).repeat_interleave(m)           # (N,) flat offset b*F
    lab = None if labels is None else labels.reshape(N)
    # (2) cluster of nearest centre (an allowed one), its allowed face of nearest centroid, U
    g_cen = mesh["g_cen"]
    pn, gn = (pc * pc).sum(-1), (g_cen * g_cen).sum(-1)
    # squared distances to the cluster centres in expanded form (one matmul); its rounding error is
    # at most 16 eps (|p|^2 + |c|^2), added to the reach below
    d2c = torch.baddbmm(pn[:, :, None] + gn[:, None, :], pc, g_cen.transpose(1, 2), alpha=-2.0).reshape(N, K)
    slack = 16 * torch.finfo(pc.dtype).eps * (pn.amax().item() + gn.amax().item())
    if lab is not None:
        d2c = d2c.masked_fill(~g_allowed[lab], float("inf"))
    cand = groups[d2c.argmin(-1)] + base[:, None]                           # (N, G) flat face ids
    d2f = (pts[:, None] - mesh["cen"][cand]).square().sum(-1)
    if lab is not None:
        d2f = d2f.masked_fill(~allowed[lab[:, None], cand - base[:, None]], float("inf"))
    first = cand.gather(1, d2f.argmin(-1, keepdim=True))[:, 0]
    t = mesh["tri"].index_select(0, first)
    ub = point_triangle_sqdist(pts, t[:, 0], t[:, 1], t[:, 2]).sqrt() * (1 + 1e-6) + tol  # (N,)
    # (3) clusters, then faces, that can come within U; the faces of a candidate cluster as a (Q, G) block
    g_reach = (ub.view(B, m, 1) + tol + mesh["g_rad"][:, None, :]).square_().add_(slack).reshape(N, K)
    reach_c = d2c <= g_reach                                                # never passes inf
    pi, k = torch.nonzero(reach_c, as_tuple=True)
    fi = groups.index_select(0, k) + base.index_select(0, pi)[:, None]      # (Q, G) flat face ids
    flat = fi.reshape(-1)
    c = [x.index_select(0, flat).view(fi.shape) for x in mesh["face_soa"]]  # cx cy cz nx ny nz rad
    px, py, pz = (x.index_select(0, pi)[:, None] for x in pts.unbind(-1))
    rx, ry, rz = px - c[0], py - c[1], pz - c[2]
    r2 = rx * rx + ry * ry + rz * rz
    h2 = (rx * c[3] + ry * c[4] + rz * c[5]).square_()
    u = ub.index_select(0, pi)[:, None]
    # disc bound: the face lies in its plane, inside the disc of radius rad around its centroid, so
    # |p - q|^2 >= h^2 + max(0, L - rad)^2 (h: height over the plane, L: in-plane distance to the centroid)
    gap = ((r2 - h2).clamp_(min=0).sqrt_() - c[6] - tol).clamp_(min=0)
    ok = (r2 <= (u + c[6] + tol).square()) & (h2 + gap * gap <= u * u)
    if lab is not None:
        ok &= allowed[lab.index_select(0, pi)[:, None], fi - base.index_select(0, pi)[:, None]]
    q, j = torch.nonzero(ok, as_tuple=True)
    pi, fi = pi.index_select(0, q), fi[q, j]
    t = mesh["tri"].index_select(0, fi)
    d2 = point_triangle_sqdist(pts.index_select(0, pi), t[:, 0], t[:, 1], t[:, 2])
    # (4) minimum per point, ties -> smallest face index
    best = torch.full((N,), float("inf"), dtype=pc.dtype, device=dev)
    best.scatter_reduce_(0, pi, d2, reduce="amin")
    win = d2 == best.index_select(0, pi)
    big = B * F
    fbest = torch.full((N,), big, dtype=torch.long, device=dev)
    fbest.scatter_reduce_(0, pi, torch.where(win, fi, torch.full_like(fi, big)), reduce="amin")
    return torch.where(fbest < big, fbest - base, torch.zeros_like(fbest)).view(B, m)


def face_clusters(centroids: Tensor, faces: Tensor, size: int = CLUSTER_SIZE) -> Tensor:
    """Faces grouped by position: (K, G) long face ids, rows padded with their own first face.

    centroids (F, 3) of one mesh.  Median splits along the longest extent until a group holds at
    most `size` faces (a k-d tree's leaves).  Cached per faces tensor; any grouping of all F faces
    is correct for `nearest_face`, a compact one prunes more.
    """
    key = (faces.data_ptr(), tuple(faces.shape), str(faces.device))
    if _CLUSTERS.get("key") != key:
        c = centroids.detach().double().cpu()
        leaves, todo = [], [torch.arange(c.shape[0])]
        while todo:
            ids = todo.pop()
            if len(ids) <= size:
                leaves.append(ids)
                continue
            x = c[ids]
            axis = int((x.amax(0) - x.amin(0)).argmax())
            order = ids[torch.argsort(x[:, axis], stable=True)]
            todo += [order[: len(ids) // 2], order[len(ids) // 2:]]
        G = max(len(ids) for ids in leaves)
        table = torch.stack([torch.cat([ids, ids[:1].expand(G - len(ids))]) for ids in leaves])
        _CLUSTERS.update(key=key, table=table.to(faces.device), faces=faces)
    return _CLUSTERS["table"]


_CLUSTERS: dict = {}


def _padded_sqdist(p: Tensor, verts: Tensor, faces: Tensor, chunk_size: int, labels: Tensor | None = None,
                   allowed: Tensor | None = None) -> Tensor:
    """Differentiable squared distance (B, P) of points p (B, P, 3) to meshes (verts, faces)
    (restricted per point by labels/allowed as in `nearest_face`)."""
    B, P, _ = p.shape
    if P == 0:
        return p.sum(-1) + 0.0 * verts.sum()
    face = nearest_face(p.detach(), verts.detach(), faces, chunk_size, labels, allowed)  # (B, P)
    t = verts[torch.arange(B, device=p.device)[:, None, None], faces[face]]  # (B, P, 3, 3)
    return point_triangle_sqdist(p, t[..., 0, :], t[..., 1, :], t[..., 2, :])


def point_mesh_sqdist(points: Tensor, verts: Tensor, faces: Tensor, chunk_size: int = 8192) -> Tensor:
    """Squared distance from each point to the closest triangle of its mesh.

    points (B, P, 3), verts (B, V, 3) (any unit; same for both), faces (F, 3) long -> (B, P),
    differentiable w.r.t. points and verts.  chunk_size: points searched at once (memory bound).
    """
    B, P, _ = points.shape
    if faces.shape[0] == 0:
        raise ValueError("point_mesh_sqdist needs at least one face")
    faces = faces.to(device=verts.device, dtype=torch.long)
    return _padded_sqdist(points, verts, faces, chunk_size)


def part_point_mesh_sqdist(points: Tensor, labels: Tensor, verts: Tensor, part_faces: list[Tensor],
                           faces: Tensor | None = None, chunk_size: int = 8192) -> tuple[Tensor, Tensor]:
    """Part-aware distance (spec 7.3): each point labelled k = 1..15 against the faces of part k.

    points (B, P, 3), labels (B, P) long in 0..15 (0 = palm: not a part, ignored), verts (B, V, 3).
    part_faces: 15 tensors for bones 1..15, either triangles (n_k, 3) of vertex indices, or 1-D face
    indices into `faces` (F, 3) (e.g. HandModel.part_faces with faces=HandModel.faces).
    Returns (means (B, 15), counts (B, 15)): column k-1 = sum of squared distances of the points
    labelled k divided by the number of those points with non-zero distance (0 if none), and
    counts = number of points labelled k (long).  One search for all parts (`nearest_face` with a
    part -> face table).
    """
    if len(part_faces) != 15:
        raise ValueError(f"part_faces must hold 15 face sets, got {len(part_faces)}")
    mesh_faces, allowed = _part_table(part_faces, faces, verts.device)
    labels = labels.to(device=points.device, dtype=torch.long)
    one_hot = torch.nn.functional.one_hot(labels, 16)[..., 1:]  # (B, P, 15): part k-1 of each point
    counts = one_hot.sum(1)
    if mesh_faces.shape[0] == 0 or points.shape[1] == 0:
        zero = points.new_zeros(points.shape[0], 15) + 0.0 * verts.sum()
        return zero, counts
    d2 = _padded_sqdist(points, verts, mesh_faces, chunk_size, labels, allowed)
    used = (labels >= 1) & allowed.any(1)[labels]       # a part with points and faces
    d2 = torch.where(used, d2, torch.zeros_like(d2))
    one_hot = one_hot.to(d2.dtype)
    sums = torch.einsum("bp,bpk->bk", d2, one_hot)
    nonzero = torch.einsum("bp,bpk->bk", ((d2.detach() > 0) & used).to(d2.dtype), one_hot)
    return sums / nonzero.clamp(min=1), counts


def _part_table(part_faces: list[Tensor], faces: Tensor | None, device) -> tuple[Tensor, Tensor]:
    """(faces (F, 3), allowed (16, F) bool): the triangles searched and which of them each label
    may use (row 0 = palm: none).  Index form: the mesh's faces; triangle form: the parts' triangles
    concatenated (so ties keep each part's own order)."""
    parts = [pf.to(device=device, dtype=torch.long) for pf in part_faces]
    if all(pf.dim() == 1 for pf in parts):
        if faces is None:
            raise ValueError("part_faces given as face indices: pass faces=(F, 3)")
        mesh_faces = faces.to(device=device, dtype=torch.long)
        allowed = torch.zeros(16, mesh_faces.shape[0], dtype=torch.bool, device=device)
        for k, pf in enumerate(parts, start=1):
            allowed[k, pf] = True
        return mesh_faces, allowed
    tris = [pf.reshape(-1, 3) for pf in parts]
    sizes = torch.tensor([t.shape[0] for t in tris], device=device)
    owner = torch.repeat_interleave(torch.arange(1, 16, device=device), sizes)
    allowed = owner[None, :] == torch.arange(16, device=device)[:, None]
    return torch.cat(tris), allowed
