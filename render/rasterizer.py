"""Hard z-buffer depth rasterizer with depth gradients (spec section 4).

Conventions (those of `render.camera`, nothing else):

* Camera frame x right, y down, z forward, millimetres.  Intrinsics K = [[fx,0,cx],[0,fy,cy],[0,0,1]].
* Pixel (row r, column c) samples the image point u = c, v = r exactly (pixel centres at integers).
* depth[b, r, c] = camera z (mm, not ray length) of the nearest face covering that pixel centre,
  interpolated perspective-correctly (1/z is affine in screen space); 0 where nothing covers it.
* Hard z-buffer: one face per pixel, no blur, no anti-aliasing, no back-face culling.  A pixel centre
  exactly on an edge is covered by that face; ties in depth go to the smaller face index.
* Exact coverage (torch backend): a pixel centre is covered by a face iff the three edge functions
  of the face, evaluated in float64 on its projected vertices (as projected in the dtype of
  `verts`), are all >= 0 -- for float32 and float64 input alike, with no slack: a centre 1e-6 px
  outside a face is not covered.  The edge function of a shared edge is evaluated identically for
  both faces (from its lower-index vertex), so a centre beside an edge shared by faces on either
  side is covered by exactly one of them (watertight, no double coverage); only a centre whose
  float64 edge function is exactly 0 (on the edge up to its float64 rounding, ~1e-13 px) is
  covered by both.  The depth order of the faces covering a centre uses the inverse depth
  interpolated in the working dtype (a near tie within its rounding, ~1e-6 relative in float32,
  may go either way).
* Faces with any vertex at z <= Z_EPS mm (behind or crossing the camera plane) are skipped.
  Faces whose projected area is at most AREA_EPS px^2, in float64 or in the working dtype (the
  depth interpolation divides by it), are degenerate and cover nothing.
* Gradients: depth -> verts through the interpolated depth of the winning face only (the winner's
  barycentric coordinates depend on the projected x, y and on z).  Coverage has no gradient
  (no silhouette gradient), as pytorch3d with blur_radius=0, faces_per_pixel=1; with exact coverage
  the gradient of any function of the depth over all pixels, silhouettes included, is that of the
  exact hard rasterization (central differences of a float64 reference agree, tests T5).

Torch backend ("torch", used by "auto"): vectorized, any device, no Python loop over faces or pixels.
1. project all vertices; per face, its rows ceil(v_min)..floor(v_max), split at the middle vertex so
   that two edges bound each row (repeat_interleave over (half-face, row) pairs);
2. per row, the edge crossings in the working dtype with a proven rounding bound: the columns
   certainly inside both edges, and the few (~1e-5 px from an edge in float32) that float64 edge
   functions decide (see `_zbuffer_torch`); perspective-correct inverse depth of each pair;
3. z-buffer by scatter_reduce on the pixel key, winner = nearest, then smallest face index;
4. recompute the winning depth differentiably for covered pixels only and scatter it into the image.

"pytorch3d" backend: pytorch3d's rasterize_meshes (when importable) fed with vertices converted to its
+x left / +y up non-square NDC so that both backends produce the same image.
"""
from __future__ import annotations

import torch
from torch import Tensor

from render.camera import project

Z_EPS = 1e-6  # mm: faces with a vertex at z <= Z_EPS are skipped
AREA_EPS = 1e-10  # px^2: faces with a smaller projected area are degenerate (cover nothing)


def _check_inputs(verts: Tensor, faces: Tensor, K: Tensor) -> Tensor:
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (B, V, 3), got {tuple(verts.shape)}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    K = K.to(device=verts.device, dtype=verts.dtype)
    if K.dim() == 2:
        K = K.expand(verts.shape[0], 3, 3)
    if K.shape != (verts.shape[0], 3, 3):
        raise ValueError(f"K must be (3, 3) or (B, 3, 3), got {tuple(K.shape)}")
    return K


