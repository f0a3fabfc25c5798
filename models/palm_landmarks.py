"""Label-free NYU palm landmarks PALM_1/2/3 (dsf-method.md 11.2; datasets.md 2.4).

NYU's 14 evaluated joints end with three palm points that have no MANO joint: PALM_1 (wrist, pinky
side), PALM_2 (wrist, thumb side) and PALM_3 (palm centre).  They are defined here once, from the
hand model alone (never from dataset labels), and computed deterministically at evaluation start:

1. Vertex sets, chosen on the template (β = 0, ω = 0, mean articulation θ = 0, s = 1):
   * wrist ring = the vertices sharing a face with the wrist-cap vertex (the last vertex);
   * pinky direction = unit vector from index MCP (joint 1) to pinky MCP (joint 7);
   * PALM_1 = the `WRIST_SET_SIZE` wrist-ring vertices farthest along the pinky direction;
   * PALM_2 = the `WRIST_SET_SIZE` wrist-ring vertices farthest against it (thumb side);
   * PALM_3 = the `PALM_SET_SIZE` vertices nearest to the palm centre point, the midpoint of the
     wrist (joint 0) and the mean of the four finger MCPs (joints 1, 4, 7, 10); palm and back
     surface vertices both enter, so their mean lies inside the palm.
   A landmark is the mean of its posed vertex set.
2. One fixed linear map W (3, 21) from the 21 network joints to the three landmarks, fitted by
   ridge-regularised least squares on seeded synthetic hand-model samples under the constraint that
   each row sums to 1 (KKT system, float64).  Rows summing to 1 make the map commute with translation
   and scale, so it applies to joints in mm or in normalized units alike, and to both branches.

The NYU 14-joint prediction from the network's joints and W is dataset knowledge:
`datasets.nyu.nyu14_from_network`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hand.params import NUM_POSE_COEFFS, NUM_SHAPE_COEFFS, POSE, ROTATION, SHAPE, identity_params

WRIST_SET_SIZE = 3
PALM_SET_SIZE = 8
FIT_SAMPLES = 1024
FIT_SEED = 0
RIDGE = 1e-4  # relative to the mean diagonal of A^T A
POSE_COEFF_STD = 0.5  # fallback pose sampler: std of the 45 PCA coefficients
SHAPE_STD = 1.0


@dataclass(frozen=True)
class PalmLandmarks:
    """vertex_sets: three index arrays (PALM_1, PALM_2, PALM_3); palm_map (3, 21) float64, rows sum to 1;
    fit_rms_mm: RMS residual (mm) of the map on its fitting samples, per landmark (3,)."""
    vertex_sets: tuple[np.ndarray, np.ndarray, np.ndarray]
    palm_map: np.ndarray
    fit_rms_mm: np.ndarray


def wrist_ring(faces: np.ndarray, cap_vertex: int) -> np.ndarray:
    """Sorted vertices sharing a face with the wrist-cap vertex. faces (F, 3) -> (R,)."""
    faces = np.asarray(faces)
    rows = faces[(faces == cap_vertex).any(axis=1)]
    ring = np.unique(rows[rows != cap_vertex])
    if ring.size < 2 * WRIST_SET_SIZE:
        raise ValueError(f"wrist cap vertex {cap_vertex} has only {ring.size} neighbours")
    return ring


def choose_vertex_sets(verts: np.ndarray, joints: np.ndarray, faces: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template verts (V, 3), joints (21, 3), faces (F, 3) -> PALM_1, PALM_2, PALM_3 vertex indices."""
    ring = wrist_ring(faces, verts.shape[0] - 1)
    pinky_dir = joints[7] - joints[1]
    pinky_dir = pinky_dir / np.linalg.norm(pinky_dir)
    order = ring[np.argsort(verts[ring] @ pinky_dir, kind="stable")]
    palm1, palm2 = np.sort(order[-WRIST_SET_SIZE:]), np.sort(order[:WRIST_SET_SIZE])
    centre = 0.5 * (joints[0] + joints[[1, 4, 7, 10]].mean(axis=0))
    body = np.arange(verts.shape[0] - 1)  # the cap vertex is not part of the surface proper
    dist = np.linalg.norm(verts[body] - centre, axis=1)
    palm3 = np.sort(body[np.argsort(dist, kind="stable")[:PALM_SET_SIZE]])
    return palm1, palm2, palm3


