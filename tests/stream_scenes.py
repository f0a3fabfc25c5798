"""Full depth frames with a known hand, rendered by the tests themselves (test helper, not a test).

A scene is the stand-in hand (models.mano.HandModel) posed by models.pose_sampler.PoseSampler and
placed so that the mean of its 21 joints lies at a chosen camera point, a forearm cylinder attached
at the wrist going down and back toward the body, and optionally a flat wall (the body / background)
farther away.  Everything is rasterized with render.rasterizer.rasterize_depth at a known K, so the
true joints of every frame are known exactly.  Depth in mm, 0 = missing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from render.rasterizer import rasterize_depth

FOREARM_LENGTH_MM = 260.0
FOREARM_RADIUS_MM = 30.0


@dataclass
class Scene:
    depth: np.ndarray     # (H, W) float32 mm, 0 = missing
    joints: np.ndarray    # (21, 3) float64 camera mm
    K: np.ndarray         # (3, 3) float64

    @property
    def joint_mean(self) -> np.ndarray:
        return self.joints.mean(axis=0)


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], np.float64)


def sample_poses(standin_arrays: dict, n: int, seed: int = 0) -> torch.Tensor:
    """n source-space pose rows (n, 62) of the pose sampler (view rotation included)."""
    from models.pose_sampler import PoseSampler
    return PoseSampler(standin_arrays, seed=seed).sample(n)


def posed_hand(hand_model, params: torch.Tensor, joint_mean_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pose row (62,) -> (verts (V,3), joints (21,3)) in camera mm with the joint mean at the point."""
    with torch.no_grad():
        verts, joints = hand_model.source_space(params[None].float())
    verts, joints = verts[0].double().numpy(), joints[0].double().numpy()
    shift = np.asarray(joint_mean_mm, np.float64) - joints.mean(axis=0)
    return verts + shift, joints + shift


def cylinder_mesh(start: np.ndarray, direction: np.ndarray, length: float, radius: float,
                  segments: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Closed cylinder from start along direction: (verts (2n+2, 3), faces (4n, 3))."""
    d = direction / np.linalg.norm(direction)
    a = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(d, a)
    phi = 2 * np.pi * np.arange(segments) / segments
    ring = radius * (np.cos(phi)[:, None] * a + np.sin(phi)[:, None] * b)
    end = start + length * d
    verts = np.concatenate([start + ring, end + ring, start[None], end[None]])
    n = segments
    i = np.arange(n)
    j = (i + 1) % n
    side = np.concatenate([np.stack([i, j, n + i], 1), np.stack([j, n + j, n + i], 1)])
    caps = np.concatenate([np.stack([np.full(n, 2 * n), j, i], 1), np.stack([np.full(n, 2 * n + 1), n + i, n + j], 1)])
    return verts, np.concatenate([side, caps])


def forearm_for(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forearm cylinder at the wrist, pointing away from the middle finger and tilted away from the camera."""
    d = joints[0] - joints[4]
    d /= np.linalg.norm(d)
    d[2] = max(d[2], 0.6)
    d /= np.linalg.norm(d)
    start = joints[0] - 15.0 * d  # slightly inside the wrist so that the two surfaces join
    return cylinder_mesh(start, d, FOREARM_LENGTH_MM, FOREARM_RADIUS_MM)


def render_frame(meshes: list[tuple[np.ndarray, np.ndarray]], K: np.ndarray, height: int, width: int,
                 wall_mm: float | None = None) -> np.ndarray:
    """Rasterize meshes [(verts, faces)] into one (H, W) float32 depth frame; the wall fills empty pixels."""
    depth = np.zeros((height, width), np.float32)
    if meshes:
        verts, faces, offset = [], [], 0
        for v, f in meshes:
            verts.append(v)
            faces.append(np.asarray(f, np.int64) + offset)
            offset += len(v)
        d, _ = rasterize_depth(torch.from_numpy(np.concatenate(verts))[None].float(),
                               torch.from_numpy(np.concatenate(faces)), torch.from_numpy(K).float(),
                               height, width)
        depth = d[0].numpy().astype(np.float32)
    if wall_mm is not None:
        depth = np.where(depth > 0, depth, np.float32(wall_mm)).astype(np.float32)
    return depth


def hand_scene(hand_model, params: torch.Tensor, joint_mean_mm, K: np.ndarray, height: int, width: int,
               wall_mm: float | None = 1300.0, forearm: bool = True) -> Scene:
    """A full frame of the posed hand (+ forearm, + wall) with its true joints."""
    hand_model = hand_model.cpu()
    verts, joints = posed_hand(hand_model, params, np.asarray(joint_mean_mm, np.float64))
    meshes = [(verts, hand_model.faces.cpu().numpy())]
    if forearm:
        meshes.append(forearm_for(joints))
    return Scene(render_frame(meshes, K, height, width, wall_mm), joints, K)


def mirror_scene(scene: Scene) -> Scene:
    """The same scene seen mirrored about cx (3D reflection x -> -x), frame and joints."""
    from datasets.common import mirror_frame, mirror_xyz
    return Scene(mirror_frame(scene.depth, float(scene.K[0, 2])), mirror_xyz(scene.joints), scene.K)