def _face_setup(uvz: Tensor, faces: Tensor) -> dict[str, Tensor]:
    """Per-face screen quantities (B, F) from projected vertices (B, V, 3) = (u, v, z).

    With d = (x - u0, y - v0) relative to vertex 0, e1 = p1 - p0, e2 = p2 - p0 and
    area = e1 x e2 (a x b = a_x b_y - a_y b_x), the barycentrics are
    l1 = (d x e2)/area, l2 = (e1 x d)/area, l0 = 1 - l1 - l2, and the inverse depth is affine:
    1/z = C + A dx + Bc dy (perspective-correct).  Safe denominators keep every entry finite
    (also in the backward) for degenerate or invalid faces, which are flagged by `valid`.
    """
    tri = uvz[:, faces]  # (B, F, 3, 3)
    u, v, z = tri[..., 0], tri[..., 1], tri[..., 2]
    e1x, e1y = u[..., 1] - u[..., 0], v[..., 1] - v[..., 0]
    e2x, e2y = u[..., 2] - u[..., 0], v[..., 2] - v[..., 0]
    area = e1x * e2y - e1y * e2x
    with torch.no_grad():
        finite = torch.isfinite(tri).all(-1).all(-1)
        valid = finite & (z > Z_EPS).all(-1) & (area.abs() > AREA_EPS)
    one = torch.ones_like(area)
    area_s = torch.where(valid, area, one)
    zs = torch.where(valid[..., None], z, torch.ones_like(z))
    iz0 = 1.0 / zs[..., 0]
    q1, q2 = 1.0 / zs[..., 1] - iz0, 1.0 / zs[..., 2] - iz0
    A = (e2y * q1 - e1y * q2) / area_s
    Bc = (e1x * q2 - e2x * q1) / area_s
    return dict(u=u, v=v, u0=u[..., 0], v0=v[..., 0], e1x=e1x, e1y=e1y, e2x=e2x, e2y=e2y,
                area=area, valid=valid, A=A, Bc=Bc, C=iz0)