def landmarks_from_verts(verts: Tensor | np.ndarray, vertex_sets) -> np.ndarray:
    """(B, V, 3) posed vertices -> (B, 3, 3) landmarks (mean of each vertex set), float64."""
    v = verts.detach().double().cpu().numpy() if isinstance(verts, Tensor) else np.asarray(verts, np.float64)
    return np.stack([v[:, s].mean(axis=1) for s in vertex_sets], axis=1)


def random_pose_rows(n: int, generator: torch.Generator) -> Tensor:
    """(n, 62) source-space rows: uniform random global rotation, PCA θ ~ N(0, 0.5²), β ~ N(0, 1), s=1, t=0."""
    axis = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    axis = axis / axis.norm(dim=1, keepdim=True)
    angle = math.pi * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    rows = identity_params(n, torch.float64)
    rows[:, ROTATION] = axis * angle
    rows[:, POSE] = POSE_COEFF_STD * torch.randn(n, NUM_POSE_COEFFS, generator=generator, dtype=torch.float64)
    rows[:, SHAPE] = SHAPE_STD * torch.randn(n, NUM_SHAPE_COEFFS, generator=generator, dtype=torch.float64)
    return rows.float()


def fit_constrained_map(joints: np.ndarray, targets: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Weights (L, J) with rows summing to 1 minimising ||Σ_j w_j X_j − Y||² + λ||w||².

    joints (N, J, 3), targets (N, L, 3), float64.  λ = ridge · mean diag(AᵀA).
    """
    N, J, _ = joints.shape
    A = joints.transpose(0, 2, 1).reshape(N * 3, J)  # rows (frame, coordinate), columns joints
    G = A.T @ A
    lam = ridge * float(np.mean(np.diag(G)))
    kkt = np.zeros((J + 1, J + 1))
    kkt[:J, :J] = G + lam * np.eye(J)
    kkt[:J, J] = kkt[J, :J] = 1.0
    out = np.empty((targets.shape[1], J))
    for l in range(targets.shape[1]):
        rhs = np.concatenate([A.T @ targets[:, l].reshape(N * 3), [1.0]])
        out[l] = np.linalg.solve(kkt, rhs)[:J]
    return out


def apply_map(joints: np.ndarray | Tensor, palm_map: np.ndarray) -> np.ndarray | Tensor:
    """(B, 21, 3) joints -> (B, 3, 3) palm landmarks by the linear map (3, 21)."""
    if isinstance(joints, Tensor):
        return torch.einsum("lj,bjc->blc", torch.as_tensor(palm_map, dtype=joints.dtype, device=joints.device), joints)
    return np.einsum("lj,bjc->blc", palm_map, np.asarray(joints, np.float64))


def sample_hands(hand_model, pose_rows: Tensor, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Posed MANO (mm) of source rows (n, 62) -> verts (n, V, 3), joints (n, 21, 3) float64."""
    verts, joints = [], []
    dev = hand_model.faces.device
    with torch.no_grad():
        for k in range(0, pose_rows.shape[0], batch):
            v, j = hand_model.mano_mm(pose_rows[k:k + batch].to(dev, torch.float32))
            verts.append(v.double().cpu().numpy())
            joints.append(j.double().cpu().numpy())
    return np.concatenate(verts), np.concatenate(joints)


def build_palm_landmarks(hand_model, num_samples: int = FIT_SAMPLES, seed: int = FIT_SEED,
                         pose_rows: Tensor | None = None) -> PalmLandmarks:
    """Vertex sets from the template and the constrained map fitted on seeded samples (deterministic).

    pose_rows (n, 62): source-space rows to fit on (e.g. models.pose_sampler); default: the seeded
    fallback sampler `random_pose_rows`.
    """
    tv, tj = sample_hands(hand_model, identity_params(1))
    faces = hand_model.faces.detach().cpu().numpy()
    sets = choose_vertex_sets(tv[0], tj[0], faces)
    if pose_rows is None:
        pose_rows = random_pose_rows(num_samples, torch.Generator().manual_seed(seed))
    verts, joints = sample_hands(hand_model, pose_rows)
    targets = landmarks_from_verts(verts, sets)
    palm_map = fit_constrained_map(joints, targets)
    resid = apply_map(joints, palm_map) - targets
    rms = np.sqrt((resid ** 2).sum(-1).mean(0))
    return PalmLandmarks(sets, palm_map, rms)
