"""phase=test: pure helpers and an end-to-end run of a tiny random network on a few NYU-format frames."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from config import make_config
from datasets.joints import NYU14
from render.camera import make_intrinsics, project
from stages import evaluate as E
from stages.predict import dataset_joints
from stages.results_io import read_uvd_file

NEEDED = ("models.dual_branch", "models.mano", "render.hand_renderer", "datasets.nyu", "stages.predict")
MISSING = [m for m in NEEDED if importlib.util.find_spec(m) is None]
K_NYU = make_intrinsics(588.03, 587.07, 320.0, 240.0, torch.float64).numpy()


def test_frame_uvd_unmirrors_about_the_principal_point():
    xyz = np.array([[[30.0, -20.0, 400.0], [-50.0, 10.0, 380.0]]])
    K = make_intrinsics(240.99, 240.96, 160.0, 120.0, torch.float64).numpy()[None]
    plain = E.frame_uvd(xyz, K, mirror=False)
    np.testing.assert_allclose(plain[0, 0], [160 + 240.99 * 30 / 400, 120 - 240.96 * 20 / 400, 400])
    mirrored_scene = xyz * np.array([-1.0, 1.0, 1.0])  # what the network sees after mirroring (x -> -x)
    np.testing.assert_allclose(E.frame_uvd(mirrored_scene, K, mirror=True), plain, atol=1e-9)


def test_dataset_joints_use_the_joint_tables():
    j = np.random.default_rng(0).normal(size=(2, 21, 3))
    icvl = dataset_joints(j, "icvl", None)
    assert icvl.shape == (2, 16, 3) and np.array_equal(icvl[:, 3], j[:, 15])  # ICVL thumb "tip" <- IP
    msra = dataset_joints(j, "msra", None)
    assert np.array_equal(msra[:, 4], j[:, 16])
    palm_map = np.full((3, 21), 1.0 / 21)
    nyu = dataset_joints(j, "nyu", palm_map)
    assert nyu.shape == (2, 14, 3) and np.allclose(nyu[:, 13], j.mean(1)) and np.array_equal(nyu[:, 11], j[:, 0])


# ---- end to end ----------------------------------------------------------------------------------
def _write_small_nyu(root, n=4, seed=0):
    """n test frames: a 70 mm ellipsoid blob around the centre; 36 labelled joints near it."""
    from datasets.nyu import write_nyu_split
    rng = np.random.default_rng(seed)
    centers = np.stack([rng.uniform(-60, 60, n), rng.uniform(-40, 40, n), rng.uniform(550, 750, n)], -1)
    joints = centers[:, None] + rng.normal(scale=35.0, size=(n, 36, 3))
    vv, uu = np.mgrid[0:480, 0:640].astype(np.float64)
    frames = []
    for c in centers:
        u0, v0, _ = project(torch.from_numpy(c[None]), torch.from_numpy(K_NYU)).numpy()[0]
        r = 70.0 * 588.03 / c[2]
        q = ((uu - u0) / r) ** 2 + ((vv - v0) / (1.4 * r)) ** 2
        frames.append(np.where(q < 1, c[2] - 40 * np.sqrt(np.clip(1 - q, 0, 1)), 0.0).astype(np.float32))
    write_nyu_split(root, "test", np.stack(frames), joints, centers, K=K_NYU)
    return joints


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    if MISSING:
        pytest.skip(f"network/dataset modules not present yet: {', '.join(MISSING)}")
    from models.dual_branch import DualBranchNet, NetConfig
    from models.mano import build_hand_model
    from render.hand_renderer import HandRenderer
    tmp = tmp_path_factory.mktemp("eval")
    joints36 = _write_small_nyu(tmp / "data")
    common = dict(dataset="nyu", data_root=str(tmp / "data"), net="tiny", hand_model="standin", device="cpu",
                  num_workers=0, batch_size=3, progress=False, seed=0)
    train_cfg = make_config(**common)
    torch.manual_seed(0)
    hand = build_hand_model(train_cfg)
    net = DualBranchNet(NetConfig.from_config(train_cfg), HandRenderer(hand, size=128))
    torch.save({"model": net.state_dict(), "config": train_cfg.to_dict()}, tmp / "tiny.pt")
    cfg = make_config(phase="test", load_model=str(tmp / "tiny.pt"), out_dir=str(tmp / "out"), save_overlays=2,
                      save_meshes=True, **common)
    metrics = E.run(cfg)
    return cfg, metrics, joints36, hand, tmp


def test_e2e_reports_every_stage_and_branch(e2e, capsys):
    cfg, metrics, *_ = e2e
    std, dsf = metrics["protocols"]["standard"], metrics["protocols"]["dsf"]
    assert list(std) == ["s1_pwe", "s1_mpe", "s2_pwe", "s2_mpe"] and metrics["frames"] == 4
    for key in std:
        assert np.isfinite(std[key]["mean_mm"]) and std[key]["mean_mm"] > 0
        assert len(std[key]["per_joint_mm"]) == 14 and len(dsf[key]["per_joint_mm"]) == 11
        assert np.isclose(np.mean(std[key]["per_joint_mm"]), std[key]["mean_mm"])
        assert len(std[key]["curves"]["max_frame"]) == 81


def test_e2e_ground_truth_file_is_the_label_projection(e2e):
    cfg, _, joints36, _, tmp = e2e
    from datasets.joints import NYU_EVAL_IDS_36
    ref = project(torch.from_numpy(joints36[:, list(NYU_EVAL_IDS_36)]), torch.from_numpy(K_NYU)).numpy()
    np.testing.assert_allclose(read_uvd_file(tmp / "out" / "gt_std_uvd.txt", 14), ref, atol=6e-4)


def test_e2e_written_predictions_score_to_the_same_mean(e2e, capsys):
    cfg, metrics, _, _, tmp = e2e
    from stages import score
    out = tmp / "out"
    for key in ("s1_pwe", "s2_mpe"):
        sc = make_config(phase="score", dataset="nyu", pred_file=str(out / f"{key}_std_uvd.txt"),
                         gt_file=str(out / "gt_std_uvd.txt"), out_dir=str(tmp / "score"))
        rep = score.run(sc)
        assert rep["standard"]["mean_mm"] == pytest.approx(metrics["protocols"]["standard"][key]["mean_mm"], abs=1e-9)
        assert rep["dsf"]["mean_mm"] == pytest.approx(metrics["protocols"]["dsf"][key]["mean_mm"], abs=1e-9)
    assert f"mean error: {metrics['protocols']['standard']['s2_mpe']['mean_mm']:.3f} mm" in capsys.readouterr().out


def test_e2e_mpe_error_recomputed_from_the_parameter_file(e2e):
    """S2-MPE rebuilt independently: params + C + b -> hand model -> mm -> NYU joints vs the labels."""
    cfg, metrics, joints36, hand, tmp = e2e
    from datasets.joints import NYU_EVAL_IDS_36
    from datasets.nyu import nyu14_from_network
    rows = np.loadtxt(tmp / "out" / "s2_mpe_params.txt")
    assert rows.shape == (4, 68)
    _, j_nu = hand.network_space(torch.tensor(rows[:, :62], dtype=torch.float32))
    mm = rows[:, None, 62:65] + j_nu.double().numpy() * rows[:, None, 65:68] / 2
    pred = nyu14_from_network(mm, np.asarray(metrics["palm_landmarks"]["palm_map"]))
    err = np.linalg.norm(pred - joints36[:, list(NYU_EVAL_IDS_36)], axis=-1).mean()
    assert err == pytest.approx(metrics["protocols"]["standard"]["s2_mpe"]["mean_mm"], abs=0.02)


def test_e2e_files(e2e):
    _, _, _, _, tmp = e2e
    out = tmp / "out"
    assert read_uvd_file(out / "s2_pwe_net21_uvd.txt", 21).shape == (4, 21, 3)
    assert len(list((out / "overlays").glob("*.png"))) == 2
    objs = sorted((out / "meshes").glob("*.obj"))
    assert len(objs) == 4 and objs[0].read_text().count("\nv ") >= 778
    header = (out / "curves_standard.csv").read_text().splitlines()[0].split(",")
    assert len(header) == 1 + 4 * 3 and (out / "curves_dsf.png").is_file() and (out / "metrics.json").is_file()
    assert NYU14.num_joints == 14


def _write_small_icvl(root, n=3, seed=1):
    """ICVL layout with n test_seq_1 frames (blob + 16 labelled joints, u v d) and an empty test_seq_2."""
    from datasets.depth_io import write_png16
    rng = np.random.default_rng(seed)
    K = make_intrinsics(240.99, 240.96, 160.0, 120.0, torch.float64).numpy()
    vv, uu = np.mgrid[0:240, 0:320].astype(np.float64)
    lines, centres = [], []
    (root / "Testing" / "Depth" / "test_seq_2").mkdir(parents=True)
    for k in range(n):
        u0, v0, d0 = rng.uniform(80, 110), rng.uniform(90, 150), rng.uniform(300, 400)  # far from cx
        r = 60.0 * 240.99 / d0
        q = ((uu - u0) / r) ** 2 + ((vv - v0) / (1.3 * r)) ** 2
        write_png16(root / "Testing" / "Depth" / "test_seq_1" / f"image_{k:04d}.png",
                    np.where(q < 1, d0 - 30 * np.sqrt(np.clip(1 - q, 0, 1)), 0.0))
        uvd = np.stack([u0 + rng.normal(0, 12, 16), v0 + rng.normal(0, 12, 16), d0 + rng.normal(0, 15, 16)], -1)
        lines.append(f"test_seq_1/image_{k:04d}.png " + " ".join(f"{x:.3f}" for x in uvd.reshape(-1)))
        f = 241.42  # V2V-style ICVL centres: xyz mm, y-down, made with f = 241.42 (datasets.md 1.1)
        centres.append(f"{(u0 - 160) * d0 / f:.4f} {(v0 - 120) * d0 / f:.4f} {d0:.4f}")
    (root / "Testing" / "test_seq_1.txt").write_text("\n".join(lines) + "\n")
    (root / "Testing" / "test_seq_2.txt").write_text("")
    (root / "Testing" / "center_test_refined.txt").write_text("\n".join(centres) + "\n")
    return np.array([[float(x) for x in ln.split()[1:]] for ln in lines]).reshape(n, 16, 3), K


def test_e2e_mirrored_icvl_is_unmirrored(e2e, capsys):
    """ICVL is mirrored for the network; the written ground truth and predictions are un-mirrored."""
    cfg, _, _, _, tmp = e2e
    labels, _ = _write_small_icvl(tmp / "icvl")
    icfg = make_config(phase="test", dataset="icvl", data_root=str(tmp / "icvl"), load_model=cfg.load_model,
                       out_dir=str(tmp / "out_icvl"), net="tiny", hand_model="standin", device="cpu",
                       num_workers=0, batch_size=4, progress=False, save_overlays=1)
    assert icfg.mirror is True
    metrics = E.run(icfg)
    out = tmp / "out_icvl"
    np.testing.assert_allclose(read_uvd_file(out / "gt_std_uvd.txt", 16), labels, atol=6e-4)
    # Predictions live on the un-mirrored side: the S1-MPE hand (placed near the crop centre by the
    # untrained network) lies near the labels at u < 110, not at their mirror image 2cx - u > 210.
    pred = read_uvd_file(out / "s1_mpe_std_uvd.txt", 16)
    assert np.all(np.abs(pred[:, :, 0].mean(1) - labels[:, :, 0].mean(1)) < 30)
    assert metrics["protocols"]["dsf"]["s2_pwe"]["joints"] == list(range(16))
    assert "DSF 16j" in capsys.readouterr().out
