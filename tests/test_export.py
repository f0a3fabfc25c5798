"""phase=export end to end with a tiny random network on sequences the test renders (known joints).

The network is untrained, so its joints are arbitrary; what is checked is the pipeline: which frames
have a hand, that every output file carries the same joints (CSV / NPZ / DHG-SHREC skeleton files:
palm = mean of 21, metres vs mm, pixels = projection with K), that mirroring is undone, and that the
crop centres found by the localizer hold the true hand.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from config import make_config
from datasets.depth_io import write_png16
from datasets.streams import GESTURE_INTRINSICS, PRED_IMAGE_FILE, PRED_WORLD_FILE, read_skeletons
from stages import export as E
from stream_scenes import hand_scene, intrinsics, mirror_scene, sample_poses

H, W = 240, 320
K_SMALL = intrinsics(300.0, 300.0, (W - 1) / 2.0, (H - 1) / 2.0)
K_GESTURE = intrinsics(*GESTURE_INTRINSICS)
# hand joint means of a short sequence; None = a frame with only the far wall (no hand)
TRACK = [(-90.0, -20.0, 520.0), (-80.0, -15.0, 530.0), None, (90.0, 20.0, 600.0), (95.0, 25.0, 610.0)]
EXPECTED_HOW = ["detected", "tracked", "missing", "detected", "tracked"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from models.dual_branch import DualBranchNet, NetConfig
    from models.mano import build_hand_model
    from render.hand_renderer import HandRenderer
    from stages.checkpoints import save_checkpoint
    cfg = make_config(net="tiny", hand_model="standin", device="cpu")
    torch.manual_seed(0)
    net = DualBranchNet(NetConfig.from_config(cfg), HandRenderer(build_hand_model(cfg), size=128))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model": net.state_dict(), "config": cfg.to_dict(),
                           "hand_model": build_hand_model(cfg).identity()})
    return str(path)


def _sequence(hand_model, standin_arrays, K, height, width):
    pose = sample_poses(standin_arrays, 1, seed=11)[0]
    frames, joints = [], []
    for c in TRACK:
        if c is None:
            frames.append(np.full((height, width), 1300.0, np.float32))
            joints.append(np.full((21, 3), np.nan))
        else:
            s = hand_scene(hand_model, pose, np.array(c), K, height, width)
            frames.append(np.round(s.depth))
            joints.append(s.joints)
    return frames, np.stack(joints)


@pytest.fixture(scope="module")
def small_seq(hand_model, standin_arrays):
    return _sequence(hand_model, standin_arrays, K_SMALL, H, W)


def _export(tmp, ckpt, source, inp, **kw):
    cfg = make_config(phase="export", load_model=ckpt, out_dir=str(tmp / "out"), export_source=source,
                      export_input=str(inp), device="cpu", progress=False, save_overlays=2, **kw)
    return cfg, E.run(cfg)


def _write_folder(folder, frames, K):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        write_png16(folder / f"frame_{i:03d}.png", f)
    (folder / "intrinsics.yaml").write_text(f"fx: {K[0, 0]}\nfy: {K[1, 1]}\ncx: {K[0, 2]}\ncy: {K[1, 2]}\n")


def _read_outputs(out):
    npz = dict(np.load(out / "joints21.npz"))
    with open(out / "joints21.csv") as f:
        rows = list(csv.reader(f))
    with open(out / "frames.csv") as f:
        frames = list(csv.DictReader(f))
    return npz, rows, frames


def _check_files_agree(npz, rows, frames, K, n):
    assert [r["localization"] for r in frames] == EXPECTED_HOW
    found = np.array([h != "missing" for h in EXPECTED_HOW])
    np.testing.assert_array_equal(npz["found"], found)
    assert np.isnan(npz["xyz_mm"][~found]).all() and np.isnan(npz["uvd"][~found]).all()
    assert np.isfinite(npz["xyz_mm"][found]).all()
    vals = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    assert rows[0][:2] == ["frame", "found"] and vals.shape == (n, 126)
    np.testing.assert_allclose(vals[:, :63].reshape(n, 21, 3), npz["uvd"], atol=1e-3)
    np.testing.assert_allclose(vals[:, 63:].reshape(n, 21, 3), npz["xyz_mm"], atol=1e-3)
    xyz = npz["xyz_mm"][found]
    np.testing.assert_allclose(npz["uvd"][found][..., 0], K[0, 0] * xyz[..., 0] / xyz[..., 2] + K[0, 2], atol=1e-6)
    np.testing.assert_allclose(npz["uvd"][found][..., 1], K[1, 1] * xyz[..., 1] / xyz[..., 2] + K[1, 2], atol=1e-6)
    np.testing.assert_allclose(npz["uvd"][found][..., 2], xyz[..., 2])


def _check_centres_hold_the_hand(npz, joints):
    """The localizer's centres (the random network moves the crop centre arbitrarily) hold the hand."""
    found, located = npz["found"], npz["located_mm"][npz["found"]]
    err = np.abs(joints[found] - located[:, None])   # (F, 21, 3)
    assert np.mean(err < 125.0) >= 0.9  # most true joints inside the 250 mm crop cube
    assert np.all(np.linalg.norm(located - joints[found].mean(1), axis=1) < 95.0)  # test_localize.py


