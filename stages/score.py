"""phase=score: score a u v d prediction file with the public scorer's rules (datasets.md 7).

    python train_render.py phase=score dataset=nyu pred_file=P gt_file=G [out_dir=D]

Prints `mean error: X.XXX mm` (all N x J pairs, standard protocol), the DSF-protocol number alongside
(NYU 11 finger joints, MSRA joints 1..19, ICVL 16 with depth bias), NYU per-subject means (frames
< / >= nyu_subject2_first_index), curve points at 10/20/30/40/50/80 mm and per-joint means; writes
`score_curves.csv` (0..80 mm) and `score_curves.png` into out_dir, and returns the report dict.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from config import Config, ConfigError
from datasets.joints import JOINT_SETS
from stages.metrics import (CURVE_MODES, REPORT_THRESHOLDS_MM, ProtocolResult, curves, joint_set_name,
                            per_joint_means, protocol_errors, subject_means)
from stages.results_io import ResultFileError, plot_curves, read_uvd_file, write_curves_csv, write_json


def require_finite(values: np.ndarray, path: str | Path) -> np.ndarray:
    """(N, J, 3) values of a result file; ResultFileError naming the first non-finite value's line."""
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        line, joint, axis = (int(v) for v in bad[0])
        raise ResultFileError(f"{path}, line {line + 1}: non-finite value {values[line, joint, axis]} (joint "
                              f"{joint + 1}, {'uvd'[axis]}); {len(np.unique(bad[:, 0]))} line(s) hold NaN/Inf: a "
                              f"frame without a prediction cannot be scored (see frames.csv beside a file we wrote)")
    return values


def read_pair(pred_file: str | Path, gt_file: str | Path, num_joints: int) -> tuple[np.ndarray, np.ndarray]:
    """Read prediction and ground truth (N, J, 3); line counts must agree, every value be finite."""
    pred = require_finite(read_uvd_file(pred_file, num_joints), pred_file)
    gt = require_finite(read_uvd_file(gt_file, num_joints), gt_file)
    if pred.shape[0] != gt.shape[0]:
        raise ResultFileError(f"{pred_file} has {pred.shape[0]} frames (lines) but {gt_file} has "
                              f"{gt.shape[0]}; both must list the test frames in the same order")
    return pred, gt


def summarize(result: ProtocolResult, subject2_index: int | None = None) -> dict:
    """Mean, curve points (% at REPORT_THRESHOLDS_MM), per-joint means and per-subject means."""
    c = curves(result.errors)
    out = {"mean_mm": result.mean, "joints": list(result.joints),
           "per_joint_mm": per_joint_means(result.errors).tolist(),
           "curve_points_pct": {m: {t: 100.0 * float(c[m][t]) for t in REPORT_THRESHOLDS_MM} for m in CURVE_MODES},
           "curves": {m: c[m].tolist() for m in CURVE_MODES}}
    if subject2_index is not None:
        out["subject_mm"] = subject_means(result.errors, subject2_index)
    return out


def score_arrays(pred_uvd: np.ndarray, gt_uvd: np.ndarray, dataset: str,
                 subject2_index: int | None = None) -> dict:
    """Report {'standard': summary, 'dsf': summary} of u v d predictions (N, J, 3) vs ground truth."""
    res = protocol_errors(pred_uvd, gt_uvd, dataset)
    sub = subject2_index if dataset == "nyu" else None  # NYU's two test subjects (datasets.md 2.4)
    return {name: summarize(r, sub) for name, r in res.items()}


def dsf_label(dataset: str) -> str:
    return {"nyu": "DSF protocol (11 finger joints)", "msra": "DSF protocol (19 joints, 1..19)",
            "icvl": "DSF protocol (16 joints, ICVL depth bias)"}[joint_set_name(dataset)]


def format_report(report: dict, dataset: str) -> list[str]:
    """Human-readable lines; the first is `mean error: X.XXX mm`."""
    std, dsf = report["standard"], report["dsf"]
    js = JOINT_SETS[joint_set_name(dataset)]
    lines = [f"mean error: {std['mean_mm']:.3f} mm",
             f"{dsf_label(dataset)} mean error: {dsf['mean_mm']:.3f} mm"]
    if "subject_mm" in std:
        subj = " / ".join(f"{v:.3f}" for v in std["subject_mm"])
        lines.append(f"per test subject (frames < / >= split): {subj} mm")
    for mode in CURVE_MODES:
        pts = std["curve_points_pct"][mode]
        what = "joints" if mode == "joint" else f"frames ({mode.replace('_', '-')} error)"
        lines.append(f"% {what} within " + " / ".join(str(t) for t in REPORT_THRESHOLDS_MM) + " mm: "
                     + " / ".join(f"{pts[t]:.1f}" for t in REPORT_THRESHOLDS_MM))
    lines.append("per-joint mean error (mm):")
    for j, v in zip(std["joints"], std["per_joint_mm"]):
        lines.append(f"  {j:2d} {js.names[j]:<12s} {v:7.3f}")
    return lines


def write_curve_files(out_dir: str | Path, stem: str, summary: dict, title: str) -> list[Path]:
    """`<stem>.csv` (threshold 0..80, the three curves as fractions) and `<stem>.png`."""
    out_dir = Path(out_dir)
    cols = {m: np.asarray(summary["curves"][m]) for m in CURVE_MODES}
    return [write_curves_csv(out_dir / f"{stem}.csv", cols), plot_curves(out_dir / f"{stem}.png", cols, title)]


def run(cfg: Config) -> dict:
    """Score cfg.pred_file against cfg.gt_file for cfg.dataset; print and write the report."""
    if not cfg.pred_file or not cfg.gt_file:
        raise ConfigError("phase=score needs pred_file=... and gt_file=... (u v d per joint per line)")
    js = JOINT_SETS[joint_set_name(cfg.dataset)]
    pred, gt = read_pair(cfg.pred_file, cfg.gt_file, js.num_joints)
    report = score_arrays(pred, gt, cfg.dataset, cfg.nyu_subject2_first_index)
    report.update(pred_file=str(cfg.pred_file), gt_file=str(cfg.gt_file), dataset=cfg.dataset,
                  frames=int(pred.shape[0]))
    print(f"scoring {cfg.pred_file} against {cfg.gt_file} ({cfg.dataset}, {pred.shape[0]} frames, "
          f"{js.num_joints} joints)")
    for line in format_report(report, cfg.dataset):
        print(line)
    if cfg.out_dir:
        files = write_curve_files(cfg.out_dir, "score_curves", report["standard"],
                                  f"{Path(cfg.pred_file).name} ({cfg.dataset})")
        files.append(write_json(Path(cfg.out_dir) / "score.json", report))
        print("wrote " + ", ".join(str(f) for f in files))
    return report
