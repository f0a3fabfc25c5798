"""phase=export: run a trained model on depth streams and write skeletons.

    python train_render.py phase=export load_model=checkpoints/nyu_finetune/latest.pt \
        export_source=folder export_input=my_frames/ fx=363.9 fy=363.9 cx=255.4 cy=206.3
    python train_render.py phase=export load_model=... export_source=dhg export_input=DHG2016/

Per sequence (under out_dir/<sequence>/): `joints21.csv` and `joints21.npz` (21 network joints per
frame in full-image u, v px + depth mm and in camera xyz mm; NaN where no hand was found; the NPZ
also holds `center_mm`, the crop centre used, and `located_mm`, the localizer's surface centre),
`frames.csv` (how each frame's hand was found: tracked / detected / missing), overlay PNGs of the
skeleton (and of the localizer's centre, a green cross) on the depth image.  For DHG/SHREC also `skeletons_world_pred.txt` (22 joints, metres,
camera frame x right, y down, z forward) and `skeletons_image_pred.txt` (22 x u, v px) in each
sequence folder of the dataset, one line per exported frame (NaN for frames without a hand).
Mirrored inputs (DHG/SHREC are left-hand views of a right-hand model) are un-mirrored in every
output.  With `export_write_meshes` the NPZ also holds `params` (62, network space), `verts_mm`
(V, 3 per frame) and `faces` (winding reversed for mirrored inputs so normals still point out).

Per frame: the hand is localized (datasets.localize: tracked from the previous prediction, else
detected), a detected surface centre is refined by one re-centred second prediction, the crop is
made exactly as in the datasets and the network's last stage gives the joints (`export_branch`).
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from config import Config
from datasets.common import mirror_frame, mirror_xyz
from datasets.depth_io import DatasetError
from datasets.joints import DHG22_FROM_NETWORK
from datasets.localize import HandTracker, LocalizerSettings
from datasets.streams import Sequence, folder_sequence, gesture_sequences, read_frame, write_skeletons
from hand.params import NUM_PARAMS
from hand.skeleton import NETWORK_PARENTS
from render import camera
from stages.predict import Predictor


def dhg22_from_network(joints21: np.ndarray) -> np.ndarray:
    """(N, 21, D) network joints -> (N, 22, D) DHG/SHREC order; palm = mean of the 21 joints."""
    palm = joints21.mean(axis=1)
    cols = [palm if j == "palm" else joints21[:, j] for j in DHG22_FROM_NETWORK]
    return np.stack(cols, axis=1)


@dataclass
class SequenceResult:
    frame_ids: list[int] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    how: list[str] = field(default_factory=list)
    uvd: list[np.ndarray] = field(default_factory=list)      # (21, 3) u px, v px, d mm
    xyz: list[np.ndarray] = field(default_factory=list)      # (21, 3) mm
    center: list[np.ndarray] = field(default_factory=list)   # (3,) mm, crop centre used
    located: list[np.ndarray] = field(default_factory=list)  # (3,) mm, the localizer's surface centre
    params: list[np.ndarray] = field(default_factory=list)   # (62,) network space
    verts: list[np.ndarray] = field(default_factory=list)    # (V, 3) mm (export_write_meshes only)
    seconds: float = 0.0

    def add(self, fid: int, path: Path, how: str, K: np.ndarray, pred: dict | None, center: np.ndarray | None,
            located: np.ndarray | None) -> None:
        """One frame; NaN rows where no hand was found."""
        self.frame_ids.append(fid)
        self.paths.append(path)
        self.how.append(how)
        xyz = pred["xyz"] if pred is not None else np.full((21, 3), np.nan)
        self.xyz.append(xyz)
        self.uvd.append(project_px(xyz, K))
        self.center.append(center if center is not None else np.full(3, np.nan))
        self.located.append(located if located is not None else np.full(3, np.nan))
        self.params.append(pred["params"] if pred is not None else np.full(NUM_PARAMS, np.nan))
        self.verts.append(None if pred is None else pred.get("verts"))


def project_px(xyz: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera mm (..., 3) -> (u px, v px, d mm) with K (3, 3) (render.camera.project)."""
    return camera.project(torch.from_numpy(np.asarray(xyz, np.float64)), torch.from_numpy(K)).numpy()


