"""The generated stand-in hand: MANO layout, topology, proportions, blend data."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hand.skeleton import BONE_CHILD, MANO_PARENTS, TIP_VERTEX_IDS
from models.mano_io import REQUIRED_SHAPES, validate_mano_arrays
from models.standin_hand import make_standin_arrays


@pytest.fixture(scope="module")
def geo(standin_arrays):
    """Rest geometry in mm: vertices, faces, 16 joints + 5 tips (21 points)."""
    v = standin_arrays["v_template"] * 1000.0
    joints = standin_arrays["J_regressor"] @ v
    return v, standin_arrays["f"], np.concatenate([joints, v[list(TIP_VERTEX_IDS)]])


def _directed_edges(faces: np.ndarray) -> Counter:
    return Counter((int(t[i]), int(t[(i + 1) % 3])) for t in faces for i in range(3))


def test_layout_matches_mano_file(standin_arrays):
    validate_mano_arrays(standin_arrays, "stand-in")
    assert set(REQUIRED_SHAPES) <= set(standin_arrays)
    assert np.asarray(standin_arrays["kintree_table"])[0, 1:].tolist() == list(MANO_PARENTS[1:])
    assert standin_arrays["kintree_table"][1].tolist() == list(range(16))
    f = standin_arrays["f"]
    assert f.min() == 0 and f.max() == 777 and len(np.unique(f)) == 778


def test_deterministic_and_cached_copy():
    a, b = make_standin_arrays(0), make_standin_arrays(0)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    a["v_template"][:] = 0  # the in-process cache hands out copies
    assert np.abs(make_standin_arrays(0)["v_template"]).max() > 0
    c = make_standin_arrays(1)
    assert np.array_equal(c["v_template"], b["v_template"])
    assert not np.allclose(c["hands_mean"], b["hands_mean"])


def test_disk_topology_with_one_16_vertex_wrist_loop(standin_arrays):
    f = standin_arrays["f"]
    directed = _directed_edges(f)
    assert max(directed.values()) == 1, "an edge is traversed twice in the same direction"
    undirected = Counter(tuple(sorted(e)) for e in directed)
    assert max(undirected.values()) == 2
    boundary = [e for e in directed if (e[1], e[0]) not in directed]
    V, E, F = 778, len(undirected), len(f)
    assert V - E + F == 1                                   # a disk
    assert len(boundary) == 16
    nxt = dict(boundary)
    loop = [boundary[0][0]]
    while nxt[loop[-1]] != loop[0]:
        loop.append(nxt[loop[-1]])
    assert len(loop) == 16                                  # one loop through all 16
    wrist_x = standin_arrays["v_template"][loop, 0] * 1000   # MANO axes: fingers along -x
    assert np.ptp(wrist_x) < 1.0 and wrist_x.mean() > 0     # an open ring behind the wrist joint


def test_outward_orientation_and_volume(geo):
    v, f, _ = geo
    directed = _directed_edges(f)
    loop_edges = [e for e in directed if (e[1], e[0]) not in directed]
    c = v[np.unique(np.array(loop_edges))].mean(axis=0)
    tri = v[f]
    vol = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()
    vol += sum(v[b] @ np.cross(v[a], c) for a, b in loop_edges)    # cap fan, opposite direction
    vol_ml = vol / 6.0 / 1000.0
    assert 200 < vol_ml < 600, vol_ml                        # adult hand: roughly 300-500 ml


def test_fingertips_are_the_named_vertices(standin_arrays, geo):
    v, _, pts = geo
    assert v[:, 0].argmin() == TIP_VERTEX_IDS[1]           # middle tip: farthest along the fingers
    dominant = standin_arrays["weights"].argmax(axis=1)
    for tip, dip in zip(range(16, 21), (3, 6, 9, 12, 15)):
        d = (pts[tip] - pts[dip]) / np.linalg.norm(pts[tip] - pts[dip])
        distal = dominant == dip                           # the distal phalanx of that finger
        assert distal[TIP_VERTEX_IDS[tip - 16]]
        assert (v[distal] @ d).argmax() == np.nonzero(distal)[0].tolist().index(TIP_VERTEX_IDS[tip - 16])


def test_human_proportions(standin_arrays, geo):
    v, _, pts = geo
    bone = {k: np.linalg.norm(pts[BONE_CHILD[k - 1]] - pts[k]) for k in range(1, 16)}
    middle = bone[4] + bone[5] + bone[6]
    assert 70 <= middle <= 110, middle
    ulnar = (pts[7] - pts[1]) / np.linalg.norm(pts[7] - pts[1])
    palm = standin_arrays["weights"].argmax(axis=1) == 0
    width = np.ptp(v[palm] @ ulnar)
    assert 70 <= width <= 95, width
    for k in (1, 4, 7, 10):
        assert 25 <= bone[k] <= 55 and 14 <= bone[k + 1] <= 35 and 15 <= bone[k + 2] <= 30, k
    assert 30 <= bone[13] <= 55 and 20 <= bone[14] <= 40 and 18 <= bone[15] <= 35
    assert bone[4] > bone[7] and bone[10] > bone[7]           # little finger the shortest
    wrist_to_middle_mcp = np.linalg.norm(pts[4] - pts[0])
    assert 75 <= wrist_to_middle_mcp <= 110


def test_regressor_and_weights_are_partitions_of_unity(standin_arrays):
    reg, w = standin_arrays["J_regressor"], standin_arrays["weights"]
    assert reg.min() >= 0 and np.allclose(reg.sum(axis=1), 1.0, atol=1e-12)
    assert w.min() >= 0 and np.allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert all((reg[j] > 0).sum() >= 8 for j in range(16))  # rings, not single vertices
    assert (w.max(axis=0) > 0.75).all()                     # every bone drives some vertices


def test_weights_are_smooth_over_edges(standin_arrays):
    w, f = standin_arrays["weights"], standin_arrays["f"]
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    jump = np.abs(w[e[:, 0]] - w[e[:, 1]]).max(axis=1)
    assert jump.max() < 0.65, jump.max()                  # no seams: blends span an edge or more
    assert np.median(jump) < 0.05


def test_pose_basis_orthonormal_and_mean_plausible(standin_arrays):
    c, mean = standin_arrays["hands_components"], standin_arrays["hands_mean"]
    assert np.abs(c @ c.T - np.eye(45)).max() < 1e-10
    angles = np.linalg.norm(mean.reshape(15, 3), axis=1)
    assert angles.max() < np.deg2rad(90)                      # a relaxed, mildly curled mean pose


def test_shape_directions_vary_lengths_widths_and_palm(standin_arrays, geo):
    v, _, pts = geo
    sd = standin_arrays["shapedirs"] * 1000.0
    reg = standin_arrays["J_regressor"]
    assert np.linalg.matrix_rank(sd.reshape(-1, 10), tol=1e-3) == 10

    def measures(beta):
        vb = v + sd @ beta
        p = np.concatenate([reg @ vb, vb[list(TIP_VERTEX_IDS)]])
        middle = sum(np.linalg.norm(p[c] - p[k]) for k, c in ((4, 5), (5, 6), (6, 17)))
        return np.ptp(vb[:, 0]), middle, np.linalg.norm(p[7] - p[1]), np.linalg.norm(p[4] - p[0])

    base = np.array(measures(np.zeros(10)))
    e = np.eye(10)
    assert all(np.array(measures(e[0])) > base)                       # overall size
    assert measures(e[1])[2] > base[2]                                # palm width (MCP span)
    assert measures(e[2])[1] > base[1] + 3                            # finger length (mm)
    assert measures(e[4])[3] > base[3] + 2                            # palm length
    assert np.abs(sd[:, :, 3]).max() > 0.3                            # finger width moves vertices


def test_pose_correctives_are_small_and_local(standin_arrays):
    pd = standin_arrays["posedirs"] * 1000.0
    assert 0.2 < np.abs(pd).max() < 5.0                       # mm per unit of (R - I)
    w = standin_arrays["weights"]
    moved = np.abs(pd[:, :, 9 * 4:9 * 5]).max(axis=(1, 2)) > 1e-9     # joint 5 (middle PIP)
    assert moved.any() and (w[moved][:, [4, 5]].sum(axis=1) > 0.5).all()
