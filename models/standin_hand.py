"""Generated stand-in hand in the layout of MANO_RIGHT.pkl (used when the real file is absent).

It is NOT MANO: a procedurally built right hand with the same keys, shapes and semantics
(778 vertices, 1538 faces, 16 joints with MANO's kinematic tree, 10 shape directions, a 45 x 45
pose PCA basis with its mean, pose correctives, skinning weights, fingertips at vertices
333/444/672/555/744), so every part of the project runs unchanged on it.

Frame (metres): MANO's axes (fingers along -x, back of the hand toward +y, thumb side +z) with the
wrist joint at the origin (MANO's own wrist sits at about (0.096, 0.006, 0.006) m; t absorbs such
offsets).  Rest pose: flat hand, fingers straight.

Construction (see `make_standin_arrays`): a palm tube (16-vertex open wrist ring, then rows of 32
vertices) whose distal row carries four finger tubes (8-vertex rings, rounded tips ending in one
apex vertex) with web quads between them; the thumb tube (12-vertex rings) replaces a 3 x 3 patch
of the palm's radial side.  That disk-topology surface is oriented outward, its longest interior
edges are split until V = 778 (each split adds 1 vertex and 2 faces, keeping F = 2V - 18), and
vertex ids are permuted so the five apexes get the fingertip ids.  Joints are centroids of vertex
rings (the J_regressor rows), skinning weights blend smoothly along the bones, shape directions
are finite differences of the parametric construction, and the pose basis is the PCA of
anatomically sampled articulations (seeded).
"""
from __future__ import annotations

import copy
import functools

import numpy as np
import torch

from hand.skeleton import BONE_CHILD, MANO_PARENTS, TIP_VERTEX_IDS
from models.pose_sampler import anatomical_axes, angles_to_articulation, sample_joint_angles
from models.standin_mesh import build_layout, finalize_mesh, hand_vertices

NUM_VERTS, NUM_FACES = 778, 1538
STANDIN_VERSION = 1
SHAPE_DIRECTIONS = (
    "overall size", "palm width", "finger length", "finger width", "palm length",
    "thumb length", "palm thickness", "index vs ring length", "little finger length", "fingertip taper",
)
CORRECTIVE_MM = 1.5        # bulge along the normal at a 90-degree bend of a joint
PCA_SAMPLES = 4000
SKIN_SIGMA_MM = 6.0
SKIN_SMOOTHING_STEPS = 8


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def vertex_normals(v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) of an outward-oriented mesh."""
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    out = np.zeros_like(v)
    for i in range(3):
        np.add.at(out, faces[:, i], n)
    return _unit(out)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip((p - a) @ ab / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def skinning_weights(v_mm: np.ndarray, faces: np.ndarray, labels: np.ndarray, joints_mm: np.ndarray,
                     tips_mm: np.ndarray, sigma: float = SKIN_SIGMA_MM,
                     steps: int = SKIN_SMOOTHING_STEPS) -> np.ndarray:
    """Smooth skinning weights (V, 16), rows summing to 1.

    w_vk ∝ exp(-(d_vk / sigma)^2) with d_vk the distance to bone k (joint k to its child; the root
    bone is the union of wrist -> MCP/CMC segments), over the bones a vertex may follow: palm
    vertices the root, MCPs and the thumb CMC; a finger's vertices the root and its own chain.
    Then `steps` rounds of averaging with the mesh neighbours, on palm vertices only,
    soften the seam at the thumb base where the distances to two bones change quickly; weights
    below 1e-3 are dropped.
    """
    pts = np.concatenate([joints_mm, tips_mm])
    dist = np.zeros((len(v_mm), 16))
    dist[:, 0] = np.min([_segment_distance(v_mm, pts[0], pts[j]) for j in (1, 4, 7, 10, 13)], axis=0)
    for k in range(1, 16):
        dist[:, k] = _segment_distance(v_mm, pts[k], pts[BONE_CHILD[k - 1]])
    allowed = np.zeros((6, 16), dtype=bool)
    allowed[0, [0, 1, 4, 7, 10, 13]] = True
    for c in range(5):
        allowed[c + 1, [0, 1 + 3 * c, 2 + 3 * c, 3 + 3 * c]] = True
    logit = np.where(allowed[labels], -(dist / sigma) ** 2, -np.inf)
    w = np.exp(logit - logit.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = np.zeros((len(v_mm), len(v_mm)))
    adj[edges[:, 0], edges[:, 1]] = adj[edges[:, 1], edges[:, 0]] = 1.0
    adj /= adj.sum(axis=1, keepdims=True)
    soft = labels == 0                          # the palm; tubes keep crisp bones
    for _ in range(steps):
        w[soft] = 0.5 * w[soft] + 0.5 * (adj @ w)[soft]
    w[w < 1e-3] = 0.0
    return w / w.sum(axis=1, keepdims=True)


def _regressor(layout, mesh) -> np.ndarray:
    """J_regressor (16, 778): each joint = mean of its vertex ring(s) (rows sum to 1)."""
    reg = np.zeros((16, NUM_VERTS))
    for j, rings in layout.joint_rings.items():
        for ring, share in rings:
            ids = mesh.final_ids(np.asarray(ring))
            reg[j, ids] += share / len(ids)
    return reg


def _posedirs(weights: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Pose correctives (778, 3, 135): volume-keeping bulge near each bending joint.

    For joint k with rotation R_k, -trace(R_k - I) = 2(1 - cos angle) >= 0, so an offset
    c · m_v · n_v · (-trace) pushes vertices in the blend zone of k and its parent outward
    (n_v the rest normal, m_v = 4 w_vk w_v,parent in [0, 1]); it is zero at rest.
    """
    pd = np.zeros((NUM_VERTS, 3, 135))
    for k in range(1, 16):
        m = 4.0 * weights[:, k] * weights[:, MANO_PARENTS[k]]
        off = -CORRECTIVE_MM * 1e-3 * m[:, None] * normals
        for diag in (0, 4, 8):  # (R - I) row-major: entries 0, 4, 8 form the trace
            pd[:, :, 9 * (k - 1) + diag] = off
    return pd


