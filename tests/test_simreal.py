"""Real-like NYU-format set (datasets/simreal.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from config import make_config
from datasets.joints import NYU14, NYU_EVAL_IDS_36
from datasets.simreal import (DISPARITY_STEPS_PER_PX, KINECT_BASELINE_MM, NYU_FILL_MM, disparity_quantize,
                              flying_pixels, forearm_faces, generate_simreal, nyu36_from_network, plane_depth,
                              projector_shadow)
from render import camera

FX = 588.03


def test_forearm_tube_is_closed_except_at_the_loop():
    L, V, R = 6, 20, 3
    loop = torch.arange(L) + 4
    f = forearm_faces(loop, V, R)
    assert f.shape == (2 * L * R + L, 3) and f.max() == V + R * L and f.min() >= 4
    edges = {}
    for tri in f.tolist():
        for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
            key = (min(a, b), max(a, b))
            edges[key] = edges.get(key, 0) + 1
    open_edges = {e for e, n in edges.items() if n == 1}
    assert open_edges == {(min(a, b), max(a, b)) for a, b in zip(loop.tolist(), loop.roll(-1).tolist())}
    assert all(n <= 2 for n in edges.values())


def test_plane_depth_matches_ray_plane_intersection():
    K = camera.make_intrinsics(FX, 587.07, 320.0, 240.0)
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    scene = dict(wall=one(2500), body_z=one(1100), body_x=one(0), body_halfw=one(5000), body_top=one(-5000),
                 body_tilt=one(0.2), table_y=one(300), table_on=one(1), table_near=one(600), table_far=one(1000))
    d = plane_depth(K, 480, 640, scene)[0]
    for r, c in ((10, 30), (240, 320), (400, 600)):
        z = float(d[r, c])
        x, y = (c - 320.0) * z / FX, (r - 240.0) * z / 587.07
        on_body = abs(z - (1100 + 0.2 * x)) < 1e-2
        on_table = abs(y - 300) < 1e-2 and 600 < z < 1000
        assert on_body or on_table, (r, c, z)
    assert float(d[470, 320]) < 1100  # the table is in front of the body at the bottom
    scene["table_on"] = one(0)
    scene["body_halfw"] = one(10)
    assert float(plane_depth(K, 480, 640, scene)[0, 470, 600]) == 2500  # only the wall


def test_projector_shadow_width_follows_disparity():
    d = torch.full((1, 2, 200), 2000.0)
    d[:, :, 100:120] = 700.0
    s = projector_shadow(d, FX)[0, 0]
    width = FX * KINECT_BASELINE_MM * (1 / 700 - 1 / 2000)  # disparity difference in px
    cols = s.nonzero()[:, 0]
    assert cols.max() == 99 and abs(len(cols) - width) <= 2  # left of the object, disparity wide
    flat = torch.full((1, 2, 200), 900.0)
    assert not projector_shadow(flat, FX).any()


def test_disparity_quantization_steps():
    z = torch.linspace(600, 1200, 2000)
    q = disparity_quantize(z, FX, torch.zeros_like(z))
    fb = FX * KINECT_BASELINE_MM
    step = z ** 2 / (fb * DISPARITY_STEPS_PER_PX)  # dz of one 1/8-px disparity step
    assert ((q - z).abs() <= 0.5 * step + 1e-3).all()
    assert len(torch.unique(q)) < 0.5 * len(z)
    assert disparity_quantize(torch.zeros(3), FX, torch.zeros(3)).eq(0).all()


def test_flying_pixels_only_at_edges():
    d = torch.full((1, 10, 10), 1000.0)
    d[:, :, 5:] = 700.0
    out = flying_pixels(d, torch.full_like(d, 0.25), 0.5, 25.0)  # a = 0.25/0.5 = 0.5
    changed = (out != d)[0]
    assert changed[:, 4:6].all() and not changed[:, :4].any() and not changed[:, 6:].any()
    assert torch.allclose(out[0, :, 4], torch.full((10,), 850.0)) and torch.allclose(out[0, :, 5], torch.full((10,), 850.0))


def test_nyu36_uses_the_shared_joint_table():
    g = torch.Generator().manual_seed(0)
    j, v = torch.randn(2, 21, 3, generator=g), torch.randn(2, 779, 3, generator=g)
    out = nyu36_from_network(j, v, (np.array([3, 4]), np.array([7, 8, 9])))
    for pos, net in enumerate(NYU14.to_network):
        if net is not None:
            assert torch.equal(out[:, NYU_EVAL_IDS_36[pos]], j[:, net])
    assert torch.allclose(out[:, 31], v[:, [3, 4]].mean(1)) and torch.allclose(out[:, 32], v[:, [7, 8, 9]].mean(1))
    assert torch.allclose(out[:, 2], 0.5 * (j[:, 9] + j[:, 8]))  # pinky between DIP and PIP


@pytest.fixture(scope="module")
def simreal_root(tmp_path_factory, hand_model):
    root = tmp_path_factory.mktemp("simreal")
    cfg = make_config(dataset="simreal", data_root=str(root), hand_model="standin")
    summary = generate_simreal(root, cfg, 8, 4, seed=5)
    return root, cfg, summary


def test_simreal_writes_nyu_format(simreal_root):
    root, _, summary = simreal_root
    assert summary["frames"] == {"train": 8, "test": 4}
    assert 8.0 < summary["center_error_mm"]["test"] < 30.0
    for split, n in (("train", 8), ("test", 4)):
        assert len(list((root / split).glob("depth_1_*.png"))) == n
        assert (root / split / "joint_data.mat").is_file()
        lines = (root / split / f"center_{split}_refined.txt").read_text().split("\n")
        assert len([ln for ln in lines if ln]) == n
    from datasets.depth_io import read_nyu_depth
    frame = read_nyu_depth(root / "test" / "depth_1_0000001.png")
    assert frame.shape == (480, 640)
    assert (frame == NYU_FILL_MM).mean() > 0.05 and np.all(frame == np.rint(frame))
    assert 500 < frame[frame > 0].min() < 1000


def test_simreal_loads_through_the_nyu_loader_with_joints_on_the_hand(simreal_root):
    from dataclasses import replace

    from datasets import build_dataset
    root, cfg, _ = simreal_root
    ds = build_dataset(replace(cfg, augment=False), "test", labels=True)
    assert len(ds) == 4
    on_hand, behind, total = 0, 0, 0
    for i in range(len(ds)):
        item = ds[i]
        uvd = item["joints_uvd"]
        assert uvd.shape == (14, 3) and uvd[:, :2].abs().max() < 1.0
        px = camera.norm_to_crop_px(uvd[:, :2]).round().long().clamp(0, 127)
        d = item["depth"][0][px[:, 1], px[:, 0]]
        fg = d < 0.99
        on_hand += int(fg.sum())
        behind += int((uvd[:, 2][fg] > d[fg] - 10.0 / 125.0).sum())
        total += 14
    assert on_hand / total > 0.75  # a few joints fall on holes, shadows or flying pixels
    assert behind / on_hand > 0.9  # labels lie at or behind the visible surface


def roughness_mm(depth_n: torch.Tensor, cube_z: float) -> tuple[float, float]:
    """(median |Laplacian| over interior foreground pixels in mm, fraction of 1-pixel holes)."""
    d = depth_n[0]
    fg = d < 0.99
    inner = fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
    lap = 4 * d[1:-1, 1:-1] - d[:-2, 1:-1] - d[2:, 1:-1] - d[1:-1, :-2] - d[1:-1, 2:]
    hole = ~fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
    return float(lap[inner].abs().median()) * cube_z / 2, float(hole.sum()) / max(int(fg.sum()), 1)


def test_simreal_crops_differ_from_clean_synthetic(simreal_root, hand_model):
    from dataclasses import replace

    from datasets import build_dataset
    from datasets.synthetic import SyntheticHands
    from render.hand_renderer import HandRenderer
    root, cfg, _ = simreal_root
    ds = build_dataset(replace(cfg, augment=False), "test", labels=False)
    real = [roughness_mm(ds[i]["depth"], 250.0) for i in range(len(ds))]
    syn_cfg = make_config(dataset="nyu", hand_model="standin", synth_occlusion=False)
    b = SyntheticHands(syn_cfg, hand_model, HandRenderer(hand_model), "none").batch(6, torch.Generator().manual_seed(0), "cpu")
    syn = [roughness_mm(b["clean"][i], float(b["cube"][i, 2])) for i in range(6)]
    print("median |Laplacian| mm, hole fraction: simreal", np.mean(real, 0), "synthetic", np.mean(syn, 0))
    assert np.mean([r[0] for r in real]) > 2.0 * np.mean([s[0] for s in syn])
    assert np.mean([r[1] for r in real]) > 2.0 * np.mean([s[1] for s in syn]) + 1e-4


def test_ensure_simreal_generates_once(tmp_path, monkeypatch, capsys):
    import datasets.simreal as sr
    calls = []

    def fake(root, cfg, n_train, n_test, seed):
        calls.append((str(root), n_train, n_test, seed))
        for s in ("train", "test"):
            (root / s).mkdir(parents=True)
            (root / s / f"center_{s}_refined.txt").write_text("0 0 700\n")
        return {"seconds": 0.0, "center_error_mm": {}}

    monkeypatch.setattr(sr, "generate_simreal", fake)
    cfg = make_config(dataset="simreal", data_root=str(tmp_path / "sr"), simreal_train_frames=7, simreal_test_frames=3)
    assert sr.ensure_simreal(cfg) == tmp_path / "sr"
    assert calls == [(str(tmp_path / "sr"), 7, 3, sr.SIMREAL_SEED)] and "generating" in capsys.readouterr().out
    sr.ensure_simreal(cfg)
    assert len(calls) == 1 and capsys.readouterr().out == ""