def test_folder_export_writes_consistent_files(tmp_path, checkpoint, small_seq):
    frames, joints = small_seq
    _write_folder(tmp_path / "seq", frames, K_SMALL)
    cfg, totals = _export(tmp_path, checkpoint, "folder", tmp_path / "seq", export_mirror=False)
    assert (totals["detected"], totals["tracked"], totals["missing"]) == (2, 2, 1)
    npz, rows, frame_rows = _read_outputs(tmp_path / "out" / "seq")
    _check_files_agree(npz, rows, frame_rows, K_SMALL, len(frames))
    assert [r["file"] for r in frame_rows] == [f"frame_{i:03d}.png" for i in range(len(frames))]
    _check_centres_hold_the_hand(npz, joints)
    overlays = sorted((tmp_path / "out" / "seq" / "overlays").glob("*.png"))
    assert [p.name for p in overlays] == ["000000.png", "000001.png"]


def test_every_nth_frame_keeps_frame_numbers_and_files(tmp_path, checkpoint, small_seq):
    frames, _ = small_seq
    _write_folder(tmp_path / "seq", frames, K_SMALL)
    _, totals = _export(tmp_path, checkpoint, "folder", tmp_path / "seq", export_mirror=False, export_every=2)
    npz, _, frame_rows = _read_outputs(tmp_path / "out" / "seq")
    assert totals["frames"] == 3 and list(npz["frame_ids"]) == [0, 2, 4]
    assert [(r["frame"], r["file"], r["localization"]) for r in frame_rows] == [
        ("0", "frame_000.png", "detected"), ("2", "frame_002.png", "missing"), ("4", "frame_004.png", "detected")]


def test_mirrored_input_gives_outputs_in_its_own_image_frame(tmp_path, checkpoint, small_seq, hand_model):
    frames, joints = small_seq
    cx = K_SMALL[0, 2]
    from datasets.common import mirror_frame
    _write_folder(tmp_path / "plain", frames, K_SMALL)
    _write_folder(tmp_path / "mirrored", [mirror_frame(f, cx) for f in frames], K_SMALL)
    _export(tmp_path / "a", checkpoint, "folder", tmp_path / "plain", export_mirror=False, export_write_meshes=True)
    _export(tmp_path / "b", checkpoint, "folder", tmp_path / "mirrored", export_mirror=True, export_write_meshes=True)
    a, _, _ = _read_outputs(tmp_path / "a" / "out" / "plain")
    b, _, fb = _read_outputs(tmp_path / "b" / "out" / "mirrored")
    assert [r["localization"] for r in fb] == EXPECTED_HOW
    flip = np.array([-1.0, 1.0, 1.0])
    # the network saw the same (re-mirrored) frames: outputs are the plain ones reflected x -> -x
    np.testing.assert_allclose(b["xyz_mm"], a["xyz_mm"] * flip, atol=1e-3)
    np.testing.assert_allclose(b["center_mm"], a["center_mm"] * flip, atol=1e-3)
    np.testing.assert_allclose(b["located_mm"], a["located_mm"] * flip, atol=1e-3)
    np.testing.assert_allclose(b["uvd"][..., 0], 2 * cx - a["uvd"][..., 0], atol=1e-3)
    # meshes: reflected vertices, reversed winding; NaN where no hand was found
    assert b["verts_mm"].shape == (len(frames), 779, 3)  # V = 779 (ARCHITECTURE.md)
    np.testing.assert_allclose(b["verts_mm"], a["verts_mm"] * flip, atol=1e-3)
    np.testing.assert_array_equal(b["faces"], a["faces"][:, ::-1])
    assert np.isnan(b["verts_mm"][~b["found"]]).all() and np.isfinite(b["verts_mm"][b["found"]]).all()
    # and the centres hold the hand where it is in the mirrored images (x of the order of +-90 mm)
    _check_centres_hold_the_hand(b, joints * flip)


