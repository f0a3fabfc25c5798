"""Mesh construction of the stand-in hand (topology, parametric geometry, skinning).

Build frame (mm): wrist joint at the origin, fingers along +y, back of the hand +z, little finger
toward +x; `hand_vertices` returns the vertices rotated into MANO's axes (`BUILD_TO_MANO`).
`build_layout` fixes the topology once; `hand_vertices(layout, beta)` places every
vertex from 10 shape parameters (so shape directions are exact derivatives of the construction);
`finalize_mesh` turns the construction into the final 778-vertex mesh (drop unused vertices,
orient outward, split edges, permute ids) as an index pipeline that `FinalMesh.apply` replays on
any construction geometry.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

RING = 32                 # palm ring: dorsal columns 0..15 at ring positions 0..15, palmar 31..16
WRIST = 16
PALM_ROWS = 9
THUMB_ROW = 1             # thumb patch: cells of rows 1..3 around the radial side (x < 0)
THUMB_CELLS = (30, 31, 0)
FINGER_RING, THUMB_RING = 8, 12
# MANO finger order (index, middle, pinky, ring) -> column block along +x (index on the thumb side)
FINGER_BLOCK = (0, 1, 3, 2)
FINGER_LEN = ((40.0, 24.0, 22.0), (44.0, 28.0, 24.0), (32.0, 20.0, 21.0), (41.0, 27.0, 23.0))
FINGER_HALF_WIDTH = (8.5, 8.8, 7.4, 8.2)
FINGER_ANGLE_DEG = (-7.0, -1.0, 11.0, 5.0)   # fan of the fingers, from +y toward +x
MCP_Y = (88.0, 92.0, 80.0, 88.0)
THICKNESS_RATIO = 0.92
THUMB_LEN = (40.0, 31.0, 27.0)
THUMB_DIRS = ((-0.7, 0.65, -0.3), (-0.4, 0.9, -0.2), (-0.25, 0.97, -0.05))
THUMB_HALF_WIDTH = 10.5
# Ring stations along a tube: (kind, bone, fraction, width factor); "cap" rings use the angle.
FINGER_STATIONS = (("seg", 0, 0.25, 1.0), ("seg", 0, 0.5, 0.97), ("seg", 0, 0.75, 0.95),
                   ("joint", 1, 0.0, 0.96), ("seg", 1, 0.33, 0.9), ("seg", 1, 0.67, 0.87),
                   ("joint", 2, 0.0, 0.87), ("dist", 2, 0.5, 0.84),
                   ("cap", 2, 90.0, 0.84), ("cap", 2, 60.0, 0.84), ("cap", 2, 30.0, 0.84))
THUMB_STATIONS = (("seg", 0, 0.33, 1.1), ("seg", 0, 0.67, 1.03), ("joint", 1, 0.0, 1.0),
                  ("seg", 1, 0.5, 0.93), ("joint", 2, 0.0, 0.9), ("dist", 2, 0.5, 0.86),
                  ("cap", 2, 90.0, 0.84), ("cap", 2, 60.0, 0.84), ("cap", 2, 30.0, 0.84))
# MANO's template axes: fingers along -x, back of the hand +y, thumb side +z (build x -> -z,
# build y -> -x, build z -> +y); a proper rotation, so handedness is kept.
BUILD_TO_MANO = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])


@dataclass
class Tube:
    joints: tuple[int, int, int]      # MANO joint ids of the chain
    base: list[int]                   # cyclic base ring (shared with the palm)
    rings: list[list[int]] = field(default_factory=list)
    apex: int = -1


@dataclass
class Layout:
    n: int
    faces: np.ndarray                  # (Fc, 3) construction ids
    wrist: list[int]
    rows: np.ndarray                   # (PALM_ROWS, RING)
    tubes: list[Tube]                  # index, middle, pinky, ring, thumb
    labels: np.ndarray                 # (n,) 0 palm, c = 1..5 tube c-1
    joint_rings: dict                  # joint -> [(construction ids, share of the row)]


def _quad(a: int, b: int, c: int, d: int) -> list[tuple[int, int, int]]:
    return [(a, b, c), (a, c, d)]


def _band(r0: list[int], r1: list[int]) -> list[tuple[int, int, int]]:
    n = len(r0)
    return [t for k in range(n) for t in _quad(r0[k], r0[(k + 1) % n], r1[(k + 1) % n], r1[k])]


def build_layout() -> Layout:
    """Topology of the construction mesh (independent of the geometry)."""
    count = [0]

    def new(k: int) -> list[int]:
        ids = list(range(count[0], count[0] + k))
        count[0] += k
        return ids

    wrist = new(WRIST)
    rows = np.array([new(RING) for _ in range(PALM_ROWS)])
    faces: list[tuple[int, int, int]] = []
    r0 = rows[0]
    for i in range(WRIST):  # 16 -> 32 transition band
        a, b = wrist[i], wrist[(i + 1) % WRIST]
        faces += [(a, r0[2 * i], r0[2 * i + 1]), (a, r0[2 * i + 1], b),
                  (b, r0[2 * i + 1], r0[(2 * i + 2) % RING])]
    for r in range(PALM_ROWS - 1):
        for k in range(RING):
            if THUMB_ROW <= r < THUMB_ROW + 3 and k in THUMB_CELLS:
                continue
            faces += _quad(rows[r, k], rows[r, (k + 1) % RING], rows[r + 1, (k + 1) % RING], rows[r + 1, k])
    last = rows[-1]
    for b in range(3):  # web quads between the finger blocks
        j = 4 * b + 3
        faces += _quad(last[j], last[j + 1], last[31 - (j + 1)], last[31 - j])
    tubes, labels_extra = [], []
    for f in range(4):
        a = 4 * FINGER_BLOCK[f]
        base = [int(last[a + i]) for i in range(4)] + [int(last[31 - (a + 3 - i)]) for i in range(4)]
        tubes.append(Tube(joints=(1 + 3 * f, 2 + 3 * f, 3 + 3 * f), base=base))
    t, c = THUMB_ROW, (30, 31, 0, 1)
    thumb_base = ([int(rows[t, k]) for k in c] + [int(rows[t + 1, 1]), int(rows[t + 2, 1])]
                  + [int(rows[t + 3, k]) for k in reversed(c)] + [int(rows[t + 2, 30]), int(rows[t + 1, 30])])
    tubes.append(Tube(joints=(13, 14, 15), base=thumb_base))
    for ci, tube in enumerate(tubes):
        n_ring = THUMB_RING if ci == 4 else FINGER_RING
        stations = THUMB_STATIONS if ci == 4 else FINGER_STATIONS
        assert len(tube.base) == n_ring
        prev = tube.base
        for _ in stations:
            ring = new(n_ring)
            faces += _band(prev, ring)
            tube.rings.append(ring)
            prev = ring
        tube.apex = new(1)[0]
        faces += [(prev[k], prev[(k + 1) % n_ring], tube.apex) for k in range(n_ring)]
        labels_extra.append((ci + 1, tube.rings[0][0], tube.apex + 1))
    labels = np.zeros(count[0], dtype=np.int64)
    for lab, lo, hi in labels_extra:
        labels[lo:hi] = lab
    joint_rings = {0: [(wrist, 0.5), (list(rows[0]), 0.5)]}
    for tube, st in zip(tubes, [FINGER_STATIONS] * 4 + [THUMB_STATIONS]):
        j0, j1, j2 = tube.joints
        joint_rings[j0] = [(tube.base, 1.0)]
        joint_rings[j1] = [(tube.rings[[s[0] == "joint" and s[1] == 1 for s in st].index(True)], 1.0)]
        joint_rings[j2] = [(tube.rings[[s[0] == "joint" and s[1] == 2 for s in st].index(True)], 1.0)]
    return Layout(count[0], np.array(faces, dtype=np.int64), wrist, rows, tubes, labels, joint_rings)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _design(beta: np.ndarray) -> dict:
    """Dimensions (mm) from the 10 shape parameters (see standin_hand.SHAPE_DIRECTIONS)."""
    b = beta
    flen = np.array(FINGER_LEN) * (1 + 0.06 * b[2])
    flen[0] *= 1 + 0.04 * b[7]
    flen[3] *= 1 - 0.04 * b[7]
    flen[2] *= 1 + 0.07 * b[8]
    return dict(
        size=1 + 0.05 * b[0], width=1 + 0.06 * b[1], palm_len=1 + 0.05 * b[4], thick=1 + 0.08 * b[6],
        finger_len=flen, finger_w=np.array(FINGER_HALF_WIDTH) * (1 + 0.08 * b[3]),
        thumb_len=np.array(THUMB_LEN) * (1 + 0.06 * b[2]) * (1 + 0.07 * b[5]),
        thumb_w=THUMB_HALF_WIDTH * (1 + 0.08 * b[3]), taper=1 + 0.08 * b[9],
    )


def _palm_rows(d: dict) -> tuple[np.ndarray, np.ndarray]:
    """Wrist ring (16, 3) and palm rows (PALM_ROWS, 32, 3)."""
    j = np.concatenate([np.arange(16), np.arange(15, -1, -1)])           # column of ring pos k
    side = np.concatenate([np.ones(16), -np.ones(16)])
    s = 2 * j / 15 - 1
    prof = np.maximum(np.cbrt(1 - np.abs(s) ** 3), 0.35)
    block_y = np.array(MCP_Y)[list(FINGER_BLOCK.index(b) for b in range(4))]
    y_distal = block_y[j // 4] * d["palm_len"]
    rows = np.zeros((PALM_ROWS, RING, 3))
    for r in range(PALM_ROWS):
        t = r / (PALM_ROWS - 1)
        w = (64 + 16 * t ** 0.7) * d["width"]
        th = (33 - 8 * t) * d["thick"]
        rows[r, :, 0] = w * (j / 15 - 0.5)
        rows[r, :, 1] = 4 + (y_distal - 4) * t
        rows[r, :, 2] = side * th / 2 * prof
    ang = np.arctan2(side[::2] * prof[::2], 2 * (j[::2] / 15 - 0.5))
    wrist = np.stack([28 * d["width"] * np.cos(ang), np.full(WRIST, -10.0), 17 * d["thick"] * np.sin(ang)], 1)
    return wrist, rows


def _cross3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _frame(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cross-section axes (across, dorsal) of a tube running along `direction`."""
    e1 = _unit(np.array([1.0, 0, 0]) - direction[0] * direction)
    return e1, _cross3(e1, direction)


