"""Depth streams: folder / DHG / SHREC layouts, skeleton files, mirroring."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.depth_io import DatasetError, write_nyu_depth, write_png16
from datasets.streams import (GESTURE_INTRINSICS, PRED_IMAGE_FILE, PRED_WORLD_FILE, folder_sequence,
                              gesture_sequences, read_frame, read_skeletons, write_skeletons)
from datasets.common import mirror_frame
from stages.export import dhg22_from_network


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(300, 2000, size=(48, 64)).astype(np.float32)


def test_folder_sequence_reads_png16_nyu_rgb_and_npy_in_natural_order(tmp_path):
    frames = [_frame(i) for i in range(3)]
    write_png16(tmp_path / "f2.png", frames[0])
    write_nyu_depth(tmp_path / "f10.png", frames[1])
    np.save(tmp_path / "f11.npy", frames[2])
    (tmp_path / "intrinsics.yaml").write_text("fx: 363.9\nfy: 363.9\ncx: 255.4\ncy: 206.3\n")
    seq = folder_sequence(tmp_path, (1.0, 1.0, 0.0, 0.0))
    assert [p.name for p in seq.frames] == ["f2.png", "f10.png", "f11.npy"]
    assert seq.intrinsics == (363.9, 363.9, 255.4, 206.3)
    for f, p in zip(frames, seq.frames):
        np.testing.assert_array_equal(read_frame(p), f)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        folder_sequence(tmp_path / "missing", (1, 1, 0, 0))
    with pytest.raises(FileNotFoundError, match="no .png or .npy frames"):
        folder_sequence(tmp_path, (1, 1, 0, 0))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    seq = folder_sequence(tmp_path, (1, 1, 0, 0))
    with pytest.raises(DatasetError, match="bad.png"):
        read_frame(seq.frames[0])
    (tmp_path / "intrinsics.json").write_text('{"fx": 1}')
    with pytest.raises(ValueError, match="intrinsics.json"):
        folder_sequence(tmp_path, (1, 1, 0, 0))


def _gesture_tree(root, layout: str, n_frames: int = 5):
    for g, f, s, e in [(1, 1, 1, 1), (1, 2, 1, 1), (2, 1, 3, 2)]:
        d = root / f"gesture_{g}" / f"finger_{f}" / f"subject_{s}" / f"essai_{e}"
        d.mkdir(parents=True)
        for k in range(n_frames):
            name = f"depth_{k + 1}.png" if layout == "dhg" else f"{k}_depth.png"
            write_png16(d / name, _frame(k))


def test_dhg_layout_with_trimming_and_shrec_layout(tmp_path):
    _gesture_tree(tmp_path / "dhg", "dhg")
    (tmp_path / "dhg" / "informations_troncage_sequences.txt").write_text("1 2 1 1 2 4\n")
    seqs = gesture_sequences(tmp_path / "dhg", "dhg")
    assert [s.name for s in seqs] == ["gesture_1/finger_1/subject_1/essai_1",
                                      "gesture_1/finger_2/subject_1/essai_1",
                                      "gesture_2/finger_1/subject_3/essai_2"]
    assert seqs[0].frame_ids == [1, 2, 3, 4, 5] and seqs[1].frame_ids == [2, 3, 4]
    assert seqs[0].intrinsics == GESTURE_INTRINSICS
    _gesture_tree(tmp_path / "shrec", "shrec")
    seqs = gesture_sequences(tmp_path / "shrec", "shrec")
    assert seqs[2].frame_ids == [0, 1, 2, 3, 4] and seqs[2].frames[0].name == "0_depth.png"
    with pytest.raises(FileNotFoundError, match="gesture_"):
        gesture_sequences(tmp_path, "dhg")


def test_skeleton_files_round_trip_in_dhg_order(tmp_path):
    rng = np.random.default_rng(0)
    joints21 = rng.normal(size=(7, 21, 3)) * 50 + np.array([0, 0, 500])
    world = dhg22_from_network(joints21) / 1000.0
    image = dhg22_from_network(joints21)[..., :2]
    w, i = write_skeletons(tmp_path, world, image)
    assert (w.name, i.name) == (PRED_WORLD_FILE, PRED_IMAGE_FILE)
    np.testing.assert_allclose(read_skeletons(w, 3), world, atol=1e-8)
    np.testing.assert_allclose(read_skeletons(i, 2), image, atol=1e-4)
    # DHG order: 1 wrist, 2 palm (mean of all joints), 6 thumb tip, 10 index tip, 22 pinky tip
    np.testing.assert_allclose(world[:, 0], joints21[:, 0] / 1000)
    np.testing.assert_allclose(world[:, 1], joints21.mean(1) / 1000)
    np.testing.assert_allclose(world[:, 5], joints21[:, 20] / 1000)
    np.testing.assert_allclose(world[:, 9], joints21[:, 16] / 1000)
    np.testing.assert_allclose(world[:, 21], joints21[:, 18] / 1000)


def test_mirror_about_principal_point_is_the_3d_reflection():
    # a point seen at column c appears at column 2cx - c after mirroring, i.e. x -> -x
    H, W, cx = 8, 20, 9.0
    depth = np.zeros((H, W), np.float32)
    depth[3, 4] = 700.0
    m = mirror_frame(depth, cx)
    assert m[3, int(2 * cx - 4)] == 700.0 and m.sum() == 700.0
    np.testing.assert_array_equal(mirror_frame(m, cx)[:, :-1], depth[:, :-1])  # column 19 maps outside