def _gesture_tree(root, layout, frames):
    seq = root / "gesture_3" / "finger_2" / "subject_7" / "essai_1"
    seq.mkdir(parents=True)
    for k, f in enumerate(frames):
        write_png16(seq / (f"depth_{k + 1}.png" if layout == "dhg" else f"{k}_depth.png"), f)
    return seq


@pytest.mark.parametrize("layout", ["dhg", "shrec"])
def test_gesture_layouts_round_trip_skeleton_files(tmp_path, checkpoint, hand_model, standin_arrays, layout):
    # DHG/SHREC images are mirror views of the right-hand model: render the scene, then mirror it
    frames, joints = _sequence(hand_model, standin_arrays, K_GESTURE, 480, 640)
    from datasets.common import mirror_frame
    seq_dir = _gesture_tree(tmp_path / layout, layout, [mirror_frame(f, K_GESTURE[0, 2]) for f in frames])
    _, totals = _export(tmp_path, checkpoint, layout, tmp_path / layout)
    assert totals["sequences"] == 1 and totals["missing"] == 1
    out = tmp_path / "out" / "gesture_3" / "finger_2" / "subject_7" / "essai_1"
    npz, rows, frame_rows = _read_outputs(out)
    _check_files_agree(npz, rows, frame_rows, K_GESTURE, len(frames))
    _check_centres_hold_the_hand(npz, joints * np.array([-1.0, 1.0, 1.0]))
    world = read_skeletons(seq_dir / PRED_WORLD_FILE, 3)
    image = read_skeletons(seq_dir / PRED_IMAGE_FILE, 2)
    assert world.shape == (len(frames), 22, 3) and image.shape == (len(frames), 22, 2)
    found = npz["found"]
    assert np.isnan(world[~found]).all() and np.isnan(image[~found]).all()
    xyz = npz["xyz_mm"][found]
    np.testing.assert_allclose(world[found][:, 0] * 1000, xyz[:, 0], atol=1e-4)           # wrist
    np.testing.assert_allclose(world[found][:, 1] * 1000, xyz.mean(axis=1), atol=1e-4)    # palm
    np.testing.assert_allclose(world[found][:, 5] * 1000, xyz[:, 20], atol=1e-4)          # thumb tip
    w = world[found] * 1000
    u = K_GESTURE[0, 0] * w[..., 0] / w[..., 2] + K_GESTURE[0, 2]
    v = K_GESTURE[1, 1] * w[..., 1] / w[..., 2] + K_GESTURE[1, 2]
    np.testing.assert_allclose(image[found], np.stack([u, v], -1), atol=1e-3)


def test_kinect2_frames_export_end_to_end(tmp_path, checkpoint, shared_data):
    folder = shared_data / "kinect2"
    if not folder.is_dir():
        pytest.skip("../shared/data/kinect2 is not present")
    cfg, totals = _export(tmp_path, checkpoint, "folder", folder, export_mirror=True, fx=363.9, fy=363.9,
                          cx=255.4, cy=206.3)
    npz, _, frame_rows = _read_outputs(tmp_path / "out" / "kinect2")
    assert len(frame_rows) == 40 and totals["frames"] == 40
    found = npz["found"]
    assert found.sum() >= 30, [r["localization"] for r in frame_rows]
    z = npz["located_mm"][found][:, 2]
    assert np.all((z > 450.0) & (z < 700.0)), z
    assert all((r["localization"] == "missing") != f for r, f in zip(frame_rows, found))


def test_three_line_python_api_on_a_real_kinect2_frame(checkpoint, shared_data):
    """Predictor.load + predictor(depth_mm, K): localization, crop and both outputs, no Config."""
    from datasets.depth_io import read_depth
    from stages.predict import Predictor
    frame = shared_data / "kinect2" / "00000001.png"
    if not frame.is_file():
        pytest.skip("../shared/data/kinect2 is not present")
    predictor = Predictor.load(checkpoint, device="cpu")
    result = predictor(read_depth(frame), intrinsics(363.9, 363.9, 255.4, 206.3))
    assert result["found"] and result["localization"] == "detected"
    assert 450.0 < result["located_mm"][2] < 700.0           # the hand of this frame (see the export test)
    assert result["joints21_mm"].shape == (21, 3) and result["joints_mm"].shape == (14, 3)   # NYU joint set
    assert result["params"].shape == (62,) and result["verts_mm"].shape[1] == 3
    assert np.isfinite(result["joints21_mm"]).all() and result["faces"].shape[1] == 3
    empty = predictor(np.zeros((424, 512), np.float32), intrinsics(363.9, 363.9, 255.4, 206.3))
    assert not empty["found"] and np.isnan(empty["center_mm"]).all()