def _ring_phase(base: np.ndarray, centre: np.ndarray, direction: np.ndarray) -> tuple[float, float]:
    """Angle offset and winding of a base ring so tube rings follow it without twist."""
    e1, e2 = _frame(direction)
    rel = base - centre
    phi = np.arctan2(rel @ e2, rel @ e1)
    n = len(base)
    winding = np.sign(np.angle(np.exp(1j * (np.roll(phi, -1) - phi))).sum())
    phase = np.angle(np.exp(1j * (phi - winding * 2 * np.pi * np.arange(n) / n)).mean())
    return phase, winding


def _tube_vertices(base: np.ndarray, joints: np.ndarray, half_w: float, stations, taper: float) -> np.ndarray:
    """Ring and apex vertices of one tube; joints (4, 3) = root, joint 1, joint 2, tip."""
    n = len(base)
    dirs = _unit(np.diff(joints, axis=0))
    phase, winding = _ring_phase(base, joints[0], dirs[0])
    phi = phase + winding * 2 * np.pi * np.arange(n) / n
    tip_half_t = 0.84 * half_w * THICKNESS_RATIO * taper
    cap_centre = joints[3] - tip_half_t * dirs[2]
    out = []
    for kind, bone, frac, wf in stations:
        d = dirs[bone]
        scale = 1.0
        if kind in ("seg", "joint"):
            c = joints[bone] + frac * (joints[bone + 1] - joints[bone])
        elif kind == "dist":
            c = joints[2] + frac * (cap_centre - joints[2])
        else:
            a = np.deg2rad(frac)
            c, scale = cap_centre + tip_half_t * np.cos(a) * d, np.sin(a)
        if bone == 2:
            wf *= taper
        e1, e2 = _frame(d)
        hw = half_w * wf * scale
        out.append(c + hw * np.cos(phi)[:, None] * e1 + hw * THICKNESS_RATIO * np.sin(phi)[:, None] * e2)
    out.append(joints[3][None])
    return np.concatenate(out)


