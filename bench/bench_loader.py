"""Real-data loader speed: NYU-format crops per second through a DataLoader (issue 4).

    python bench/bench_loader.py                      # 300 frames, 2 workers, batch 32, augmented train split
    python bench/bench_loader.py --frames 600 --workers 4 --epochs 3 --root /tmp/nyu_bench

Writes `--frames` 640x480 NYU-format frames (PNG depth = 256*G + B, background fill 2001 mm, a noisy
hand-sized blob cluster per frame, V2V-style centre file, joint_data.mat) with `write_nyu_split` into a
temporary folder (or --root, reused when present), then times whole epochs of the training split
(augmentation rot/com/sc/none on) after one warm-up epoch, and the single-process per-item cost.
Prints one JSON line; compare crops/s with the training step rate of the full model (steps/s x batch).
cpu_ms_per_crop (process CPU time, single process) and cpu_bound_crops_per_s = workers x 1000 / cpu_ms
stay meaningful on a shared machine, where the wall-clock rate depends on the other load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import make_config  # noqa: E402
from datasets import build_dataset  # noqa: E402
from datasets.nyu import write_nyu_split  # noqa: E402

FX, FY, CX, CY = 588.03, 587.07, 320.0, 240.0


def make_frame(rng: np.random.Generator, center: np.ndarray, n_blobs: int = 14, radius: float = 14.0) -> np.ndarray:
    """A 480x640 depth frame (mm): blobs near `center` over a 2001 mm fill, with 1 mm noise."""
    frame = np.full((480, 640), 2001.0)
    r0, c0 = int(FY * center[1] / center[2] + CY), int(FX * center[0] / center[2] + CX)
    half = 110
    rs, cs = slice(max(r0 - half, 0), min(r0 + half, 480)), slice(max(c0 - half, 0), min(c0 + half, 640))
    r, c = np.mgrid[rs, cs].astype(np.float64)
    for p in center + rng.uniform(-60, 60, (n_blobs, 3)) * [1, 1, 0.5]:
        pr, pc = FY * p[1] / p[2] + CY, FX * p[0] / p[2] + CX
        rad = radius * FX / p[2]
        d2 = ((r - pr) ** 2 + (c - pc) ** 2) / rad ** 2
        z = p[2] - radius * np.sqrt(np.clip(1 - d2, 0, 1))
        sub = frame[rs, cs]
        frame[rs, cs] = np.where((d2 < 1) & (z < sub), z, sub)
    return frame + rng.normal(0, 1.0, frame.shape) * (frame < 2001)


def write_set(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centers = np.c_[rng.uniform(-150, 150, n), rng.uniform(-100, 100, n), rng.uniform(550, 1000, n)]
    joints = np.repeat(centers[:, None], 36, 1) + rng.normal(0, 30, (n, 36, 3))
    write_nyu_split(root, "train", (make_frame(rng, c) for c in centers), joints, centers)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    ap.add_argument("--root", default="", help="dataset folder (kept); default a temporary folder")
    ap.add_argument("--labels", action="store_true", help="also load labels (finetuning loads none)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        t0 = time.perf_counter()
        if not (root / "train" / f"depth_1_{args.frames:07d}.png").is_file():
            write_set(root, args.frames)
        t_write = time.perf_counter() - t0
        cfg = make_config(dataset="nyu", data_root=str(root), val_fraction=0.0, max_frames=args.frames)
        ds = build_dataset(cfg, "train", labels=args.labels)
        torch.manual_seed(0)
        m = min(64, len(ds))
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(m):
            ds[i]
        per_item_ms = 1000 * (time.perf_counter() - t0) / m
        cpu_ms = 1000 * (time.process_time() - c0) / m  # insensitive to other processes on the machine
        dl = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         persistent_workers=args.workers > 0, drop_last=True)
        for _ in dl:  # warm-up epoch (worker start-up)
            pass
        t0, n = time.perf_counter(), 0
        for _ in range(args.epochs):
            for b in dl:
                n += b["depth"].shape[0]
        dt = time.perf_counter() - t0
    out = {"frames": len(ds), "workers": args.workers, "batch": args.batch, "labels": args.labels,
           "crops_per_s": round(n / dt, 1), "batches_per_s": round(n / dt / args.batch, 2),
           "single_process_ms_per_crop": round(per_item_ms, 2), "cpu_ms_per_crop": round(cpu_ms, 2),
           "cpu_bound_crops_per_s": round(args.workers * 1000 / cpu_ms, 1) if args.workers else None,
           "load_avg_1min": round(os.getloadavg()[0], 2), "write_s": round(t_write, 1),
           "torch_threads": torch.get_num_threads()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
