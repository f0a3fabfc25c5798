"""Hand localization on full frames rendered by the test (known joints): detection, tracking, missing.

Tolerances.  The localizer returns a centre of the *visible surface* of the nearest hand-sized
region.  Two facts are checked separately:
* against the centroid of the visible hand pixels (known: the hand is also rendered alone) the error
  stays below 50 mm (30 mm on average): this measures how well the forearm, the wall and other
  objects are kept out; what remains is the wrist and forearm surface inside the spherical window;
* against the true 21-joint mean the error is larger by construction (< 95 mm each, < 65 mm on
  average): the joint mean is dominated by the 15 finger joints and 5 tips, 3-5 cm toward the
  fingers from the surface centroid of palm + fingers (the wrist lies 100 mm from it), and about
  10 mm behind the visible surface (surface points are biased toward the camera).  What the crop
  needs is checked too: at least 95 % of the joints lie inside the 250 mm cube around the centre
  (on a hand seen edge-on the wrist or a tip may fall just outside; tracking from a trained
  network's predictions re-centres on the joints).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from config import make_config
from datasets.localize import HandTracker, LocalizerSettings, backproject_pixels, detect_hand
from stream_scenes import (Scene, cylinder_mesh, forearm_for, hand_scene, intrinsics, mirror_scene, posed_hand, render_frame,
                           sample_poses)

H, W = 240, 320
KT = (300.0, 300.0, (W - 1) / 2.0, (H - 1) / 2.0)   # cx = (W-1)/2: mirroring is an exact flip
K = intrinsics(*KT)
SETTINGS = LocalizerSettings.from_config(make_config(phase="export"))
CENTERS = np.array([[-90.0, -40.0, 450.0], [60.0, 30.0, 520.0], [0.0, 0.0, 600.0], [80.0, -50.0, 680.0],
                    [-40.0, 50.0, 760.0], [30.0, 10.0, 400.0]])


@pytest.fixture(scope="module")
def poses(standin_arrays) -> torch.Tensor:
    return sample_poses(standin_arrays, 8, seed=3)


@pytest.fixture(scope="module")
def scenes(hand_model, poses) -> list[tuple[Scene, np.ndarray]]:
    """Scenes with forearm and wall, and the centroid of each one's visible hand pixels."""
    out = []
    for i, c in enumerate(CENTERS):
        scene = hand_scene(hand_model, poses[i], c, K, H, W)
        alone = hand_scene(hand_model, poses[i], c, K, H, W, wall_mm=None, forearm=False).depth
        visible = (alone > 0) & (np.abs(alone - scene.depth) < 0.5)
        rows, cols = np.nonzero(visible)
        out.append((scene, backproject_pixels(scene.depth, rows, cols, KT).mean(axis=0)))
    return out


def test_detected_centre_is_on_the_visible_hand_and_the_joints_fit_the_cube(scenes):
    to_surface, to_joints, inside = [], [], []
    for scene, surface_centroid in scenes:
        c = detect_hand(scene.depth, KT, SETTINGS)
        assert c is not None
        to_surface.append(np.linalg.norm(c - surface_centroid))
        to_joints.append(np.linalg.norm(c - scene.joint_mean))
        inside.append(np.all(np.abs(scene.joints - c) < 125.0, axis=1))
    assert np.mean(inside) >= 0.95, np.mean(inside, axis=1)   # joints inside the 250 mm crop cube
    assert max(to_surface) < 50.0 and np.mean(to_surface) < 30.0, to_surface
    assert max(to_joints) < 95.0 and np.mean(to_joints) < 65.0, to_joints


def test_mirrored_frame_gives_the_mirrored_centre(scenes):
    for scene, _ in scenes[:3]:
        c = detect_hand(scene.depth, KT, SETTINGS)
        cm = detect_hand(mirror_scene(scene).depth, KT, SETTINGS)
        np.testing.assert_allclose(cm * np.array([-1.0, 1.0, 1.0]), c, atol=0.5)