def hand_vertices(layout: Layout, beta: np.ndarray) -> np.ndarray:
    """Construction vertex positions (layout.n, 3) in mm, MANO axes, for shape parameters beta (10,)."""
    d = _design(np.asarray(beta, dtype=np.float64))
    v = np.zeros((layout.n, 3))
    wrist, rows = _palm_rows(d)
    v[layout.wrist] = wrist
    v[layout.rows.ravel()] = rows.reshape(-1, 3)
    for f, tube in enumerate(layout.tubes[:4]):
        base = v[tube.base]
        mcp = base.mean(axis=0)
        a = np.deg2rad(FINGER_ANGLE_DEG[f])
        direction = np.array([np.sin(a), np.cos(a), 0.0])
        lengths = np.cumsum(d["finger_len"][f])
        joints = np.concatenate([mcp[None], mcp + lengths[:, None] * direction])
        ids = [i for r in tube.rings for i in r] + [tube.apex]
        v[ids] = _tube_vertices(base, joints, d["finger_w"][f], FINGER_STATIONS, d["taper"])
    thumb = layout.tubes[4]
    base = v[thumb.base]
    cmc = base.mean(axis=0)
    steps = _unit(np.array(THUMB_DIRS)) * d["thumb_len"][:, None]
    joints = np.concatenate([cmc[None], cmc + np.cumsum(steps, axis=0)])
    ids = [i for r in thumb.rings for i in r] + [thumb.apex]
    v[ids] = _tube_vertices(base, joints, d["thumb_w"], THUMB_STATIONS, d["taper"])
    return (v * d["size"]) @ BUILD_TO_MANO.T