def _pose_pca(joints_m: np.ndarray, tips_m: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis (45, 45) (rows, by decreasing variance) and mean (45,) of articulations."""
    g = torch.Generator().manual_seed(seed)
    art = angles_to_articulation(sample_joint_angles(PCA_SAMPLES, g), anatomical_axes(joints_m, tips_m))
    mean = art.mean(axis=0)
    centred = art - mean
    var, vecs = np.linalg.eigh(centred.T @ centred / len(art))
    vt = vecs[:, ::-1].T                      # rows = components by decreasing variance
    signs = np.sign(vt[np.arange(45), np.abs(vt).argmax(axis=1)])
    return vt * signs[:, None], mean


@functools.lru_cache(maxsize=4)
def _standin(seed: int) -> dict:
    layout = build_layout()
    beta0 = np.zeros(len(SHAPE_DIRECTIONS))
    mesh = finalize_mesh(layout, hand_vertices(layout, beta0), NUM_VERTS, TIP_VERTEX_IDS)
    v = mesh.apply(hand_vertices(layout, beta0)) * 1e-3
    shapedirs = np.zeros((NUM_VERTS, 3, len(SHAPE_DIRECTIONS)))
    step = 1e-3
    for k in range(len(SHAPE_DIRECTIONS)):
        e = np.zeros_like(beta0)
        e[k] = step
        plus = mesh.apply(hand_vertices(layout, e))
        minus = mesh.apply(hand_vertices(layout, -e))
        shapedirs[:, :, k] = (plus - minus) * 1e-3 / (2 * step)
    reg = _regressor(layout, mesh)
    joints = reg @ v
    tips = v[list(TIP_VERTEX_IDS)]
    weights = skinning_weights(v * 1e3, mesh.faces, mesh.labels, joints * 1e3, tips * 1e3)
    normals = vertex_normals(v, mesh.faces)
    components, mean = _pose_pca(joints, tips, seed)
    kintree = np.array([[4294967295] + list(MANO_PARENTS[1:]), list(range(16))], dtype=np.int64)
    return {
        "f": mesh.faces.astype(np.int64),
        "v_template": v,
        "shapedirs": shapedirs,
        "J_regressor": reg,
        "hands_components": components,
        "hands_mean": mean,
        "posedirs": _posedirs(weights, normals),
        "kintree_table": kintree,
        "weights": weights,
        "standin_version": np.array(STANDIN_VERSION),
    }


def make_standin_arrays(seed: int = 0) -> dict:
    """The generated stand-in right hand as a MANO_RIGHT.pkl-layout dict of numpy arrays.

    Keys: f (1538, 3), v_template (778, 3) m, shapedirs (778, 3, 10), J_regressor (16, 778),
    hands_components (45, 45), hands_mean (45,), posedirs (778, 3, 135), kintree_table (2, 16),
    weights (778, 16), plus ``standin_version`` (marks it as the stand-in).  Deterministic; the
    seed drives the articulation samples behind the pose basis.  Cached in-process (a copy is
    returned each call).
    """
    return copy.deepcopy(_standin(int(seed)))