def _moving_frames(hand_model, pose, start, step, n) -> list[Scene]:
    return [hand_scene(hand_model, pose, np.asarray(start) + k * np.asarray(step), K, H, W) for k in range(n)]


def _distractor(near_z: float, u: float, v: float) -> tuple[np.ndarray, np.ndarray]:
    """A hand-sized cylinder (radius 35 mm, 90 mm long) pointing at the camera, nearest face at near_z."""
    x, y = (u - KT[2]) * near_z / KT[0], (v - KT[3]) * near_z / KT[1]
    return cylinder_mesh(np.array([x, y, near_z]), np.array([0.0, 0.0, 1.0]), 90.0, 35.0)


def test_tracking_follows_a_moving_hand_and_ignores_a_nearer_object(hand_model, poses):
    frames = _moving_frames(hand_model, poses[2], [-60.0, 0.0, 560.0], [20.0, 5.0, 8.0], 5)
    tracker = HandTracker(KT, SETTINGS, track=True)
    hows = []
    for k, scene in enumerate(frames):
        depth = scene.depth
        if k >= 2:  # a nearer hand-sized object appears at the far side of the image
            verts, _ = posed_hand(hand_model, poses[2], scene.joint_mean)
            meshes = [(verts, hand_model.faces.numpy()), _distractor(260.0, 280.0, 40.0)]
            meshes.append(forearm_for(scene.joints))
            depth = render_frame(meshes, K, H, W, wall_mm=1300.0)
            wrong = detect_hand(depth, KT, SETTINGS)
            assert wrong is not None and wrong[2] < 360.0  # detection alone takes the nearer object
        center, how = tracker.locate(depth)
        hows.append(how)
        # once a prediction (here the true joint mean) has given the surface-to-joints offset,
        # tracked centres land on the joints, not just on the visible surface
        tol = 95.0 if k == 0 else 20.0
        assert center is not None and np.linalg.norm(center - scene.joint_mean) < tol, (k, center, scene.joint_mean)
        tracker.update(scene.joint_mean)  # a perfect prediction seeds the next frame
    assert hows == ["detected"] + ["tracked"] * 4


def test_tracking_falls_back_to_detection_when_the_hand_jumps(hand_model, poses):
    a = hand_scene(hand_model, poses[4], [-100.0, 0.0, 500.0], K, H, W)
    b = hand_scene(hand_model, poses[4], [150.0, 20.0, 1000.0], K, H, W)   # jump of 560 mm
    tracker = HandTracker(KT, SETTINGS, track=True)
    assert tracker.locate(a.depth)[1] == "detected"
    tracker.update(a.joint_mean)
    center, how = tracker.locate(b.depth)
    assert how == "detected" and tracker.lost_count == 1
    assert np.linalg.norm(center - b.joint_mean) < 95.0
    tracker.update(None)  # no prediction: the next frame is detected again
    assert tracker.locate(b.depth)[1] == "detected"


def test_frames_without_a_hand_are_missing():
    tracker = HandTracker(KT, SETTINGS, track=True)
    empty = np.zeros((H, W), np.float32)
    wall = np.full((H, W), 1300.0, np.float32)
    rows = np.arange(H, dtype=np.float32)[:, None]
    floor = np.broadcast_to(600.0 + 4.0 * rows, (H, W)).astype(np.float32)   # a tilted plane, 600-1556 mm
    noisy = wall.copy()
    noisy[100:104, 150:155] = 500.0  # a 20-pixel speck in front of the wall
    for frame in (empty, wall, floor, noisy):
        assert detect_hand(frame, KT, SETTINGS) is None
        assert tracker.locate(frame) == (None, "missing")
    tracker.update(np.array([0.0, 0.0, 1300.0]))  # even seeded on the wall, tracking finds no hand there
    assert tracker.locate(wall) == (None, "missing")
