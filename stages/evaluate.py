"""phase=test: evaluate a checkpoint on the dataset's test split (dsf-method.md 11; datasets.md 7).

    python train_render.py phase=test dataset=nyu load_model=run/latest.pt [out_dir=D]

Four predictions per frame: S1-PWE, S1-MPE, S2-PWE, S2-MPE (one stage: S1 only).
* PWE: joints decoded from the dense maps with the real crop as reference, `uvd_norm_to_xyz` -> mm;
  MPE: `norm_to_xyz` of the hand model's network-space joints (both via stages.predict.Predictor).
* Mapped to the dataset's joints with `JOINT_SETS[preset.joint_set].to_network`; NYU PALM_2/PALM_3
  through the label-free palm map of `models.palm_landmarks`.
* Projected to full-frame u v d with the sample's K and un-mirrored (u -> 2cx - u) for mirrored sets,
  rounded to 3 decimals, and scored from those u v d values exactly as the public scorer does
  (`stages.metrics`), so scoring the written files with phase=score gives the same numbers.
  Errors are averaged over all frames x joints, standard protocol and DSF protocol alongside.
Writes into out_dir: s{1,2}_{pwe,mpe}_std_uvd.txt, s{1,2}_{pwe,mpe}_net21_uvd.txt, gt_std_uvd.txt,
s{last}_mpe_params.txt (62 + C + b), frames.csv (frame id and status of every row; a test frame
that could not be read keeps its row as NaN), metrics.json, curves_{standard,dsf}.csv/.png, optional OBJ meshes
(save_meshes) and overlay PNGs (save_overlays).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import Config
from datasets import build_dataset
from datasets.common import mirror_uvd
from datasets.joints import JOINT_SETS
from datasets.simreal import ensure_simreal
from hand.skeleton import NETWORK_PARENTS
from models.palm_landmarks import build_palm_landmarks
from render import camera
from stages.metrics import CURVE_MODES, joint_set_name, protocol_errors
from stages.predict import Predictor, dataset_joints
from stages.results_io import (plot_curves, save_overlay, write_curves_csv, write_json, write_obj, write_rows,
                               write_uvd_file)
from stages.score import summarize

BRANCHES = ("pwe", "mpe")


@dataclass
class Collected:
    """Everything gathered over the test split, in frame order of `index` (float64 numpy).

    net21: {"s1_pwe": (N, 21, 3) mm, ...} in the network's (mirrored) camera frame; gt (N, Jd, 3) mm;
    K (N, 3, 3); center, cube (N, 3); params (N, 62) of the last stage; index (N,).
    """
    net21: dict[str, list] = field(default_factory=dict)
    gt: list = field(default_factory=list)
    K: list = field(default_factory=list)
    M: list = field(default_factory=list)
    center: list = field(default_factory=list)
    cube: list = field(default_factory=list)
    params: list = field(default_factory=list)
    index: list = field(default_factory=list)
    crops: list = field(default_factory=list)

    def finish(self) -> "Collected":
        """Concatenate the per-batch lists and sort every array by frame index."""
        order = np.argsort(np.concatenate(self.index), kind="stable")
        cat = lambda xs: np.concatenate(xs)[order]  # noqa: E731
        out = Collected({k: cat(v) for k, v in self.net21.items()}, cat(self.gt), cat(self.K), cat(self.M),
                        cat(self.center), cat(self.cube), cat(self.params), cat(self.index))
        out.crops = self.crops
        return out


def frame_uvd(xyz_mm: np.ndarray, K: np.ndarray, mirror: bool) -> np.ndarray:
    """Camera mm (N, J, 3) -> full-frame u v d (N, J, 3) with per-frame K (N, 3, 3); un-mirrored
    (u -> 2cx - u, datasets.md / spec 1.5) when the dataset was mirrored."""
    uvd = camera.project(torch.from_numpy(xyz_mm), torch.from_numpy(K)).numpy()
    return mirror_uvd(uvd, K[:, None, 0, 2]) if mirror else uvd


def round3(a: np.ndarray) -> np.ndarray:
    """Values as the 3-decimal result files hold them."""
    return np.round(a, 3)


@torch.no_grad()
def collect(predictor, loader, mirror: bool, num_crops: int, mesh_dir: Path | None, progress: bool) -> Collected:
    """Run the network over the loader; keep joints in mm, labels, cameras and the first crops."""
    col = Collected()
    for batch in tqdm(loader, desc="test", disable=not progress, leave=False):
        center, cube, K, A = (batch[k].double() for k in ("center", "cube", "K", "M"))
        K_crop = camera.crop_intrinsics(K, A)
        stages = predictor.predict_crops(batch["depth"], center.float(), cube.float(), K_crop.float())
        for s, out in enumerate(stages, start=1):
            for b in BRANCHES:
                col.net21.setdefault(f"s{s}_{b}", []).append(out[b].double().cpu().numpy())
        params = stages[-1]["params"]
        col.params.append(params.double().cpu().numpy())
        gt = camera.norm_to_xyz(batch["joints_xyz"].double(), center, cube)
        col.gt.append(gt.numpy())
        for name, t in (("K", K), ("M", A), ("center", center), ("cube", cube)):
            getattr(col, name).append(t.numpy())
        col.index.append(batch["index"].numpy())
        if len(col.crops) < num_crops:
            col.crops.extend(batch["depth"][: num_crops - len(col.crops), 0].numpy())
        if mesh_dir is not None:
            write_meshes(mesh_dir, predictor, params, center, cube, batch["index"].numpy(), mirror,
                         f"s{len(stages)}_mpe")
    return col.finish()


def write_meshes(mesh_dir: Path, predictor, params: torch.Tensor, center: torch.Tensor, cube: torch.Tensor,
                 index: np.ndarray, mirror: bool, tag: str) -> None:
    """OBJ of each predicted hand in camera mm (un-mirrored: x -> -x with the winding reversed)."""
    verts_nu, _ = predictor.hand_model.network_space(params)
    verts = camera.norm_to_xyz(verts_nu.double().cpu(), center, cube).numpy()
    faces = predictor.hand_model.faces.detach().cpu().numpy()
    if mirror:
        verts[..., 0] = -verts[..., 0]
        faces = faces[:, ::-1]
    for v, i in zip(verts, index):
        write_obj(mesh_dir / f"{int(i):07d}_{tag}.obj", v, faces)


def score_all(col: Collected, dataset: str, mirror: bool, palm_map: np.ndarray | None,
              subject2_index: int) -> tuple[dict, dict, np.ndarray]:
    """-> (std u v d per key (N, Jd, 3), report {protocol: {key: summary}}, gt u v d (N, Jd, 3))."""
    gt_uvd = round3(frame_uvd(col.gt, col.K, mirror))
    std_uvd, report = {}, {"standard": {}, "dsf": {}}
    for key, net21 in col.net21.items():
        std_uvd[key] = round3(frame_uvd(dataset_joints(net21, dataset, palm_map), col.K, mirror))
        res = protocol_errors(std_uvd[key], gt_uvd, dataset)
        # rows are sorted by frame index: subject 1 = the rows with index < subject2_index
        sub = int((col.index < subject2_index).sum()) if dataset == "nyu" else None
        for proto, r in res.items():
            report[proto][key] = summarize(r, sub)
    return std_uvd, report, gt_uvd


def write_curves(out_dir: Path, report: dict, dataset: str) -> list[Path]:
    """curves_<protocol>.csv (every key x mode) and .png (max-frame and mean-frame per key)."""
    files = []
    for proto, by_key in report.items():
        cols = {f"{k}_{m}": np.asarray(s["curves"][m]) for k, s in by_key.items() for m in CURVE_MODES}
        files.append(write_curves_csv(out_dir / f"curves_{proto}.csv", cols))
        shown = {f"{k.upper().replace('_', '-')} {m.replace('_', '-')}": v for (k, m), v in
                 (((k, m), np.asarray(s["curves"][m])) for k, s in by_key.items() for m in ("max_frame", "mean_frame"))}
        files.append(plot_curves(out_dir / f"curves_{proto}.png", shown, f"{dataset} test, {proto} protocol"))
    return files


def write_overlays(out_dir: Path, col: Collected, count: int) -> list[Path]:
    """PNG of the first `count` crops with ground truth and the last stage's PWE / MPE joints."""
    files = []
    last = max(int(k[1]) for k in col.net21)
    for n in range(min(count, len(col.crops))):
        K_crop = torch.from_numpy(col.M[n] @ col.K[n])
        pts = {"truth": col.gt[n], f"S{last}-PWE": col.net21[f"s{last}_pwe"][n],
               f"S{last}-MPE": col.net21[f"s{last}_mpe"][n]}
        px = {k: camera.project(torch.from_numpy(np.asarray(v)), K_crop).numpy()[:, :2] for k, v in pts.items()}
        files.append(save_overlay(out_dir / "overlays" / f"{int(col.index[n]):07d}.png", col.crops[n], px,
                                  parents=NETWORK_PARENTS, title=f"frame {int(col.index[n])}"))
    return files