@dataclass
class FinalMesh:
    keep: np.ndarray          # construction ids kept, in order
    remap: np.ndarray         # construction id -> kept index (-1 dropped)
    splits: list              # (a, b) kept/split indices; vertex appended at their midpoint
    new_of_old: np.ndarray    # final id of each pre-permutation vertex
    faces: np.ndarray         # (F, 3) final ids
    labels: np.ndarray        # (V,) 0 palm, 1..5 tube

    def apply(self, v_construction: np.ndarray) -> np.ndarray:
        """Construction geometry (n, 3) -> final vertices (V, 3) (linear in the input)."""
        v = list(v_construction[self.keep])
        for a, b in self.splits:
            v.append(0.5 * (v[a] + v[b]))
        out = np.empty((len(v), 3))
        out[self.new_of_old] = np.array(v)
        return out

    def final_ids(self, construction_ids: np.ndarray) -> np.ndarray:
        return self.new_of_old[self.remap[construction_ids]]


def _edge_faces(faces: np.ndarray) -> dict:
    out: dict = {}
    for fi, tri in enumerate(faces):
        for i in range(3):
            a, b = int(tri[i]), int(tri[(i + 1) % 3])
            out.setdefault((min(a, b), max(a, b)), []).append(fi)
    return out


def orient_faces(faces: np.ndarray) -> np.ndarray:
    """Consistently oriented copy of a connected manifold triangle list (BFS from face 0)."""
    faces = faces.copy()
    ef = _edge_faces(faces)
    assert max(len(v) for v in ef.values()) == 2, "construction mesh is not manifold"
    seen = np.zeros(len(faces), dtype=bool)
    seen[0] = True
    queue = deque([0])
    while queue:
        f = queue.popleft()
        for i in range(3):
            a, b = int(faces[f, i]), int(faces[f, (i + 1) % 3])
            for g in ef[(min(a, b), max(a, b))]:
                if seen[g]:
                    continue
                tri = list(faces[g])
                same = any(tri[j] == a and tri[(j + 1) % 3] == b for j in range(3))
                if same:
                    faces[g] = faces[g][::-1]
                seen[g] = True
                queue.append(g)
    assert seen.all(), "construction mesh is not connected"
    return faces


