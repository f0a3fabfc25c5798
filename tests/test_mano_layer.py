"""The MANO layer on the stand-in hand: T7 parity, T8 cap and parts, T9 output spaces."""
from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.transform import Rotation

from config import make_config
from hand.rotations import axis_angle_to_matrix
from hand.skeleton import TIP_VERTEX_IDS
from models.mano import HandModel, build_hand_model
from models.mano_io import save_mano_npz
from render.camera import norm_to_xyz


def _skew(w: np.ndarray) -> np.ndarray:
    return np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])


def reference_forward(arrays: dict, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spec 3.3 in float64 numpy, one hand: params (62,) -> verts (779, 3), joints (21, 3) mm.

    Independent of the layer: rotations by the matrix exponential of the skew matrix, the chain
    and the skinning written out with 4 x 4 matrices, the wrist loop from edges used once.
    """
    omega, theta, beta = params[:3], params[3:48], params[48:58]
    parents = np.asarray(arrays["kintree_table"])[0]
    v_shaped = arrays["v_template"] + arrays["shapedirs"] @ beta
    J = arrays["J_regressor"] @ v_shaped
    art = (theta @ arrays["hands_components"] + arrays["hands_mean"]).reshape(15, 3)
    R = [scipy.linalg.expm(_skew(omega))] + [scipy.linalg.expm(_skew(a)) for a in art]
    feat = np.concatenate([(R[k] - np.eye(3)).ravel() for k in range(1, 16)])
    v_posed = v_shaped + arrays["posedirs"] @ feat
    G = []
    for k in range(16):
        local = np.eye(4)
        local[:3, :3] = R[k]
        local[:3, 3] = J[k] - (J[parents[k]] if k else 0)
        G.append(local if k == 0 else G[parents[k]] @ local)
    skin = []
    for k in range(16):
        g = G[k].copy()
        g[:3, 3] -= G[k][:3, :3] @ J[k]
        skin.append(g)
    T = np.einsum("vk,kij->vij", arrays["weights"], np.stack(skin))
    v = np.einsum("vij,vj->vi", T, np.concatenate([v_posed, np.ones((778, 1))], 1))[:, :3]
    joints = np.concatenate([arrays["J_regressor"] @ v, v[list(TIP_VERTEX_IDS)]])
    edges = Counter(tuple(sorted((int(t[i]), int(t[(i + 1) % 3])))) for t in arrays["f"] for i in range(3))
    loop = sorted({a for e, n in edges.items() if n == 1 for a in e})
    verts = np.concatenate([v, v[loop].mean(axis=0, keepdims=True)])
    return verts * 1000.0, joints * 1000.0


def _random_params(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.zeros(n, 62, dtype=torch.float64)
    p[:, :3] = torch.randn(n, 3, generator=g)
    p[:, 3:48] = 0.7 * torch.randn(n, 45, generator=g)
    p[:, 48:58] = torch.randn(n, 10, generator=g)
    p[:, 58] = 1.0
    return p


def test_axis_angle_matches_scipy_and_is_safe_at_zero():
    r = torch.cat([torch.randn(64, 3, dtype=torch.float64) * 2,
                   torch.tensor([[0.0, 0, 0], [1e-9, 0, 0], [0, 3e-5, -2e-5], [0, 0, np.pi]], dtype=torch.float64)])
    got = axis_angle_to_matrix(r).numpy()
    assert np.abs(got - Rotation.from_rotvec(r.numpy()).as_matrix()).max() < 1e-12
    z = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    axis_angle_to_matrix(z)[:, 0, 1].sum().backward()
    assert torch.isfinite(z.grad).all() and torch.allclose(z.grad[:, 2], -torch.ones(2, dtype=torch.float64))


def test_t7_parity_with_independent_forward(standin_arrays, hand_model):
    params = _random_params(3, seed=7)
    model64 = HandModel(standin_arrays).double()
    verts, joints = model64.mano_mm(params)
    verts32, _ = hand_model.mano_mm(params.float())
    for i in range(len(params)):
        rv, rj = reference_forward(standin_arrays, params[i].numpy())
        assert np.abs(verts[i].numpy() - rv).max() < 1e-4
        assert np.abs(joints[i].numpy() - rj).max() < 1e-4
        assert np.abs(verts32[i].double().numpy() - rv).max() < 2e-2


def test_joints_are_regressed_from_posed_vertices_and_tips(standin_arrays, hand_model):
    verts, joints = hand_model.mano_mm(_random_params(2, seed=1).float())
    reg = torch.as_tensor(standin_arrays["J_regressor"], dtype=torch.float32)
    assert torch.allclose(joints[:, :16], torch.einsum("jv,bvc->bjc", reg, verts[:, :778]), atol=1e-3)
    assert torch.equal(joints[:, 16:], verts[:, list(TIP_VERTEX_IDS)])


def test_zero_articulation_reproduces_template(standin_arrays, hand_model):
    p = torch.zeros(1, 62)
    p[0, 3:48] = -hand_model.hands_mean @ hand_model.hands_components.T   # articulation = 0
    verts, _ = hand_model.mano_mm(p)
    template = torch.as_tensor(standin_arrays["v_template"] * 1000.0, dtype=torch.float32)
    assert (verts[0, :778] - template).abs().max() < 1e-3


def test_t8_capped_mesh_closed_oriented(hand_model):
    f = hand_model.faces.numpy()
    assert f.shape == (1554, 3) and f.max() == 778
    directed = Counter((int(t[i]), int(t[(i + 1) % 3])) for t in f for i in range(3))
    assert max(directed.values()) == 1
    assert all(directed[(b, a)] == 1 for a, b in directed)       # each edge twice, opposite ways
    E = len(directed) // 2
    assert E == 2331 and 779 - E + 1554 == 2
    loop = hand_model.wrist_loop.tolist()
    assert len(loop) == 16 and set(loop) == set(f[f[:, 2] == 778][:, :2].ravel().tolist())
    verts, _ = hand_model.mano_mm(_random_params(1, seed=3).float())
    assert torch.allclose(verts[0, 778], verts[0, loop].mean(0), atol=1e-4)


def test_parts_and_regressor_support(standin_arrays, hand_model):
    w, f = standin_arrays["weights"], hand_model.faces.numpy()
    assert len(hand_model.part_faces) == 15
    for k, faces_k in enumerate(hand_model.part_faces, start=1):
        brute = [i for i, t in enumerate(f) if any(v < 778 and w[v, k] > 0.1 for v in t)]
        assert len(faces_k) > 0 and faces_k.tolist() == brute
    for j, sup in enumerate(hand_model.regressor_support):
        assert sup.tolist() == np.nonzero(standin_arrays["J_regressor"][j])[0].tolist()


def test_t9_network_and_source_spaces(hand_model):
    p = torch.zeros(2, 62)
    p[:, 58] = 1.0                                                # mean pose, s = 1, t = 0
    verts_mm, joints_mm = hand_model.mano_mm(p)
    verts_n, joints_n = hand_model.network_space(p)
    zero = torch.zeros(2, 3)
    assert torch.allclose(norm_to_xyz(verts_n, zero, torch.full((2, 3), 250.0)), verts_mm, atol=1e-4)
    p200 = p.clone()
    p200[:, 58] = 1.25
    v200, _ = hand_model.network_space(p200)
    assert torch.allclose(norm_to_xyz(v200, zero, torch.full((2, 3), 200.0)), verts_mm, atol=1e-3)
    q = p.clone()
    q[:, 58], q[:, 59:62] = 0.9, torch.tensor([10.0, -20.0, 400.0])
    vs, js = hand_model.source_space(q)
    assert torch.allclose(vs, 0.9 * verts_mm + q[:, None, 59:62], atol=1e-3)
    assert torch.allclose(js, 0.9 * joints_mm + q[:, None, 59:62], atol=1e-3)


def test_layer_shapes_batching_and_errors(hand_model):
    p = _random_params(4, seed=5).float()
    v, j = hand_model.mano_mm(p)
    assert v.shape == (4, 779, 3) and j.shape == (4, 21, 3) and v.dtype == torch.float32
    v58, _ = hand_model.mano_mm(p[:, :58])
    v1, _ = hand_model.mano_mm(p[2:3])
    assert torch.equal(v58, v) and torch.allclose(v1[0], v[2], atol=1e-4)
    with pytest.raises(ValueError, match=r"\(B, 62\) or \(B, 58\)"):
        hand_model.mano_mm(p[:, :50])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        va, _ = hand_model.mano_mm(p)
    assert va.dtype == torch.float32 and (va - v).abs().max() < 1e-4  # autocast does not reach MANO


def test_gradients_match_finite_differences(standin_arrays):
    model = HandModel(standin_arrays).double()
    base = _random_params(1, seed=9)
    base[0, :3] = 0.0                                             # through the zero-angle branch
    free = [0, 1, 2, 3, 4, 20, 48, 49, 58, 59, 61]                # ω, some θ and β, s, t

    def f(x):
        p = base.clone()
        p[0, free] = x
        return model.network_space(p)[0][:, ::97]

    x = base[0, free].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_buffers_move_with_to(standin_arrays):
    model = HandModel(standin_arrays).to(torch.float64)
    names = dict(model.named_buffers())
    assert names["v_template"].dtype == torch.float64 and names["faces"].dtype == torch.long
    assert all(t.dtype == torch.long for t in model.part_faces + model.regressor_support)
    assert sum(n.startswith("_part_faces_") for n in names) == 15


def test_bad_arrays_are_rejected(standin_arrays):
    kintree = standin_arrays["kintree_table"].copy()
    kintree[0, 5] = 0
    with pytest.raises(ValueError, match="kintree_table parents"):
        HandModel(dict(standin_arrays, kintree_table=kintree))
    with pytest.raises(ValueError, match="'weights' has shape"):
        HandModel(dict(standin_arrays, weights=standin_arrays["weights"][:, :15]))


def test_real_mano_requires_the_spec_wrist_loop(standin_arrays):
    arrays = {k: v for k, v in standin_arrays.items() if k != "standin_version"}
    with pytest.raises(ValueError, match="wrist loop"):
        HandModel(arrays)


def _relabel(arrays: dict, new_of_old: np.ndarray) -> dict:
    """The same hand with vertex i renamed new_of_old[i] (a MANO-file-like dict, no stand-in key)."""
    old_of_new = np.argsort(new_of_old)
    out = {k: v for k, v in arrays.items() if k != "standin_version"}
    for k in ("v_template", "shapedirs", "posedirs", "weights"):
        out[k] = arrays[k][old_of_new]
    out["J_regressor"] = arrays["J_regressor"][:, old_of_new]
    out["f"] = new_of_old[arrays["f"]]
    return out


def test_mano_file_path_with_the_spec_wrist_loop(standin_arrays, hand_model):
    from models.mano import MANO_WRIST_LOOP
    loop = hand_model.wrist_loop.tolist()
    new_of_old = -np.ones(778, dtype=np.int64)
    new_of_old[loop] = MANO_WRIST_LOOP
    new_of_old[list(TIP_VERTEX_IDS)] = TIP_VERTEX_IDS
    rest = [i for i in range(778) if new_of_old[i] < 0]
    new_of_old[rest] = sorted(set(range(778)) - set(new_of_old[new_of_old >= 0].tolist()))
    model = HandModel(_relabel(standin_arrays, new_of_old))
    assert not model.is_standin and model.name == "MANO"
    p = _random_params(2, seed=4).float()
    v, j = model.mano_mm(p)
    v0, j0 = hand_model.mano_mm(p)
    assert torch.allclose(v[:, new_of_old], v0[:, :778], atol=1e-3) and torch.allclose(j, j0, atol=1e-3)
    assert torch.allclose(v[:, 778], v0[:, 778], atol=1e-3)


def test_build_hand_model_choices(tmp_path, standin_arrays):
    cfg = make_config([], mano_path=str(tmp_path / "MANO_RIGHT.pkl"), hand_model="auto")
    with pytest.warns(UserWarning, match=r"stand-in hand.*MANO_RIGHT\.pkl"):
        model = build_hand_model(cfg)
    assert model.is_standin and model.name == "stand-in hand"
    with pytest.raises(FileNotFoundError, match=r"mano\.is\.tue\.mpg\.de.*MANO/MANO_RIGHT\.pkl"):
        build_hand_model(make_config([], mano_path=str(tmp_path / "absent.pkl"), hand_model="mano"))
    save_mano_npz(standin_arrays, tmp_path / "MANO_RIGHT.npz")    # a .npz beside the .pkl path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_hand_model(make_config([], mano_path=str(tmp_path / "MANO_RIGHT.pkl"), hand_model="mano"))
    assert model.faces.shape == (1554, 3)
