"""Model-mismatch NYU-format set (datasets/mismatch.py, mismatch_hand.py, mismatch_scene.py)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import scipy.io
import torch

from config import make_config
from datasets.joints import NYU_EVAL_IDS_36
from datasets.mismatch import MismatchScene, generate_mismatch, nyu36_from_points, subject_hands
from datasets.mismatch_geometry import model_fit, shape_space_fit, surface_distance, winding_number
from datasets.mismatch_hand import base_hand, hand_frame, pose_subject
from datasets.mismatch_scene import StructuredLight, left_projector_shadow, sample_gestures, sense
from hand.skeleton import BONE_CHILD, TIP_VERTEX_IDS
from render import camera
from render.rasterizer import rasterize_depth

SEED = 3
FX, FY = 588.03, 587.07


@pytest.fixture(scope="module")
def hands():
    return subject_hands(SEED)


@pytest.fixture(scope="module")
def mismatch_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mismatch")
    return root, generate_mismatch(root, 8, 4, seed=SEED)


def _render_hands(verts: np.ndarray, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rasterize_depth(torch.as_tensor(verts, dtype=torch.float32), base_hand()["model"].faces, K.float(), 480, 640)


@pytest.fixture(scope="module")
def posed(hands):
    """12 frames of the test subject: verts (12, 779, 3), label points (12, 24, 3), depth, face index."""
    scene = MismatchScene(hands)
    draws = scene.draw(np.full(12, 2), torch.Generator().manual_seed(1))
    verts, points = scene.hand_meshes(draws, np.arange(12))
    depth, face = _render_hands(verts, scene.K)
    return scene, draws, verts, points, depth, face


def test_written_set_reads_back_through_the_nyu_reader(mismatch_root):
    from datasets import build_dataset
    from datasets.depth_io import read_nyu_depth
    from datasets.nyu import read_joint_data
    root, summary = mismatch_root
    assert summary["frames"] == {"train": 8, "test": 4} and summary["frames_per_s"] > 0
    info = json.loads((root / "mismatch_info.json").read_text())
    assert info["splits"]["train"]["subject"] == [0] * 4 + [1] * 4 and info["splits"]["test"]["subject"] == [2] * 4
    frame = read_nyu_depth(root / "test" / "depth_1_0000001.png")
    assert frame.shape == (480, 640) and np.all(frame == np.rint(frame)) and not (frame == 2001).any()
    assert (frame == 0).mean() > 0.01 and 500 < frame[frame > 0].min() < 1100
    cfg = make_config(dataset="nyu", data_root=str(root), hand_model="standin", augment=False)
    ds = build_dataset(cfg, "test", labels=True)
    assert len(ds) == 4 and len(build_dataset(cfg, "train", labels=True)) >= 6
    j36 = read_joint_data(root / "test" / "joint_data.mat", 1)
    assert j36.shape == (4, 36, 3)
    on_hand = behind = 0
    for i in range(len(ds)):
        item = ds[i]
        uvd = item["joints_uvd"]
        assert uvd.shape == (14, 3) and uvd[:, :2].abs().max() < 1.0
        xyz = camera.norm_to_xyz(item["joints_xyz"], item["center"], item["cube"]).numpy()
        assert np.allclose(xyz, j36[i, list(NYU_EVAL_IDS_36)], atol=1e-3)
        px = camera.norm_to_crop_px(uvd[:, :2]).round().long().clamp(0, 127)
        d = item["depth"][0][px[:, 1], px[:, 0]]
        fg = d < 0.99
        on_hand += int(fg.sum())
        behind += int((uvd[:, 2][fg] > d[fg] - 8.0 / 125.0).sum())
    assert on_hand / (14 * len(ds)) > 0.6 and behind / on_hand > 0.9


def test_fingertip_labels_lie_a_few_mm_under_the_pad(hands):
    K = camera.make_intrinsics(FX, FY, 320.0, 240.0, dtype=torch.float64)
    for h in hands:  # rest hand, palm toward the camera, fingers up: the pad faces the camera
        axis, palmar, _ = hand_frame(h.joints)
        src = np.stack([axis, palmar, np.cross(axis, palmar)], 1)
        dst = np.stack([[0, -1.0, 0], [0, 0, -1.0], np.cross([0, -1.0, 0], [0, 0, -1.0])], 1)
        R = dst @ src.T
        v, p = pose_subject(h, np.zeros((1, 15, 3)))
        shift = np.array([0.0, 0.0, 600.0]) - (v[0] @ R.T).mean(0) * [1, 1, 0]  # centred in the frame
        v, p = v @ R.T + shift, p @ R.T + shift
        depth, _ = _render_hands(v, K)
        uv = camera.project(torch.as_tensor(p[0, 16:21]), K).numpy()
        z = depth[0][np.rint(uv[:, 1]).astype(int), np.rint(uv[:, 0]).astype(int)].numpy()
        gap = p[0, 16:21, 2] - z
        assert np.all(np.abs(gap - h.params.pad_depth_mm) < 1.0), (gap, h.params.pad_depth_mm)


def test_posed_fingertips_sit_under_their_own_visible_skin(hands, posed):
    scene, draws, verts, points, depth, face = posed
    b = base_hand()
    labels = np.concatenate([b["labels"], [0]])[b["faces_capped"]]
    gaps = []
    for k in range(len(verts)):
        pad = hands[2].params.pad_depth_mm  # under the pad along its normal; the curved tip may be nearer
        for c in range(5):  # nearest skin of its own finger (another one may touch it, as in a pinch)
            own = b["faces"][(labels[:len(b["faces"])] == c + 1).all(1)]
            dist = surface_distance(points[k, 16 + c:17 + c], verts[k], own)
            assert pad - 1.2 < dist[0] < pad + 0.3, (c, dist, pad)
        uv = np.rint(camera.project(torch.as_tensor(points[k, 16:21]), scene.K).numpy()[:, :2]).astype(int)
        for c in range(5):
            f = int(face[k, uv[c, 1], uv[c, 0]])
            near = np.linalg.norm(verts[k][b["faces_capped"][f]] - points[k, 16 + c], axis=1).max() < 12.0
            if f >= 0 and (labels[f] == c + 1).all() and near:  # the pixel shows this fingertip
                gaps.append(points[k, 16 + c, 2] - float(depth[k, uv[c, 1], uv[c, 0]]))
    gaps = np.array(gaps)
    assert len(gaps) >= 20 and gaps.min() > 1.0 and gaps.max() < 16.0, gaps


def test_joint_labels_lie_inside_the_hand(posed):
    scene, draws, verts, points, depth, face = posed
    faces = base_hand()["faces_capped"]
    for k in range(len(verts)):
        assert winding_number(points[k], verts[k], faces).min() > 0.5  # inside the closed skin
        dist = surface_distance(points[k], verts[k], faces)
        assert dist[1:16].max() < 13.0 and dist[21:].max() < 22.0  # within a finger / palm radius
        uv = np.rint(camera.project(torch.as_tensor(points[k]), scene.K).numpy()[:, :2]).astype(int)
        z = depth[k][uv[:, 1], uv[:, 0]].numpy()
        assert np.all(points[k, z > 0, 2] > z[z > 0] + 1.0)  # behind the visible surface
    j36 = nyu36_from_points(points)
    assert np.array_equal(j36[:, [0, 3, 24, 25, 27, 30, 31, 32]], points[:, [18, 8, 20, 15, 14, 21, 22, 23]])


def test_bone_lengths_follow_the_subject_scalings(hands):
    b = base_hand()
    model_pts = np.concatenate([b["joints"], b["verts"][list(TIP_VERTEX_IDS)]])
    for h in hands:
        pts = np.concatenate([h.joints, h.apex])
        for k in range(1, 16):
            c = BONE_CHILD[k - 1]
            ratio = np.linalg.norm(pts[c] - pts[k]) / np.linalg.norm(model_pts[c] - model_pts[k])
            want = h.params.scale * h.params.bone_scale[k - 1]
            if k == 13:  # the CMC label sits cmc_depth_mm deeper in the palm than the base ring
                assert ratio > want
            else:
                assert abs(ratio / want - 1) < 0.03, (k, ratio, want)
        assert np.ptp(np.array(h.params.bone_scale)) > 0.1  # bones really scaled differently


def test_subjects_are_outside_the_model_shape_space(hands):
    b = base_hand()
    model, faces = b["model"], b["faces"]
    for h in hands:
        aligned, fit = shape_space_fit(h.verts, model)
        assert np.sqrt(((aligned - fit) ** 2).sum(1).mean()) > 2.5
        assert np.percentile(surface_distance(aligned, fit, faces), 95) > 3.5
    full = model_fit(hands[2].verts, model)  # pose, shape, scale, rigid all free
    assert np.percentile(surface_distance(hands[2].verts, full, faces), 95) > 2.0
    rows = torch.zeros(1, 62)
    rows[:, 48:58] = 1.5 * torch.randn(1, 10, generator=torch.Generator().manual_seed(0))  # a simreal subject
    rows[:, 3:48] = -(model.hands_mean @ model.hands_components.T)
    with torch.no_grad():
        v = model.mano_mm(rows)[0][0, :778].double().numpy() * 1.04
    aligned, fit = shape_space_fit(v, model)
    assert np.sqrt(((aligned - fit) ** 2).sum(1).mean()) < 1e-3


def test_generation_is_deterministic_by_seed(mismatch_root, tmp_path, hands):
    root, _ = mismatch_root
    generate_mismatch(tmp_path / "again", 8, 4, seed=SEED)
    for rel in ("test/center_test_refined.txt", "train/depth_1_0000005.png", "test/depth_1_0000004.png",
                "mismatch_info.json"):
        assert (root / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    for split in ("train", "test"):  # the .mat header carries a time stamp: compare the arrays
        a, b = (scipy.io.loadmat(str(r / split / "joint_data.mat")) for r in (root, tmp_path / "again"))
        assert np.array_equal(a["joint_xyz"], b["joint_xyz"]) and np.array_equal(a["joint_uvd"], b["joint_uvd"])
    other = subject_hands(SEED + 1)
    assert not np.allclose(other[0].verts, hands[0].verts)


def test_sensor_shadows_quantizes_and_drops(hands):
    d = torch.full((4, 200), 2000.0, dtype=torch.float64)
    d[:, 100:120] = 700.0
    s = StructuredLight()
    shadow = left_projector_shadow(d, FX, s.baseline_mm)[0]
    cols = shadow.nonzero()[:, 0]
    width = FX * s.baseline_mm * (1 / 700 - 1 / 2000)
    assert cols.min() == 120 and abs(len(cols) - width) <= 2  # right of the object (projector left)
    z = torch.linspace(600, 1200, 2400).reshape(48, 50).double()
    quiet = replace(s, noise_px=0.0, field_px=0.0, speckle_rate=1e-9, dropout_prob=0.0, fatten_prob=0.0,
                    flying_prob=0.0)
    out = sense(z, FX, FY, torch.Generator().manual_seed(0), quiet)
    ok = out > 0
    step = z ** 2 / (FX * s.baseline_mm * s.subpixel)  # one disparity step grows with z^2
    assert ((out - z).abs()[ok] <= 0.5 * step[ok] + 0.6).all() and len(torch.unique(out)) < 0.5 * ok.sum()
    cols = torch.arange(60, dtype=torch.float64)[None].expand(60, 60) - 30.0
    for theta_deg, lo, hi in ((80.0, 0.7, 1.0), (40.0, 0.0, 0.03)):  # a plane z = 800 + x tan(theta)
        plane = 800.0 / (1 - np.tan(np.radians(theta_deg)) * cols / FX)
        dropped = (sense(plane, FX, FY, torch.Generator().manual_seed(1)) == 0).double().mean()
        assert lo < dropped < hi, (theta_deg, dropped)


def test_gestures_leave_the_training_sampler_ranges():
    from models.pose_sampler import sample_joint_angles
    ang, ids = sample_gestures(600, torch.Generator().manual_seed(0))
    train = sample_joint_angles(600, torch.Generator().manual_seed(0)).numpy()
    mcp = ang[:, [0, 3, 6, 9], 0]
    assert (mcp < -15).mean() > 0.01 and (np.abs(ang[:, [0, 3, 6, 9], 1]) > 20).mean() > 0.01
    assert len(np.unique(ids)) == 15

    def pointing(a: np.ndarray) -> float:  # index straight while middle, pinky and ring are curled
        return float(((a[:, 1, 0] < 25) & (a[:, [4, 7, 10], 0] > 70).all(1)).mean())
    assert pointing(ang) > 5 * pointing(train) + 0.05


def test_ensure_mismatch_never_writes_into_a_foreign_folder(tmp_path):
    """A folder with other files and no NYU centre files is refused before anything is written."""
    from datasets.depth_io import DatasetError
    from datasets.mismatch import ensure_mismatch
    (tmp_path / "joint_data.mat").write_bytes(b"not ours")
    with pytest.raises(DatasetError, match="joint_data.mat"):
        ensure_mismatch(tmp_path, 2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joint_data.mat"]
