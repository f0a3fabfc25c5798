"""Metrics: scorer conversion, curves, protocols (datasets.md 7.2-7.3), checked on constructed cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.joints import ICVL_DSF_DEPTH_BIAS_MM
from render.camera import backproject, make_intrinsics
from stages import metrics as M


def test_scorer_conversion_matches_camera_with_y_flipped():
    rng = np.random.default_rng(0)
    uvd = np.stack([rng.uniform(0, 640, (5, 14)), rng.uniform(0, 480, (5, 14)), rng.uniform(300, 1200, (5, 14))], -1)
    xyz = M.uvd_to_xyz(uvd, M.SCORER_INTRINSICS["nyu"])
    ref = backproject(torch.from_numpy(uvd), make_intrinsics(588.03, 587.07, 320, 240, torch.float64)).numpy()
    np.testing.assert_allclose(xyz[..., 0], ref[..., 0], rtol=1e-12)
    np.testing.assert_allclose(xyz[..., 1], -ref[..., 1], rtol=1e-12)  # y-up output of the scorer
    np.testing.assert_allclose(M.xyz_to_uvd(xyz, M.SCORER_INTRINSICS["nyu"]), uvd, rtol=1e-12)


def test_errors_and_curves_on_a_constructed_case():
    err = np.array([[1.0, 3.0, 5.0], [10.0, 10.0, 40.0]])  # 2 frames, 3 joints
    assert M.mean_error(err) == pytest.approx(69.0 / 6)
    assert M.mean_error(err, (0, 1)) == pytest.approx(24.0 / 4)
    np.testing.assert_allclose(M.per_joint_means(err), [5.5, 6.5, 22.5])
    c = M.curves(err)
    assert all(v.shape == (81,) for v in c.values())
    # max-frame: frame maxima 5 and 40
    assert c["max_frame"][4] == 0 and c["max_frame"][5] == 0.5 and c["max_frame"][39] == 0.5
    assert c["max_frame"][40] == 1.0
    # mean-frame: frame means 3 and 20
    assert c["mean_frame"][2] == 0 and c["mean_frame"][3] == 0.5 and c["mean_frame"][20] == 1.0
    # joint: 6 pairs
    assert c["joint"][0] == 0 and c["joint"][3] == pytest.approx(2 / 6) and c["joint"][10] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="unknown curve mode"):
        M.fraction_within(err, "median")


def test_subject_means_split():
    err = np.concatenate([np.full((4, 2), 1.0), np.full((6, 2), 3.0)])
    assert M.subject_means(err, 4) == [1.0, 3.0]
    assert M.subject_means(err[:3], 4) == [1.0]


def _uvd(n, j, d=500.0):
    rng = np.random.default_rng(1)
    return np.stack([rng.uniform(100, 200, (n, j)), rng.uniform(80, 150, (n, j)), np.full((n, j), d)], -1)


def _shift_z(uvd, dataset, joints, dz):
    """u v d with camera z of the given joints moved by dz mm (x, y kept)."""
    xyz = M.uvd_to_xyz(uvd, M.SCORER_INTRINSICS[dataset])
    xyz[:, joints, 2] += dz
    return M.xyz_to_uvd(xyz, M.SCORER_INTRINSICS[dataset])


def test_nyu_dsf_protocol_uses_the_eleven_finger_joints():
    gt = _uvd(3, 14)
    pred = _shift_z(gt, "nyu", [11, 12, 13], 30.0)  # only the palm joints are wrong, by 30 mm
    res = M.protocol_errors(pred, gt, "nyu")
    assert res["dsf"].mean == pytest.approx(0.0, abs=1e-9)
    assert res["standard"].mean == pytest.approx(30.0 * 3 / 14)


def test_msra_dsf_protocol_drops_wrist_and_thumb_tip():
    gt = _uvd(2, 21, 400.0)
    pred = _shift_z(gt, "msra", [0, 20], 10.0)
    res = M.protocol_errors(pred, gt, "msra")
    assert res["dsf"].joints == tuple(range(1, 20)) and res["dsf"].mean == pytest.approx(0.0, abs=1e-9)
    assert res["standard"].mean == pytest.approx(20.0 / 21)


def test_icvl_dsf_protocol_subtracts_the_depth_bias_from_z():
    gt = _uvd(2, 16, 350.0)
    gt_xyz = M.uvd_to_xyz(gt, M.SCORER_INTRINSICS["icvl"])
    pred_xyz = gt_xyz.copy()
    pred_xyz[..., 2] += np.asarray(ICVL_DSF_DEPTH_BIAS_MM)  # prediction = truth + bias (in z only)
    pred = M.xyz_to_uvd(pred_xyz, M.SCORER_INTRINSICS["icvl"])
    res = M.protocol_errors(pred, gt, "icvl")
    assert res["dsf"].mean == pytest.approx(0.0, abs=1e-9)
    assert res["standard"].mean == pytest.approx(np.mean(ICVL_DSF_DEPTH_BIAS_MM))


def test_simreal_scores_like_nyu_and_joint_count_is_checked():
    gt = _uvd(2, 14)
    assert M.protocol_errors(gt, gt, "simreal")["dsf"].joints == tuple(range(11))
    with pytest.raises(ValueError, match="expected 16 joints"):
        M.protocol_errors(gt, gt, "icvl")
