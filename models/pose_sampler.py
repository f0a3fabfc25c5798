"""Source-space pose rows for synthetic hands (spec 3.2, 8.1).

Two pose sources, in order of preference:
* the model file's ``hands_coeffs`` (the real MANO_RIGHT.pkl holds the PCA coefficients of its
  training scans): rows are drawn uniformly from them;
* otherwise (the stand-in hand, or an .npz without them) the fallback of spec 8.1: articulations
  drawn within anatomical joint limits, with finger synergies, converted to PCA coefficients, and
  poses whose fingers come too close to each other are rejected.

Anatomical axes come from the rest skeleton, so the same code serves the real MANO and the
stand-in: palmar normal n = normalize((J_indexMCP - J_wrist) x (J_pinkyMCP - J_wrist)) (right hand),
flexion axis of a bone with direction d is normalize(d x n) (a positive angle curls it toward the
palm), abduction axis is n (a positive angle turns it toward the little finger), twist axis is d.

Global rotation ω (design, documented in ``sample_view_rotation``): the hand faces a depth camera
(x right, y down, z forward) with the fingers roughly up (-y) and either the palm or the back toward
the camera (probability 1/2 each); on top: roll about the viewing axis U(-60°, 60°), yaw about the
camera's y axis U(-50°, 50°), pitch about its x axis U(-40°, 40°).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import Tensor

from smplx.lbs import batch_rigid_transform

from hand.params import POSE, ROTATION, identity_params
from hand.rotations import axis_angle_to_matrix, rotation_about_axis
from hand.skeleton import BONE_CHILD, CHAINS, MANO_PARENTS, TIP_PARENTS, TIP_VERTEX_IDS

FINGER_CHAINS = CHAINS[:4]  # index, middle, pinky, ring
THUMB_CHAIN = CHAINS[4]
# Abduction direction of each finger's spread (toward the little finger positive).
SPREAD_SIGN = (-1.0, -0.15, 1.0, 0.45)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def anatomical_axes(joints: np.ndarray, tips: np.ndarray) -> np.ndarray:
    """Rotation axes of the 15 articulated joints in the rest frame.

    joints (16, 3) rest skeleton (MANO order), tips (5, 3) rest fingertips (index, middle, pinky,
    ring, thumb).  Returns (15, 3, 3): for joint k+1, rows = (flexion, abduction, twist) axes.
    Thumb rows: (palmar abduction / CMC flexion, motion toward the fingers, twist).
    """
    pts = np.concatenate([joints, tips], axis=0)
    palmar = _unit(np.cross(joints[1] - joints[0], joints[7] - joints[0]))
    ulnar = _unit(joints[7] - joints[1])
    axes = np.zeros((15, 3, 3))
    for k in range(1, 16):
        d = _unit(pts[BONE_CHILD[k - 1]] - pts[k])
        if k in THUMB_CHAIN:
            toward = palmar if k == 13 else _unit(palmar + ulnar)
            across = _unit(ulnar - (ulnar @ d) * d)
            axes[k - 1] = (_unit(np.cross(d, toward)), _unit(np.cross(d, across)), d)
        else:
            n = _unit(palmar - (palmar @ d) * d)
            axes[k - 1] = (_unit(np.cross(d, n)), -n, d)
    return axes


def _u(n: int, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)


def _n(n: int, g: torch.Generator) -> Tensor:
    return torch.randn(n, generator=g, dtype=torch.float64)


def sample_joint_angles(n: int, generator: torch.Generator) -> Tensor:
    """Anatomical joint angles (n, 15, 3) in degrees: (flexion, abduction, twist) per joint.

    Limits (degrees): finger MCP flexion [-15, 90], abduction within ±20, PIP [0, 105], DIP
    [0, 80] (coupled to PIP: DIP ≈ 2/3 PIP); thumb CMC palmar abduction [-10, 50] and motion
    toward the fingers [-15, 35], MCP [0, 55], IP [-10, 80]; twist within ±5 everywhere.
    A grasp level shared by the fingers gives the synergies a PCA basis should capture.
    """
    g = generator
    grasp = _u(n, g) ** 1.3
    spread = _u(n, g)
    ang = torch.zeros(n, 15, 3, dtype=torch.float64)
    for f, (mcp, pip, dip) in enumerate(FINGER_CHAINS):
        curl = (grasp + 0.3 * _n(n, g)).clamp(0, 1)
        ang[:, mcp - 1, 0] = -15 + 105 * (curl + 0.15 * _n(n, g)).clamp(0, 1)
        ang[:, pip - 1, 0] = 105 * (curl + 0.15 * _n(n, g)).clamp(0, 1)
        ang[:, dip - 1, 0] = (ang[:, pip - 1, 0] * 2 / 3 + 8 * _n(n, g)).clamp(0, 80)
        ang[:, mcp - 1, 1] = (SPREAD_SIGN[f] * 18 * spread * (1 - 0.7 * curl) + 3 * _n(n, g)).clamp(-20, 20)
        for j in (pip, dip):
            ang[:, j - 1, 1] = (2 * _n(n, g)).clamp(-4, 4)
    cmc, mcp, ip = THUMB_CHAIN
    thumb_curl = (grasp + 0.3 * _n(n, g)).clamp(0, 1)
    ang[:, cmc - 1, 0] = -10 + 60 * _u(n, g)
    ang[:, cmc - 1, 1] = -15 + 50 * (thumb_curl + 0.1 * _n(n, g)).clamp(0, 1)
    ang[:, mcp - 1, 0] = 55 * (thumb_curl + 0.15 * _n(n, g)).clamp(0, 1)
    ang[:, ip - 1, 0] = -10 + 90 * (thumb_curl + 0.15 * _n(n, g)).clamp(0, 1)
    ang[:, :, 2] = 5 * (2 * torch.rand(n, 15, generator=g, dtype=torch.float64) - 1)
    return ang


def angles_to_articulation(angles_deg: Tensor, axes: np.ndarray) -> np.ndarray:
    """Joint angles (n, 15, 3) deg about `axes` (15, 3, 3) -> MANO articulation (n, 45) axis-angles.

    Each joint's rotation is R = R_flex · R_abd · R_twist about rest-frame axes.
    """
    ang = np.deg2rad(angles_deg.numpy())
    n = ang.shape[0]
    mats = np.zeros((n, 15, 3, 3))
    for k in range(15):
        flex, abd, twist = (rotation_about_axis(axes[k, a], ang[:, k, a]) for a in range(3))
        mats[:, k] = flex @ abd @ twist
    return Rotation.from_matrix(mats.reshape(-1, 3, 3)).as_rotvec().reshape(n, 45)


def sample_view_rotation(n: int, generator: torch.Generator, finger_dir: np.ndarray,
                         palmar: np.ndarray) -> Tensor:
    """Global rotations ω (n, 3) axis-angle: hand seen by a camera, fingers roughly up.

    finger_dir, palmar: (3,) unit vectors of the rest hand (wrist -> middle MCP, palm normal).
    The base rotation maps finger_dir -> -y (up in the image) and palmar -> -z (palm toward the
    camera) or +z (back toward the camera); then pitch U(±40°) about x, yaw U(±50°) about y and
    roll U(±60°) about z (the viewing axis) are applied in the camera frame.
    """
    f = _unit(finger_dir)
    p = _unit(palmar - (palmar @ f) * f)
    src = np.stack([f, p, np.cross(f, p)], axis=1)             # columns: rest frame
    palm_front = _u(n, generator) < 0.5
    ang = (2 * torch.rand(n, 3, generator=generator, dtype=torch.float64) - 1).numpy()
    ang *= np.deg2rad([40.0, 50.0, 60.0])
    out = np.zeros((n, 3))
    for back in (False, True):
        sel = (~palm_front).numpy() if back else palm_front.numpy()
        if not sel.any():
            continue
        pz = 1.0 if back else -1.0
        dst = np.stack([[0, -1.0, 0], [0, 0, pz], np.cross([0, -1.0, 0], [0, 0, pz])], axis=1)
        base = Rotation.from_matrix(dst @ src.T)
        jitter = (Rotation.from_rotvec(ang[sel, 2, None] * [0, 0, 1.0])
                  * Rotation.from_rotvec(ang[sel, 1, None] * [0, 1.0, 0])
                  * Rotation.from_rotvec(ang[sel, 0, None] * [1.0, 0, 0]))
        out[sel] = (jitter * base).as_rotvec()
    return torch.from_numpy(out)


def _finger_points(joints: Tensor) -> Tensor:
    """Points along the distal bones of each finger, joints (B, 21, 3) -> (B, 5, 12, 3)."""
    chains = ((1, 2, 3, 16), (4, 5, 6, 17), (7, 8, 9, 18), (10, 11, 12, 19), (14, 14, 15, 20))
    t = torch.linspace(0, 1, 4, dtype=joints.dtype, device=joints.device)[:, None]
    fingers = []
    for c in chains:
        segs = [joints[:, c[i], None] * (1 - t) + joints[:, c[i + 1], None] * t for i in range(3)]
        fingers.append(torch.cat(segs, dim=1))
    return torch.stack(fingers, dim=1)


def finger_clearance(joints: Tensor) -> Tensor:
    """Smallest distance between bones of different fingers, joints (B, 21, 3) -> (B,)."""
    pts = _finger_points(joints)
    B = pts.shape[0]
    best = torch.full((B,), float("inf"), dtype=joints.dtype, device=joints.device)
    for a in range(5):
        for b in range(a + 1, 5):
            d = torch.cdist(pts[:, a], pts[:, b]).flatten(1).min(dim=1).values
            best = torch.minimum(best, d)
    return best


class PoseSampler:
    """Source-space pose rows (ω, θ, β = 0, s = 1, t = 0) for synthetic hands.

    arrays: MANO-layout dict (real MANO or stand-in).  With ``hands_coeffs`` present, θ rows are
    drawn from it; else articulations come from `sample_joint_angles`, and a pose whose bones of
    two different fingers come closer than `min_clearance` x (middle-finger length) is redrawn.
    The test runs on the rigid skeleton (rest joints moved by the kinematic chain, tips by their
    DIP / IP transform), which is much cheaper than the posed mesh and close to its joints.
    """

    def __init__(self, arrays: dict, seed: int = 0, min_clearance: float = 0.13):
        self.generator = torch.Generator().manual_seed(seed)
        self.coeffs = None
        if arrays.get("hands_coeffs") is not None:
            self.coeffs = torch.as_tensor(np.asarray(arrays["hands_coeffs"]), dtype=torch.float64)
        reg = arrays["J_regressor"]
        v = np.asarray(arrays["v_template"], dtype=np.float64) * 1000.0
        rest_j = np.asarray(reg @ v, dtype=np.float64)            # dense or scipy.sparse regressor
        rest_tips = v[list(TIP_VERTEX_IDS)]
        self.rest_joints = torch.from_numpy(rest_j)
        self.rest_tips = torch.from_numpy(rest_tips)
        self.parents = torch.as_tensor(MANO_PARENTS)
        self.axes = anatomical_axes(rest_j, rest_tips)
        self.finger_dir = _unit(rest_j[4] - rest_j[0])
        self.palmar = _unit(np.cross(rest_j[1] - rest_j[0], rest_j[7] - rest_j[0]))
        pts = np.concatenate([rest_j, rest_tips])
        middle_len = sum(np.linalg.norm(pts[c] - pts[k]) for k, c in ((4, 5), (5, 6), (6, 17)))
        self.min_gap_mm = min_clearance * middle_len
        self.components = np.asarray(arrays["hands_components"], dtype=np.float64)
        self.mean = np.asarray(arrays["hands_mean"], dtype=np.float64).reshape(-1)

    def skeleton(self, articulation: np.ndarray) -> Tensor:
        """Rigidly posed skeleton (n, 21, 3) mm for articulations (n, 45), ω = 0, β = 0."""
        n = articulation.shape[0]
        rotvec = torch.cat([torch.zeros(n, 1, 3, dtype=torch.float64),
                            torch.from_numpy(articulation).reshape(n, 15, 3)], dim=1)
        rot = axis_angle_to_matrix(rotvec)
        joints, A = batch_rigid_transform(rot, self.rest_joints.expand(n, 16, 3), self.parents,
                                          dtype=torch.float64)
        tip_T = A[:, list(TIP_PARENTS)]                           # (n, 5, 4, 4)
        tips = (tip_T[..., :3, :3] @ self.rest_tips[None, :, :, None])[..., 0] + tip_T[..., :3, 3]
        return torch.cat([joints, tips], dim=1)

    def _articulated_thetas(self, n: int, g: torch.Generator) -> Tensor:
        """θ (n, 45) from anatomical sampling with clearance rejection."""
        kept, have = [], 0
        for _ in range(50):
            m = max(2 * (n - have), 16)
            art = angles_to_articulation(sample_joint_angles(m, g), self.axes)
            ok = finger_clearance(self.skeleton(art)) >= self.min_gap_mm
            theta = torch.from_numpy((art - self.mean) @ self.components.T)
            kept.append(theta[ok])
            have += int(ok.sum())
            if have >= n:
                break
        if have < n:
            raise RuntimeError(f"pose sampler: only {have} of {n} poses passed the clearance test")
        return torch.cat(kept)[:n]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n source-space rows (n, 62) float32 on the CPU: ω (3), θ (45), β = 0 (10), s = 1, t = 0.

        generator: a CPU generator (default: the sampler's own, seeded at construction); one on
        another device only seeds a CPU generator.
        """
        g = self.generator if generator is None else generator
        if g.device.type != "cpu":
            seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))
            g = torch.Generator().manual_seed(seed)
        if self.coeffs is not None:
            idx = torch.randint(0, self.coeffs.shape[0], (n,), generator=g)
            theta = self.coeffs[idx]
        else:
            theta = self._articulated_thetas(n, g)
        omega = sample_view_rotation(n, g, self.finger_dir, self.palmar)
        rows = identity_params(n, torch.float64)
        rows[:, ROTATION] = omega
        rows[:, POSE] = theta
        return rows.float()


__all__ = ["PoseSampler", "anatomical_axes", "sample_joint_angles", "angles_to_articulation",
           "sample_view_rotation", "finger_clearance"]
