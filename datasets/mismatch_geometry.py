"""Mesh geometry for the model-mismatch set: sections, rays, inside tests, distances, model-space fits.

All arrays float64 in mm unless stated; meshes are (V, 3) vertices with outward-oriented (F, 3) faces.
"""
from __future__ import annotations

import numpy as np
import torch

from hand.params import POSE, SCALE, TRANSLATION, identity_params


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def polygon_centroid(loop: np.ndarray) -> np.ndarray:
    """Area centroid (3,) of a closed, nearly planar polygon loop (n, 3)."""
    c0 = loop.mean(axis=0)
    a, b = loop - c0, np.roll(loop, -1, axis=0) - c0
    cr = np.cross(a, b)
    area = 0.5 * cr @ _unit(cr.sum(axis=0))
    return c0 + (area[:, None] * (a + b) / 3).sum(axis=0) / area.sum()


def plane_section(verts: np.ndarray, faces: np.ndarray, point: np.ndarray, normal: np.ndarray,
                  max_dist: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Cut an outward-oriented mesh by the plane (point, unit normal), segments within max_dist mm of
    point -> (area centroid (3,), segment end points (S, 2, 3) oriented counter-clockwise about
    normal, section area mm^2)."""
    s = (verts - point) @ normal
    s = np.where(s == 0, 1e-9, s)
    sf = s[faces]
    f = faces[(sf.min(1) < 0) & (sf.max(1) > 0)]
    sf = s[f]
    hits, pts = [], []
    for i, j in ((0, 1), (1, 2), (2, 0)):
        sa, sb = sf[:, i], sf[:, j]
        hits.append(sa * sb < 0)
        frac = sa / np.where(hits[-1], sa - sb, 1.0)
        pts.append(verts[f[:, i]] + frac[:, None] * (verts[f[:, j]] - verts[f[:, i]]))
    hits, pts = np.stack(hits, 1), np.stack(pts, 1)
    first = np.argsort(~hits, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(f))
    p0, p1 = pts[rows, first[:, 0]], pts[rows, first[:, 1]]
    n_face = np.cross(verts[f[:, 1]] - verts[f[:, 0]], verts[f[:, 2]] - verts[f[:, 0]])
    flip = ((p1 - p0) * np.cross(normal, n_face)).sum(1) < 0
    p0, p1 = np.where(flip[:, None], p1, p0), np.where(flip[:, None], p0, p1)
    keep = np.linalg.norm(0.5 * (p0 + p1) - point, axis=1) < max_dist
    p0, p1 = p0[keep], p1[keep]
    area = 0.5 * np.cross(p0 - point, p1 - point) @ normal
    centroid = point + (area[:, None] * (p0 + p1 - 2 * point) / 3).sum(0) / area.sum()
    return centroid, np.stack([p0, p1], 1), float(area.sum())


def ray_hit(verts: np.ndarray, faces: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> float:
    """Distance along a unit ray to the nearest face (Moller-Trumbore), inf when it misses."""
    v0 = verts[faces[:, 0]]
    e1, e2 = verts[faces[:, 1]] - v0, verts[faces[:, 2]] - v0
    pv = np.cross(direction, e2)
    det = (e1 * pv).sum(1)
    inv = 1.0 / np.where(np.abs(det) < 1e-12, np.nan, det)
    tv = origin - v0
    a = (tv * pv).sum(1) * inv
    qv = np.cross(tv, e1)
    b = (qv @ direction) * inv
    t = (e2 * qv).sum(1) * inv
    ok = (a >= 0) & (b >= 0) & (a + b <= 1) & (t > 1e-9)
    return float(t[ok].min()) if ok.any() else float("inf")


def winding_number(points: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Generalized winding number (P,) of points (P, 3) w.r.t. a closed outward mesh (1 inside, 0 out)."""
    a, b, c = (verts[faces[:, i]][None] - points[:, None] for i in range(3))
    la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
    num = (a * np.cross(b, c)).sum(-1)
    den = la * lb * lc + (a * b).sum(-1) * lc + (a * c).sum(-1) * lb + (b * c).sum(-1) * la
    return 2.0 * np.arctan2(num, den).sum(-1) / (4 * np.pi)


def surface_distance(points: np.ndarray, verts: np.ndarray, faces: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Exact distance (P,) from points (P, 3) to the triangles of a mesh (nearest face, edge or corner)."""
    A, B, C = (verts[faces[:, i]] for i in range(3))
    ab, ac = B - A, C - A
    n = np.cross(ab, ac)
    nn = (n * n).sum(1)
    d00, d01, d11 = (ab * ab).sum(1), (ab * ac).sum(1), (ac * ac).sum(1)
    den = d00 * d11 - d01 * d01
    out = np.empty(len(points))
    for i in range(0, len(points), chunk):
        p = points[i:i + chunk, None]
        h = ((p - A) * n).sum(-1) / nn
        q = p - h[..., None] * n - A
        d20, d21 = (q * ab).sum(-1), (q * ac).sum(-1)
        bv, bw = (d11 * d20 - d01 * d21) / den, (d00 * d21 - d01 * d20) / den
        inside = (bv >= 0) & (bw >= 0) & (bv + bw <= 1)
        dist = np.where(inside, np.abs(h) * np.sqrt(nn), np.inf)
        for X, Y in ((A, B), (B, C), (C, A)):
            e = Y - X
            t = np.clip(((p - X) * e).sum(-1) / (e * e).sum(-1), 0, 1)
            dist = np.minimum(dist, np.linalg.norm(p - X - t[..., None] * e, axis=-1))
        out[i:i + chunk] = dist.min(1)
    return out


def _kabsch(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """X (V, 3) rigidly aligned onto Y (V, 3) (rotation about the centroid + translation)."""
    mx, my = X.mean(0), Y.mean(0)
    U, _, Vt = np.linalg.svd((X - mx).T @ (Y - my))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return (X - mx) @ (U @ D @ Vt) + my


def shape_space_fit(verts: np.ndarray, hand_model, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Best fit of the model's REST shape space to a rest mesh with the same vertex order.

    Model: s * (template + shapedirs @ beta) + t (linear in s, s*beta, t: 14 unknowns), alternated
    with a rigid alignment of verts (V, 3) mm.  Returns (aligned verts (V, 3), fitted model (V, 3)).
    """
    T = hand_model.v_template.double().cpu().numpy() * 1e3
    S = hand_model.shapedirs.double().cpu().numpy() * 1e3
    A = np.concatenate([T.reshape(-1, 1), S.reshape(-1, S.shape[-1]), np.tile(np.eye(3), (len(T), 1))], 1)
    Y = verts
    for _ in range(iters):
        M = (A @ np.linalg.lstsq(A, Y.reshape(-1), rcond=None)[0]).reshape(-1, 3)
        Y = _kabsch(verts, M)
    return Y, (A @ np.linalg.lstsq(A, Y.reshape(-1), rcond=None)[0]).reshape(-1, 3)


def model_fit(verts: np.ndarray, hand_model, rounds: int = 5, steps: int = 60) -> np.ndarray:
    """Best fit of the full model (pose, shape, rotation, scale, translation) to verts (V, 3) mm by
    L-BFGS on the vertex distances, from the flat hand; returns the fitted mesh (V, 3) float64."""
    target = torch.as_tensor(verts, dtype=torch.float32)
    p = identity_params(1)
    p[:, POSE] = -(hand_model.hands_mean @ hand_model.hands_components.T)  # articulation 0 = flat
    p.requires_grad_(True)
    opt = torch.optim.LBFGS([p], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def mesh() -> torch.Tensor:
        v, _ = hand_model.mano_mm(p)
        return (p[:, SCALE, None, None] * v[:, :len(verts)] + p[:, None, TRANSLATION])[0]

    def closure():
        opt.zero_grad()
        loss = ((mesh() - target) ** 2).sum(1).mean()
        loss.backward()
        return loss

    for _ in range(rounds):
        opt.step(closure)
    with torch.no_grad():
        return mesh().double().numpy()