def results_table(report: dict, dataset: str) -> str:
    """Rows stage/branch; columns standard mean, DSF mean, % frames with max error <= 20 / 40 mm."""
    js = JOINT_SETS[joint_set_name(dataset)]
    head = (f"{'stage/branch':<13}| {'standard ' + str(len(js.standard)) + 'j (mm)':>18} | "
            f"{'DSF ' + str(len(js.dsf)) + 'j (mm)':>13} | {'max-err<=20mm':>13} | {'max-err<=40mm':>13}")
    lines = [head, "-" * len(head)]
    for key, std in report["standard"].items():
        mf = std["curves"]["max_frame"]
        lines.append(f"{key.upper().replace('_', '-'):<13}| {std['mean_mm']:18.3f} | "
                     f"{report['dsf'][key]['mean_mm']:13.3f} | {100 * mf[20]:12.1f}% | {100 * mf[40]:12.1f}%")
    for key, std in report["standard"].items():
        if "subject_mm" in std:
            lines.append(f"{key.upper().replace('_', '-')} per test subject (standard): "
                         + " / ".join(f"{v:.3f}" for v in std["subject_mm"]) + " mm")
    if js.name == "nyu":
        lines.append("NYU PALM_2/PALM_3 (no hand-model joint): label-free palm map, models/palm_landmarks.py")
    return "\n".join(lines)