def _repeat_ranges(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For counts (R,) >= 0: owner (N,) row of each expanded item and its offset within the row."""
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(owner.shape[0], device=counts.device) - start.index_select(0, owner)
    return owner, local


def _exact_inside(uvz: Tensor, faces: Tensor, fid: Tensor, sgn: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Float64 edge-function test of candidate pairs: pixel centre (x, y) inside face fid = b*F + f.

    uvz (B, V, 3) projected vertices (working dtype, converted to float64 here); sgn (B*F,) sign of
    the face's area.  The edge function of an edge is always evaluated from its lower-index vertex,
    cross(p_hi - p_lo, p - p_lo), then signed by the face's orientation: two faces sharing an edge
    get exactly opposite values, so a centre beside a shared edge lies in exactly one of them (in
    both only where the value is exactly 0, by the inclusive rule).
    """
    F = faces.shape[0]
    b = torch.div(fid, F, rounding_mode="floor")
    vi = faces.index_select(0, fid - b * F)  # (N, 3): edges (0, 1), (1, 2), (2, 0)
    vj = vi.roll(-1, 1)
    flip = (vi > vj)[..., None]
    pi = uvz[b[:, None], vi, :2].to(torch.float64)  # (N, 3, 2)
    pj = pi.roll(-1, 1)
    lo, hi = torch.where(flip, pj, pi), torch.where(flip, pi, pj)
    d = hi - lo
    r = torch.stack([x, y], -1).to(torch.float64)[:, None] - lo
    e = (d[..., 0] * r[..., 1] - d[..., 1] * r[..., 0]) * sgn.index_select(0, fid).to(torch.float64)[:, None]
    return (torch.where(flip[..., 0], -e, e) >= 0).all(1)


def _sort3(v: tuple[Tensor, Tensor, Tensor], u: tuple[Tensor, Tensor, Tensor]):
    """Sort three (B, F) keys v ascending (compare-exchange network), carrying u; returns the
    sorted (v, u) and whether the permutation is odd."""
    v, u, odd = list(v), list(u), None
    for i, j in ((0, 1), (1, 2), (0, 1)):
        sw = v[j] < v[i]
        v[i], v[j] = torch.where(sw, v[j], v[i]), torch.where(sw, v[i], v[j])
        u[i], u[j] = torch.where(sw, u[j], u[i]), torch.where(sw, u[i], u[j])
        odd = sw if odd is None else odd ^ sw
    return v, u, odd


@torch.no_grad()
def _zbuffer_torch(uvz: Tensor, faces: Tensor, height: int, width: int) -> Tensor:
    """Winning face per pixel, (B, H, W) long (-1 = empty), from projected vertices (B, V, 3).

    Coverage is exact: a pixel centre is inside a valid face (finite, z > Z_EPS, |area| > AREA_EPS
    both in float64 and in the working dtype) iff its three edge functions, evaluated in float64 on
    the projected vertices (`_exact_inside`), are all >= 0.  A scanline enumeration in the working
    dtype finds those pixels without evaluating that for almost all of them:

    1. each face is split at its middle vertex (vertices sorted by v: a, b, c) into an upper and a
       lower half; each row ceil(v_a)..floor(v_c) belongs to one half (exact: no other row can hold
       an inside pixel), and on it the face's span is bounded by two edges, the long edge a-c and
       a-b (upper half) or c-b (lower half), both taken from the half's start vertex (a or c); which
       is left follows from the sign of the float64 area and the parity of the sort;
    2. edge i -> j crosses row y at x = u_i + t, t = m (y - v_i), m = (u_j - u_i)/(v_j - v_i);
       computed in the working dtype (unit roundoff r) x is off by less than 7 r |t| + 2 r |u_i|, so
       with d = 16 r (|u_i| + |t|) (+ the smallest normal) the columns inside both crossings by more
       than d are certainly covered and the columns outside one of them by more than d certainly not;
    3. the columns in between (within ~1e-5 px of an edge in float32, ~1e-13 px in float64; a few
       per thousand rows) are decided by the float64 edge functions;
    4. z-buffer on the pixel key: winner = largest inverse depth, then smallest face index (float32:
       one scatter_reduce(amin) of (reversed bits of the inverse depth, face) packed in an int64;
       float64: amax of the inverse depth, then amin of the face index among the pairs at it).
    """
    B, dev, dt = uvz.shape[0], uvz.device, uvz.dtype
    F, H, W = faces.shape[0], height, width
    fbuf = torch.full((B * H * W,), -1, dtype=torch.long, device=dev)
    if F == 0:
        return fbuf.view(B, H, W)
    fs = _face_setup(uvz, faces)
    u, v = fs["u"], fs["v"]  # (B, F, 3)
    valid, sgn = fs["valid"], torch.sign(fs["area"])
    if dt != torch.float64:
        # sign and |area| > AREA_EPS of the float64 area: that of the working-dtype area where it is
        # off by less than its bound 4 eps (|e1x e2y| + |e1y e2x|) (twice the rounding bound),
        # the float64 area itself for the few other faces (slivers, tiny faces)
        p1, p2 = fs["e1x"] * fs["e2y"], fs["e1y"] * fs["e2x"]
        unsure = valid & (fs["area"].abs() <= (4.0 * torch.finfo(dt).eps) * (p1.abs() + p2.abs()) + AREA_EPS)
        ui = torch.nonzero(unsure.reshape(-1), as_tuple=True)[0]
        if ui.numel() > 0:
            tu = u.reshape(-1, 3).index_select(0, ui).double()
            tv = v.reshape(-1, 3).index_select(0, ui).double()
            a64 = (tu[:, 1] - tu[:, 0]) * (tv[:, 2] - tv[:, 0]) - (tv[:, 1] - tv[:, 0]) * (tu[:, 2] - tu[:, 0])
            valid = valid.reshape(-1).index_put((ui,), a64.abs() > AREA_EPS).view(B, F)
            sgn = sgn.reshape(-1).index_put((ui,), torch.sign(a64).to(dt)).view(B, F)
    (va, vb, vc), (ua, ub, uc), odd = _sort3(v.unbind(-1), u.unbind(-1))
    long_left = (sgn > 0) ^ odd  # orientation of (a, b, c) > 0: the long edge a-c is on the left

    def slope(du, dv):
        return du / torch.where(dv != 0, dv, torch.ones_like(dv))

    m_ac, m_ab, m_cb = slope(uc - ua, vc - va), slope(ub - ua, vb - va), slope(ub - uc, vb - vc)
    big = float(max(H, W) + 2)
    # rows: upper half ceil(v_a)..e, lower half e+1..floor(v_c); a row on a horizontal edge goes to
    # the half that does not contain that edge
    e = torch.where(vb == vc, torch.floor(vb), torch.ceil(vb) - 1).clamp(-big, big)
    r_top = torch.ceil(va.clamp(-big, big)).clamp(min=0)
    r_bot = (e + 1).clamp(min=0)
    r_end = torch.floor(vc.clamp(-big, big)).clamp(max=H - 1)
    nrow = torch.cat([e.clamp(max=H - 1) - r_top, r_end - r_bot]) + 1
    nrow = torch.where(torch.cat([valid, valid]), nrow.clamp(min=0), torch.zeros_like(nrow))
    nrow = nrow.long().reshape(-1)
    live = torch.nonzero(nrow, as_tuple=True)[0]  # half-major: h = half * B*F + b*F + f
    if live.numel() == 0:
        return fbuf.view(B, H, W)
    # per half: start vertex, slopes of its left and right edge, kappa * |u_start| + tiny, first row.
    # |t| <= |m| (v_c - v_a) on the face's rows: where that or |u_start| might overflow (absurd
    # coordinates) the half gets no bounds and no certain pixel (float64 decides all its columns)
    kappa = 8.0 * torch.finfo(dt).eps
    u_st = torch.cat([ua, uc])
    m_l = torch.cat([torch.where(long_left, m_ac, m_ab), torch.where(long_left, m_ac, m_cb)])
    m_r = torch.cat([torch.where(long_left, m_ab, m_ac), torch.where(long_left, m_cb, m_ac)])
    hv = (vc - va).repeat(2, 1)
    sane = (torch.maximum(m_l.abs(), m_r.abs()) * hv + u_st.abs()) < 1e30
    zero = torch.zeros_like(u_st)
    u_st, m_l, m_r = torch.where(sane, u_st, zero), torch.where(sane, m_l, zero), torch.where(sane, m_r, zero)
    c_st = torch.where(sane, kappa * u_st.abs() + torch.finfo(dt).tiny, torch.full_like(u_st, 4 * big))
    halves = torch.stack([u_st, torch.cat([va, vc]), m_l, m_r, c_st, torch.cat([r_top, r_bot])]).view(6, -1)
    per_face = torch.stack([fs[k] for k in ("C", "A", "Bc", "u0", "v0")]).view(5, -1)
    hown, hlocal = _repeat_ranges(nrow.index_select(0, live))
    hid = live.index_select(0, hown)
    fid = torch.where(hid >= B * F, hid - B * F, hid)  # b*F + f of each (half, row)
    us, vs, ml, mr, cs, r0 = halves.index_select(1, hid).unbind(0)
    C, A, Bc, u0, v0 = per_face.index_select(1, fid).unbind(0)
    y = r0 + hlocal.to(dt)
    dy = y - vs
    tl, tr = ml * dy, mr * dy
    xl, xr = us + tl, us + tr
    dl, dr = torch.add(cs, tl.abs(), alpha=kappa), torch.add(cs, tr.abs(), alpha=kappa)
    xo0 = torch.ceil((xl - dl).clamp(0, big))  # outer span xo0..xo1: nothing outside is covered
    xo1 = torch.floor((xr + dr).clamp(-big, W - 1))
    xc0 = torch.ceil((xl + dl).clamp(0, big))  # certain span xc0..xc1 (inside xo0..xo1)
    xc1 = torch.floor((xr - dr).clamp(-big, W - 1))
    nout = (xo1 - xo0 + 1).clamp(min=0).long()
    ncert = (xc1 - xc0 + 1).clamp(min=0).long()
    b = torch.div(fid, F, rounding_mode="floor")
    face = fid - b * F
    rowkey = (b * H + y.long()) * W
    dyv = y - v0
    own, local = _repeat_ranges(ncert)
    keys = [(rowkey + xc0.long()).index_select(0, own) + local]
    q0 = C + A * (xc0 - u0) + Bc * dyv
    qs = [q0.index_select(0, own) + A.index_select(0, own) * local.to(dt)]  # inverse depth
    fws = [face.index_select(0, own)]
    # the other columns of xo0..xo1, next to an edge: the float64 edge functions decide
    nunc = nout - ncert
    urow = torch.nonzero(nunc, as_tuple=True)[0]
    if urow.numel() > 0:
        uown, ulocal = _repeat_ranges(nunc.index_select(0, urow))
        r = urow.index_select(0, uown)
        nc, x0 = ncert.index_select(0, r), xo0.index_select(0, r)
        nleft = torch.where(nc > 0, (xc0.index_select(0, r) - x0).long(), nout.index_select(0, r))
        x = x0 + (ulocal + torch.where(ulocal >= nleft, nc, 0)).to(dt)
        ok = _exact_inside(uvz, faces, fid.index_select(0, r), sgn.reshape(-1), x, y.index_select(0, r))
        r, x = r[ok], x[ok]
        keys.append(rowkey.index_select(0, r) + x.long())
        qs.append(C.index_select(0, r) + A.index_select(0, r) * (x - u0.index_select(0, r))
                  + Bc.index_select(0, r) * dyv.index_select(0, r))
        fws.append(face.index_select(0, r))
    if dt == torch.float32:
        # one amin on (bits of the inverse depth, reversed) << 32 | face: nearest, then smallest
        # index (q >= 0 so its bits order like its values; q < 0 only for garbage slivers)
        zbuf = torch.full((B * H * W,), 2 ** 63 - 1, dtype=torch.long, device=dev)
        for key, q, fw in zip(keys, qs, fws):
            packed = ((2 ** 31 - 1) - q.clamp(min=1e-30).view(torch.int32)).long() * 2 ** 32 + fw
            zbuf.scatter_reduce_(0, key, packed, reduce="amin")
        return torch.where(zbuf == 2 ** 63 - 1, -1, zbuf & (2 ** 32 - 1)).view(B, H, W)
    key, q, fw = (torch.cat(t) if len(t) > 1 else t[0] for t in (keys, qs, fws))
    qbuf = torch.empty(B * H * W, dtype=dt, device=dev)
    qbuf.scatter_reduce_(0, key, q, reduce="amax", include_self=False)
    cand = torch.where(q == qbuf.index_select(0, key), fw, F)
    fbuf.scatter_reduce_(0, key, cand, reduce="amin", include_self=False)
    return fbuf.view(B, H, W)


def _depth_from_faces(uvz: Tensor, faces: Tensor, face_index: Tensor) -> Tensor:
    """Differentiable depth (B, H, W) at pixel centres of the given faces (-1 = empty).

    uvz (B, V, 3) projected vertices (differentiable).  Only per-face affine coefficients of 1/z
    are computed for all faces; each covered pixel gathers those of its face.
    """
    B, H, W = face_index.shape
    F = faces.shape[0]
    fs = _face_setup(uvz, faces)
    coef = torch.stack([fs["C"], fs["A"], fs["Bc"], fs["u0"], fs["v0"]], dim=-1).reshape(B * F, 5)
    flat = face_index.reshape(-1)
    pix = torch.nonzero(flat >= 0, as_tuple=True)[0]
    depth = torch.zeros(B * H * W, dtype=uvz.dtype, device=uvz.device)
    if pix.numel() == 0:
        return depth.view(B, H, W) + 0.0 * coef.sum()
    b = torch.div(pix, H * W, rounding_mode="floor")
    rem = pix - b * (H * W)
    row = torch.div(rem, W, rounding_mode="floor")
    col = rem - row * W
    c = coef.index_select(0, b * F + flat.index_select(0, pix))
    inv_z = c[:, 0] + c[:, 1] * (col.to(uvz.dtype) - c[:, 3]) + c[:, 2] * (row.to(uvz.dtype) - c[:, 4])
    return depth.index_put((pix,), 1.0 / inv_z).view(B, H, W)


def _project_safe(verts: Tensor, K: Tensor) -> Tensor:
    """camera.project with z <= Z_EPS replaced by 1 for (u, v) (their faces are skipped anyway),
    so that no inf/NaN enters the graph; the returned z is the true z."""
    z = verts[..., 2:]
    zs = torch.where(z > Z_EPS, z, torch.ones_like(z))
    uv = project(torch.cat([verts[..., :2], zs], dim=-1), K)[..., :2]
    return torch.cat([uv, z], dim=-1)


def _rasterize_torch(verts: Tensor, faces: Tensor, K: Tensor, height: int, width: int):
    uvz = _project_safe(verts, K)
    face_index = _zbuffer_torch(uvz.detach(), faces, height, width)
    return _depth_from_faces(uvz, faces, face_index), face_index


def pytorch3d_available() -> bool:
    """True when pytorch3d's mesh rasterizer can be imported."""
    try:
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes  # noqa: F401
        from pytorch3d.structures import Meshes  # noqa: F401
    except Exception:
        return False
    return True


def _rasterize_pytorch3d(verts: Tensor, faces: Tensor, K: Tensor, height: int, width: int):
    """pytorch3d rasterize_meshes with our conventions.

    pytorch3d's screen: +x left, +y up, pixel (r, c) centre at NDC
    x = rW/2 - (c + 0.5)*2/m, y = rH/2 - (r + 0.5)*2/m with m = min(H, W), rW = 2W/m, rH = 2H/m.
    We project with K ourselves and pass (x_ndc, y_ndc, z) so that its zbuf is the perspective-correct
    camera z.  Faces with a vertex at z <= Z_EPS are removed per mesh beforehand (as the torch backend).
    """
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    B = verts.shape[0]
    uvz = _project_safe(verts, K)
    m = float(min(height, width))
    x = width / m - (uvz[..., 0] + 0.5) * (2.0 / m)
    y = height / m - (uvz[..., 1] + 0.5) * (2.0 / m)
    ndc = torch.stack([x, y, uvz[..., 2]], dim=-1)
    with torch.no_grad():
        fz = verts.detach()[:, faces, 2]
        ok = (fz > Z_EPS).all(-1) & torch.isfinite(verts.detach()[:, faces]).all(-1).all(-1)
    kept = [torch.nonzero(ok[i], as_tuple=True)[0] for i in range(B)]
    meshes = Meshes(verts=list(ndc.float().unbind(0)), faces=[faces[k] for k in kept])
    p2f, zbuf, _, _ = rasterize_meshes(meshes, image_size=(height, width), blur_radius=0.0,
                                       faces_per_pixel=1, bin_size=0, perspective_correct=True,
                                       cull_backfaces=False)
    p2f, zbuf = p2f[..., 0], zbuf[..., 0]
    face_index = torch.full_like(p2f, -1)
    offset = 0
    for i in range(B):
        hit = p2f[i] >= 0
        face_index[i][hit] = kept[i][p2f[i][hit] - offset]
        offset += kept[i].numel()
    depth = torch.where(face_index >= 0, zbuf, torch.zeros_like(zbuf)).to(verts.dtype)
    return depth, face_index


def rasterize_depth(verts: Tensor, faces: Tensor, K: Tensor, height: int, width: int,
                    backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Render the depth of triangle meshes seen by pinhole cameras.

    Args:
        verts: (B, V, 3) vertices in camera mm (x right, y down, z forward); float32 or float64.
        faces: (F, 3) long vertex indices, shared by the batch.
        K: (B, 3, 3) or (3, 3) intrinsics; pixel (r, c) samples u = c, v = r.
        height, width: image size H, W in pixels.
        backend: "auto" (= "torch"), "torch", or "pytorch3d" (requires pytorch3d).

    Returns:
        depth: (B, H, W) z (mm) of the nearest surface at each pixel centre, perspective-correct,
            0 where empty; differentiable w.r.t. verts (winning face only, no silhouette gradient).
        face_index: (B, H, W) long, index into `faces` of the winning face, -1 where empty.

    Torch backend: coverage is exact -- a pixel centre is inside a face iff its float64 edge
    functions on the projected vertices are all >= 0 (module docstring), also for float32 input.
    """
    K = _check_inputs(verts, faces, K)
    faces = faces.to(device=verts.device, dtype=torch.long)
    if backend in ("auto", "torch"):
        return _rasterize_torch(verts, faces, K, height, width)
    if backend == "pytorch3d":
        return _rasterize_pytorch3d(verts, faces, K, height, width)
    raise ValueError(f"unknown rasterizer backend '{backend}'; valid: auto, torch, pytorch3d")
