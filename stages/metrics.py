"""Pose-error metrics with the public scorer's rules (datasets.md 7.2, 7.3; dsf-method.md 11.2).

Everything here is numpy float64 and pure.  Shapes: N frames, J joints.

* The public scorer converts u v d (px, px, mm) with the dataset's scorer intrinsics:
  x = (u - cx) d / fx, y = (v - cy) d / fy, z = d.  NYU's scorer uses fy = -587.07 (y-up); the sign of
  fy flips y for prediction and ground truth alike and leaves every distance unchanged.
* e_ij = Euclidean distance of frame i, joint j.  The mean error is the mean over all N*J pairs
  (never a mean of batch means).
* Fraction within distance (value = count / total) for thresholds 0..80 mm:
  max-frame (max_j e_ij <= th), mean-frame (mean_j e_ij <= th), joint (e_ij <= th).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datasets.joints import ICVL_DSF_DEPTH_BIAS_MM, JOINT_SETS

# (fx, fy, cx, cy) exactly as in the public scorer.
SCORER_INTRINSICS: dict[str, tuple[float, float, float, float]] = {
    "nyu": (588.03, -587.07, 320.0, 240.0),
    "simreal": (588.03, -587.07, 320.0, 240.0),
    "icvl": (240.99, 240.96, 160.0, 120.0),
    "msra": (241.42, 241.42, 160.0, 120.0),
}
CURVE_MODES = ("max_frame", "mean_frame", "joint")
CURVE_MAX_MM = 80
REPORT_THRESHOLDS_MM = (10, 20, 30, 40, 50, 80)


def joint_set_name(dataset: str) -> str:
    """Joint-set key of a dataset (simreal is in the NYU format)."""
    return "nyu" if dataset == "simreal" else dataset


def uvd_to_xyz(uvd: np.ndarray, intrinsics: tuple[float, float, float, float]) -> np.ndarray:
    """(N, J, 3) u v d -> (N, J, 3) camera mm with the scorer's formula (float64)."""
    fx, fy, cx, cy = intrinsics
    uvd = np.asarray(uvd, dtype=np.float64)
    d = uvd[..., 2]
    return np.stack([(uvd[..., 0] - cx) * d / fx, (uvd[..., 1] - cy) * d / fy, d], axis=-1)


def xyz_to_uvd(xyz: np.ndarray, intrinsics: tuple[float, float, float, float]) -> np.ndarray:
    """(N, J, 3) camera mm -> u v d; inverse of `uvd_to_xyz` with the same intrinsics."""
    fx, fy, cx, cy = intrinsics
    xyz = np.asarray(xyz, dtype=np.float64)
    z = xyz[..., 2]
    return np.stack([fx * xyz[..., 0] / z + cx, fy * xyz[..., 1] / z + cy, z], axis=-1)


def joint_errors(pred_xyz: np.ndarray, gt_xyz: np.ndarray) -> np.ndarray:
    """Euclidean errors (N, J) mm of predictions (N, J, 3) against ground truth (N, J, 3)."""
    pred_xyz, gt_xyz = np.asarray(pred_xyz, np.float64), np.asarray(gt_xyz, np.float64)
    if pred_xyz.shape != gt_xyz.shape:
        raise ValueError(f"prediction shape {pred_xyz.shape} differs from ground truth {gt_xyz.shape}")
    return np.sqrt(((pred_xyz - gt_xyz) ** 2).sum(-1))


def mean_error(err: np.ndarray, joints: tuple[int, ...] | None = None) -> float:
    """Mean over all frames x (selected) joints of errors (N, J)."""
    e = err if joints is None else err[:, list(joints)]
    return float(e.mean())


def per_joint_means(err: np.ndarray) -> np.ndarray:
    """(J,) mean error of each joint over frames."""
    return err.mean(axis=0)


def fraction_within(err: np.ndarray, mode: str, max_mm: int = CURVE_MAX_MM) -> np.ndarray:
    """Fraction (0..1) within th = 0, 1, ..., max_mm mm: (max_mm + 1,) for errors (N, J)."""
    if mode == "max_frame":
        values = err.max(axis=1)
    elif mode == "mean_frame":
        values = err.mean(axis=1)
    elif mode == "joint":
        values = err.reshape(-1)
    else:
        raise ValueError(f"unknown curve mode '{mode}'; valid: {', '.join(CURVE_MODES)}")
    th = np.arange(max_mm + 1, dtype=np.float64)
    return (values[None, :] <= th[:, None]).mean(axis=1)


def curves(err: np.ndarray, max_mm: int = CURVE_MAX_MM) -> dict[str, np.ndarray]:
    """All three fraction-within-distance curves {mode: (max_mm + 1,)}."""
    return {m: fraction_within(err, m, max_mm) for m in CURVE_MODES}


def subject_means(err: np.ndarray, first_index_subject2: int) -> list[float]:
    """NYU per-subject means: frames [0, k) and [k, N) (the second omitted when empty)."""
    out = [float(err[:first_index_subject2].mean())] if first_index_subject2 > 0 else []
    if err.shape[0] > first_index_subject2:
        out.append(float(err[first_index_subject2:].mean()))
    return out


def apply_dsf_depth_bias(pred_xyz: np.ndarray, dataset: str) -> np.ndarray:
    """DSF protocol: subtract ICVL's per-joint depth bias (mm) from the predicted camera z.

    pred_xyz (N, 16, 3) in ICVL order; other datasets are returned unchanged.  x and y stay as they
    are (the bias is a calibration of z only).
    """
    if joint_set_name(dataset) != "icvl":
        return pred_xyz
    out = np.array(pred_xyz, dtype=np.float64, copy=True)
    out[..., 2] -= np.asarray(ICVL_DSF_DEPTH_BIAS_MM, dtype=np.float64)
    return out


@dataclass(frozen=True)
class ProtocolResult:
    """Errors of one protocol: errors (N, Jp) over its joints, the joint indices used."""
    name: str
    joints: tuple[int, ...]
    errors: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.errors.mean())

    def summary(self, max_mm: int = CURVE_MAX_MM) -> dict:
        """JSON-ready: mean, per-joint means, the three curves 0..max_mm (fractions)."""
        return {"mean_mm": self.mean, "joints": list(self.joints),
                "per_joint_mm": per_joint_means(self.errors).tolist(),
                "curves": {k: v.tolist() for k, v in curves(self.errors, max_mm).items()}}


def protocol_errors(pred_uvd: np.ndarray, gt_uvd: np.ndarray, dataset: str) -> dict[str, ProtocolResult]:
    """Standard and DSF-protocol errors of u v d predictions (N, J, 3) against ground truth.

    standard: all joints of the dataset's standard set (NYU 14, ICVL 16, MSRA 21).
    dsf: NYU first 11; MSRA joints 1..19; ICVL all 16 with the depth bias subtracted from z.
    """
    js = JOINT_SETS[joint_set_name(dataset)]
    intr = SCORER_INTRINSICS[dataset]
    pred, gt = uvd_to_xyz(pred_uvd, intr), uvd_to_xyz(gt_uvd, intr)
    if pred.shape[1] != js.num_joints:
        raise ValueError(f"{dataset}: expected {js.num_joints} joints, got {pred.shape[1]}")
    std = joint_errors(pred, gt)[:, list(js.standard)]
    dsf = joint_errors(apply_dsf_depth_bias(pred, dataset), gt)[:, list(js.dsf)]
    return {"standard": ProtocolResult("standard", js.standard, std),
            "dsf": ProtocolResult("dsf", js.dsf, dsf)}
