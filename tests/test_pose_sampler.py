"""Pose sampler: row layout, determinism, anatomical ranges, clearance, view distribution."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hand.skeleton import BONE_CHILD, NETWORK_PARENTS
from models.pose_sampler import (PoseSampler, anatomical_axes, angles_to_articulation,
                                 finger_clearance, sample_joint_angles)


@pytest.fixture(scope="module")
def sampler(standin_arrays):
    return PoseSampler(standin_arrays, seed=0)


@pytest.fixture(scope="module")
def posed(sampler, hand_model):
    rows = sampler.sample(200, torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, joints = hand_model.mano_mm(rows)
    return rows, joints.double().numpy()


def test_rows_layout_and_determinism(sampler, standin_arrays, posed):
    rows, _ = posed
    assert rows.shape == (200, 62) and rows.dtype == torch.float32 and torch.isfinite(rows).all()
    assert (rows[:, 48:58] == 0).all() and (rows[:, 58] == 1).all() and (rows[:, 59:] == 0).all()
    again = sampler.sample(200, torch.Generator().manual_seed(1))
    assert torch.equal(rows, again)
    a, b = PoseSampler(standin_arrays, seed=3).sample(5), PoseSampler(standin_arrays, seed=3).sample(5)
    assert torch.equal(a, b) and not torch.equal(a, PoseSampler(standin_arrays, seed=4).sample(5))


def _bend_angles(j: np.ndarray) -> np.ndarray:
    """Angle (deg) between each bone k = 1..15 and its parent bone: (N, 15)."""
    out = []
    for k in range(1, 16):
        u = j[:, k] - j[:, NETWORK_PARENTS[k]]
        w = j[:, BONE_CHILD[k - 1]] - j[:, k]
        cos = (u * w).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(w, axis=1)
        out.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    return np.stack(out, 1)


def test_posed_joints_within_anatomical_ranges(sampler, posed):
    _, j = posed
    bends = _bend_angles(j)
    limits = np.array([100, 115, 90] * 4 + [95, 75, 90], dtype=float)   # MCP/PIP/DIP x4, thumb
    assert (bends.max(axis=0) <= limits).all(), bends.max(axis=0).round()
    assert bends[:, 1].mean() > 15                                        # fingers do bend
    rest = sampler.skeleton(np.zeros((1, 45)))[0].numpy()
    for k in range(1, 16):
        rest_len = np.linalg.norm(rest[BONE_CHILD[k - 1]] - rest[k])
        lens = np.linalg.norm(j[:, BONE_CHILD[k - 1]] - j[:, k], axis=1)
        assert np.abs(lens / rest_len - 1).max() < 0.12, k                # regressed joints stay on bones


def test_fingers_keep_clear_of_each_other(sampler, posed):
    _, j = posed
    assert finger_clearance(torch.as_tensor(j)).min() >= sampler.min_gap_mm - 2.0   # mesh vs rigid joints
    tips = j[:, 16:21]
    d = np.linalg.norm(tips[:, :, None] - tips[:, None], axis=-1) + 1e3 * np.eye(5)
    assert d.min() > 10.0


def test_view_rotation_fingers_up_palm_or_back_to_camera(posed):
    _, j = posed
    f = j[:, 4] - j[:, 0]
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    assert (f[:, 1] < 0).mean() > 0.95                  # fingers up in the image (camera y down)
    palmar = np.cross(j[:, 1] - j[:, 0], j[:, 7] - j[:, 0])
    toward = (palmar[:, 2] < 0).mean()                  # palm normal toward the camera (-z)
    assert 0.3 < toward < 0.7


def test_hands_coeffs_are_used_when_present(standin_arrays):
    coeffs = np.random.default_rng(0).normal(size=(7, 45))
    rows = PoseSampler(dict(standin_arrays, hands_coeffs=coeffs)).sample(20)
    theta = rows[:, 3:48].double().numpy()
    d = np.abs(theta[:, None] - coeffs[None]).max(axis=-1).min(axis=1)
    assert d.max() < 1e-6


def test_joint_angle_limits():
    ang = sample_joint_angles(2000, torch.Generator().manual_seed(0)).numpy()
    mcp, pip, dip = ang[:, [0, 3, 6, 9], 0], ang[:, [1, 4, 7, 10], 0], ang[:, [2, 5, 8, 11], 0]
    assert mcp.min() >= -15 and mcp.max() <= 90 and pip.min() >= 0 and pip.max() <= 105
    assert dip.min() >= 0 and dip.max() <= 80 and np.abs(ang[:, :, 2]).max() <= 5
    assert np.corrcoef(pip[:, 0], pip[:, 1])[0, 1] > 0.3             # finger synergy


def test_single_axis_articulation_is_angle_times_axis(standin_arrays):
    v = standin_arrays["v_template"]
    joints = standin_arrays["J_regressor"] @ v
    axes = anatomical_axes(joints, v[[333, 444, 672, 555, 744]])
    assert np.allclose(np.einsum("kab,kcb->kac", axes[:12], axes[:12]), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.norm(axes, axis=-1), 1.0)              # thumb axes: unit,
    assert np.abs(np.einsum("kab,kb->ka", axes[12:, :2], axes[12:, 2])).max() < 1e-9  # ⟂ the bone
    palmar = np.cross(joints[1] - joints[0], joints[7] - joints[0])
    bone = joints[5] - joints[4]
    curl = np.cross(axes[4, 0], bone)                   # motion of the middle PIP under flexion
    assert curl @ palmar > 0                            # positive flexion curls toward the palm
    ang = torch.zeros(1, 15, 3, dtype=torch.float64)
    ang[0, 4, 0] = 40.0
    art = angles_to_articulation(ang, axes).reshape(15, 3)
    assert np.allclose(art[4], np.deg2rad(40.0) * axes[4, 0], atol=1e-12)
    assert np.abs(np.delete(art, 4, axis=0)).max() < 1e-12


def test_rigid_skeleton_follows_the_mesh_joints(sampler, hand_model, posed):
    rows, _ = posed
    rows = rows[:50].clone()
    rows[:, :3] = 0.0                                                   # the skeleton has ω = 0
    art = rows[:, 3:48].double().numpy() @ sampler.components + sampler.mean
    with torch.no_grad():
        _, joints = hand_model.mano_mm(rows)
    gap = (sampler.skeleton(art) - joints.double()).norm(dim=-1)
    assert gap.max() < 3.0 and gap[:, 16:].max() < 0.1                 # mm; tips ride their DIP