def draw_overlay(depth_mm: np.ndarray, uv: np.ndarray | None, center_uv: np.ndarray | None) -> np.ndarray:
    """Colour depth image (near = bright) with the 21-joint skeleton and the crop centre (BGR uint8)."""
    valid = depth_mm > 0
    img = np.zeros(depth_mm.shape + (3,), np.uint8)
    if valid.any():
        lo = np.percentile(depth_mm[valid], 1)
        hi = min(np.percentile(depth_mm[valid], 99), lo + 1500.0)
        g = np.clip(1.0 - (depth_mm - lo) / max(hi - lo, 1.0), 0, 1)
        img = cv2.applyColorMap((g * 255).astype(np.uint8), cv2.COLORMAP_BONE)
        img[~valid] = 0
    if uv is not None and np.all(np.isfinite(uv)):
        pts = [tuple(int(round(c)) for c in p) for p in uv]
        for j, parent in enumerate(NETWORK_PARENTS):
            if parent >= 0:
                cv2.line(img, pts[parent], pts[j], (0, 200, 255), 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, (0, 0, 255), -1, cv2.LINE_AA)
    if center_uv is not None and np.all(np.isfinite(center_uv)):
        c = tuple(int(round(v)) for v in center_uv)
        cv2.drawMarker(img, c, (0, 255, 0), cv2.MARKER_CROSS, 12, 2)
    return img


def sequence_mirror(cfg: Config, seq: Sequence) -> bool:
    """export_mirror, or by default: yes for DHG/SHREC, no for a folder."""
    return cfg.export_mirror if cfg.export_mirror is not None else seq.layout in ("dhg", "shrec")


def unmirror(pred: dict | None) -> dict | None:
    """The 3D reflection x -> -x undoes the image mirror about cx (spec 1.5)."""
    if pred is None:
        return None
    out = dict(pred, xyz=mirror_xyz(pred["xyz"]))
    if "verts" in pred:
        out["verts"] = mirror_xyz(pred["verts"])
    return out


def check_frame_size(seq: Sequence, frame: np.ndarray, cfg: Config) -> None:
    """Frames of a folder read with the dataset preset's intrinsics must have that preset's size:
    otherwise the intrinsics belong to another sensor and every 3-D output would be wrong."""
    p = cfg.preset()
    preset_k = (cfg.fx, cfg.fy, cfg.cx, cfg.cy) == (p.fx, p.fy, p.cx, p.cy)
    H, W = frame.shape[:2]
    if seq.extra.get("intrinsics_from") == "config" and preset_k and (W, H) != (cfg.image_width, cfg.image_height):
        raise DatasetError(
            f"{seq.folder}: frames are {W}x{H} but no intrinsics were given, and the dataset={cfg.dataset} preset's "
            f"(fx={p.fx}, fy={p.fy}, cx={p.cx}, cy={p.cy}) belong to {cfg.image_width}x{cfg.image_height} images: "
            f"give your sensor's fx= fy= cx= cy= (and image_width= image_height=), or an intrinsics.yaml beside the frames")


def export_sequence(seq: Sequence, predictor: Predictor, cfg: Config, out: Path) -> SequenceResult:
    """Localize, crop, predict and un-mirror every frame of one sequence; write overlays."""
    mirror = sequence_mirror(cfg, seq)
    fx, fy, cx, cy = seq.intrinsics
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)
    tracker = HandTracker(seq.intrinsics, LocalizerSettings.from_config(cfg), cfg.track)
    res = SequenceResult()
    pairs = list(zip(seq.frame_ids, seq.frames))[::max(1, cfg.export_every)]
    if cfg.export_max_frames > 0:
        pairs = pairs[:cfg.export_max_frames]
    overlay_dir = out / "overlays"
    t0 = time.perf_counter()
    for n, (fid, path) in enumerate(pairs):
        raw = read_frame(path, cfg.export_depth_format)
        if n == 0:
            check_frame_size(seq, raw, cfg)
        depth = mirror_frame(raw, cx) if mirror else raw
        center, located, how, pred = predictor.locate_and_predict(depth, tracker, K, cfg.export_write_meshes)
        if mirror and pred is not None:
            pred, center, located = unmirror(pred), mirror_xyz(center), mirror_xyz(located)
        res.add(fid, path, how, K, pred, center, located)
        if n < cfg.save_overlays:
            overlay_dir.mkdir(parents=True, exist_ok=True)
            c_uv = None if located is None else project_px(located[None], K)[0, :2]
            cv2.imwrite(str(overlay_dir / f"{fid:06d}.png"),
                        draw_overlay(raw, None if pred is None else res.uvd[-1][:, :2], c_uv))
    res.seconds = time.perf_counter() - t0
    return res