def with_missing_rows(uvd: np.ndarray, index: np.ndarray, dropped: dict) -> np.ndarray:
    """(N, J, 3) rows of the evaluated frames `index` -> rows of every frame (evaluated + dropped, in
    frame order), NaN for a dropped frame: the public format has no frame ids, so a row must never go
    missing."""
    ids = np.union1d(index, np.fromiter(dropped, dtype=np.int64, count=len(dropped)))
    out = np.full((len(ids),) + uvd.shape[1:], np.nan)
    out[np.searchsorted(ids, index)] = uvd
    return out


def write_frame_list(path: Path, index: np.ndarray, dropped: dict) -> Path:
    """frames.csv: one line per row of the benchmark files (frame id, evaluated or why not)."""
    rows = sorted([(int(i), "evaluated") for i in index] + [(int(i), why) for i, why in dropped.items()])
    path.write_text("frame,status\n" + "".join(f"{i},{why}\n" for i, why in rows))
    return path


def build_loader(cfg: Config):
    if cfg.dataset == "simreal":
        ensure_simreal(cfg)
    ds = build_dataset(cfg, "test", labels=True)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers), len(ds)


def run(cfg: Config) -> dict:
    """Evaluate cfg.load_model on the test split; print the table, write the files, return metrics."""
    predictor = Predictor.from_checkpoint(cfg)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mirror = bool(cfg.mirror)
    palm = None
    if joint_set_name(cfg.dataset) == "nyu":
        palm = build_palm_landmarks(predictor.hand_model)
    loader, n = build_loader(cfg)
    print(f"evaluating {cfg.load_model} on {cfg.dataset} test ({n} frames, stage_num={predictor.cfg.stage_num})")
    col = collect(predictor, loader, mirror, cfg.save_overlays, out_dir / "meshes" if cfg.save_meshes else None,
                  cfg.progress)
    std_uvd, report, gt_uvd = score_all(col, cfg.dataset, mirror, None if palm is None else palm.palm_map,
                                        cfg.nyu_subject2_first_index)
    dropped = getattr(getattr(loader.dataset, "table", None), "dropped", {})
    full = lambda a: with_missing_rows(a, col.index, dropped) if dropped else a  # noqa: E731
    files = [write_uvd_file(out_dir / "gt_std_uvd.txt", full(gt_uvd)), write_frame_list(out_dir / "frames.csv",
                                                                                       col.index, dropped)]
    for key in col.net21:
        files.append(write_uvd_file(out_dir / f"{key}_std_uvd.txt", full(std_uvd[key])))
        files.append(write_uvd_file(out_dir / f"{key}_net21_uvd.txt", full(frame_uvd(col.net21[key], col.K, mirror))))
    if dropped:
        first = sorted(dropped.items())[:3]
        print(f"warning: {len(dropped)} test frame(s) could not be evaluated ({first} ...): their rows in the "
              f"*_uvd.txt files are NaN (frames.csv lists every row); the errors below cover the "
              f"{len(col.index)} evaluated frames")
    last = max(int(k[1]) for k in col.net21)
    files.append(write_rows(out_dir / f"s{last}_mpe_params.txt", np.concatenate([col.params, col.center, col.cube], 1)))
    files += write_curves(out_dir, report, cfg.dataset)
    files += write_overlays(out_dir, col, cfg.save_overlays)
    metrics = {"dataset": cfg.dataset, "checkpoint": str(cfg.load_model), "frames": int(len(col.index)),
               "joint_set": JOINT_SETS[joint_set_name(cfg.dataset)].name, "protocols": report}
    if palm is not None:
        metrics["palm_landmarks"] = {"vertex_sets": [s.tolist() for s in palm.vertex_sets],
                                     "palm_map": palm.palm_map.tolist(), "fit_rms_mm": palm.fit_rms_mm.tolist()}
    files.append(write_json(out_dir / "metrics.json", metrics))
    print(results_table(report, cfg.dataset))
    print(f"wrote {len(files)} files to {out_dir} (predictions *_std_uvd.txt score with: python train_render.py "
          f"phase=score dataset={cfg.dataset} pred_file={out_dir}/s{last}_pwe_std_uvd.txt "
          f"gt_file={out_dir}/gt_std_uvd.txt)")
    return metrics