def boundary_edges(faces: np.ndarray) -> list[tuple[int, int]]:
    """Directed edges (as traversed by their only face) of the open boundary."""
    ef = _edge_faces(faces)
    out = []
    for (a, b), fs in ef.items():
        if len(fs) == 1:
            tri = list(faces[fs[0]])
            i = tri.index(a)
            out.append((a, b) if tri[(i + 1) % 3] == b else (b, a))
    return out


def _signed_volume_capped(v: np.ndarray, faces: np.ndarray) -> float:
    edges = boundary_edges(faces)
    c = v[np.unique(np.array(edges))].mean(axis=0)
    tris = [v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]]
    vol = np.einsum("ij,ij->i", tris[0], np.cross(tris[1], tris[2])).sum()
    for a, b in edges:
        vol += v[b] @ np.cross(v[a], c)
    return vol / 6.0


def _split_longest(v: list, faces: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Split the longest interior edge at its midpoint (1 vertex, 2 faces more; orientation kept)."""
    und = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    keys, counts = np.unique(und, axis=0, return_counts=True)
    interior = keys[counts == 2]
    arr = np.array(v)
    lengths = np.linalg.norm(arr[interior[:, 0]] - arr[interior[:, 1]], axis=1)
    a, b = (int(i) for i in interior[int(np.argmax(lengths))])
    m = len(v)
    v.append(0.5 * (arr[a] + arr[b]))
    hit = np.nonzero((faces == a).any(axis=1) & (faces == b).any(axis=1))[0]
    new = list(np.delete(faces, hit, axis=0))
    for fi in hit:
        tri = list(faces[fi])
        while not (tri[0] in (a, b) and tri[1] in (a, b)):
            tri = tri[1:] + tri[:1]
        p, q, r = tri
        new += [[p, m, r], [m, q, r]]
    return np.array(new), (a, b)


def finalize_mesh(layout: Layout, v_construction: np.ndarray, n_target: int, tip_ids) -> FinalMesh:
    """Index pipeline from the construction to the final mesh (see module docstring)."""
    keep = np.unique(layout.faces)
    remap = -np.ones(layout.n, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    faces = orient_faces(remap[layout.faces])
    v = list(v_construction[keep])
    if _signed_volume_capped(np.array(v), faces) < 0:
        faces = faces[:, ::-1].copy()
    labels = list(layout.labels[keep])
    assert len(v) <= n_target, f"construction has {len(v)} > {n_target} vertices"
    splits = []
    while len(v) < n_target:
        faces, (a, b) = _split_longest(v, faces)
        splits.append((a, b))
        labels.append(labels[a] if labels[a] == labels[b] else 0)
    apex_old = [int(remap[t.apex]) for t in layout.tubes]
    order = [i for i in range(n_target) if i not in apex_old]
    new_of_old = np.empty(n_target, dtype=np.int64)
    free = iter(i for i in range(n_target) if i not in tip_ids)
    for old in order:
        new_of_old[old] = next(free)
    for old, tid in zip(apex_old, tip_ids):
        new_of_old[old] = tid
    lab = np.empty(n_target, dtype=np.int64)
    lab[new_of_old] = labels
    return FinalMesh(keep, remap, splits, new_of_old, new_of_old[faces], lab)