def write_sequence_outputs(seq: Sequence, res: SequenceResult, out: Path, cfg: Config,
                           faces: np.ndarray | None = None) -> None:
    """CSV/NPZ per sequence, and DHG/SHREC skeleton files in the sequence folder."""
    out.mkdir(parents=True, exist_ok=True)
    uvd, xyz = np.stack(res.uvd), np.stack(res.xyz)
    arrays = dict(frame_ids=np.array(res.frame_ids), uvd=uvd, xyz_mm=xyz, center_mm=np.stack(res.center),
                  located_mm=np.stack(res.located),
                  found=np.array([h != "missing" for h in res.how]))
    if cfg.export_write_meshes:
        arrays["params"] = np.stack(res.params)
        V = next((v.shape[0] for v in res.verts if v is not None), 0)
        arrays["verts_mm"] = np.stack([v if v is not None else np.full((V, 3), np.nan) for v in res.verts])
        arrays["faces"] = faces
    np.savez_compressed(out / "joints21.npz", **arrays)
    with open(out / "joints21.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "found"] + [f"{a}{j}" for j in range(21) for a in ("u", "v", "d")]
                   + [f"{a}{j}_mm" for j in range(21) for a in ("x", "y", "z")])
        for i, fid in enumerate(res.frame_ids):
            w.writerow([fid, int(res.how[i] != "missing")] + [f"{v:.3f}" for v in uvd[i].ravel()]
                       + [f"{v:.3f}" for v in xyz[i].ravel()])
    with open(out / "frames.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "file", "localization"])
        for fid, path, how in zip(res.frame_ids, res.paths, res.how):
            w.writerow([fid, Path(path).name, how])
    if seq.layout in ("dhg", "shrec"):
        write_skeletons(seq.folder, dhg22_from_network(xyz) / 1000.0, dhg22_from_network(uvd)[..., :2])


def list_sequences(cfg: Config) -> list[Sequence]:
    if not cfg.export_input:
        raise ValueError("phase=export needs export_input=<folder of frames or DHG/SHREC root>")
    if cfg.export_source == "folder":
        return [folder_sequence(cfg.export_input, (cfg.fx, cfg.fy, cfg.cx, cfg.cy))]
    return gesture_sequences(cfg.export_input, cfg.export_source)


def run(cfg: Config) -> dict:
    sequences = list_sequences(cfg)
    predictor = Predictor.from_checkpoint(cfg)
    out_root = Path(cfg.out_dir)
    totals = {"sequences": 0, "frames": 0, "tracked": 0, "detected": 0, "missing": 0, "seconds": 0.0}
    for seq in tqdm(sequences, desc="export", disable=not cfg.progress or len(sequences) == 1):
        out = out_root / seq.name
        res = export_sequence(seq, predictor, cfg, out)
        faces = predictor.hand_model.faces.cpu().numpy()
        # un-mirrored meshes (x -> -x) keep their outward normals with the winding reversed
        write_sequence_outputs(seq, res, out, cfg, faces[:, ::-1].copy() if sequence_mirror(cfg, seq) else faces)
        totals["sequences"] += 1
        totals["frames"] += len(res.how)
        totals["seconds"] += res.seconds
        for how in res.how:
            totals[how] += 1
    fps = totals["frames"] / max(totals["seconds"], 1e-9)
    print(f"\nexport: {totals['sequences']} sequence(s), {totals['frames']} frames, "
          f"hand found in {totals['tracked'] + totals['detected']} ({totals['tracked']} tracked, "
          f"{totals['detected']} detected), missing in {totals['missing']}; {fps:.1f} frames/s "
          f"(localization + crop + network)\noutputs: {out_root}/<sequence>/ (joints21.csv, joints21.npz, "
          f"frames.csv, overlays/)" + ("; skeletons_*_pred.txt in each sequence folder"
                                        if cfg.export_source != "folder" else ""))
    totals["fps"] = fps
    return totals
