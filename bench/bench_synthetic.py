"""Throughput of the synthetic generator and of simreal generation.

    python bench/bench_synthetic.py [--device cpu|cuda] [--batch 32] [--batches 5] [--workers 2]
                                    [--simreal-frames 48] [--rotation so3] [--threads 1]

Prints samples (frames) per second for: SyntheticHands.batch on the device, the SyntheticDataset
DataLoader wrapper (CPU workers), and generate_simreal (full 640 x 480 frames written as NYU PNGs).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic_dataset import SyntheticDataset  # noqa: E402
from config import make_config  # noqa: E402
from datasets.simreal import generate_simreal  # noqa: E402
from datasets.synthetic import SyntheticHands  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_batch(cfg, device: str, batch: int, batches: int, rotation: str) -> tuple[float, float]:
    from models.mano import build_hand_model
    from render.hand_renderer import HandRenderer
    model = build_hand_model(cfg).to(device)
    gen = SyntheticHands(cfg, model, HandRenderer(model).to(device), rotation)
    g = torch.Generator().manual_seed(0)
    gen.batch(batch, g, device)  # warm-up
    sync(device)
    t_draw = t_all = 0.0
    for _ in range(batches):
        t0 = time.perf_counter()
        d = gen.draw(batch, g)
        t1 = time.perf_counter()
        gen.build(d, device)
        sync(device)
        t_draw += t1 - t0
        t_all += time.perf_counter() - t0
    return batch * batches / t_all, t_draw / t_all


def bench_loader(cfg, batch: int, batches: int, workers: int, rotation: str) -> float:
    ds = SyntheticDataset(cfg, seed=0, length=batch * (batches + workers), rotation=rotation)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=False)
    it = iter(loader)
    for _ in range(workers):  # warm-up: one batch per worker (lazy model build)
        next(it)
    t0 = time.perf_counter()
    n = sum(b["depth"].shape[0] for b in it)
    return n / (time.perf_counter() - t0)


def bench_simreal(cfg, frames: int) -> tuple[float, float, dict]:
    """(end-to-end frames/s incl. setup, steady-state frames/s of render + sensor + PNG, summary)."""
    from datasets.depth_io import write_nyu_depth
    from datasets.simreal import SimrealScene
    from models.mano import build_hand_model
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = generate_simreal(tmp, cfg, frames, 0, seed=0)
        end_to_end = frames / (time.perf_counter() - t0)
        scene = SimrealScene(cfg, build_hand_model(cfg), seed=1)
        draws = scene.draw(frames, torch.Generator().manual_seed(1))
        t0 = time.perf_counter()
        for i, f in enumerate(scene.frames(draws, seed=2)):
            write_nyu_depth(Path(tmp) / f"f{i}.png", f)
        steady = frames / (time.perf_counter() - t0)
    return end_to_end, steady, summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--simreal-frames", type=int, default=48)
    ap.add_argument("--rotation", default="none", choices=("none", "original", "so3"))
    ap.add_argument("--hand-model", default="auto", choices=("auto", "mano", "standin"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    a = ap.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    cfg = make_config(dataset="nyu", hand_model=a.hand_model)
    print(f"torch threads {torch.get_num_threads()}, device {a.device}, rotation {a.rotation}")
    rows = []
    rate, draw_share = bench_batch(cfg, a.device, a.batch, a.batches, a.rotation)
    rows.append((f"SyntheticHands.batch({a.batch}) on {a.device}", rate, "samples/s",
                 f"draws (pose sampler, CPU) {100 * draw_share:.0f}% of the time"))
    if a.workers > 0:
        rate = bench_loader(cfg, a.batch, a.batches, a.workers, a.rotation)
        rows.append((f"SyntheticDataset DataLoader, {a.workers} workers, batch {a.batch}", rate, "samples/s", "CPU"))
    if a.simreal_frames > 0:
        e2e, steady, s = bench_simreal(make_config(dataset="simreal", hand_model=a.hand_model), a.simreal_frames)
        rows.append((f"generate_simreal ({a.simreal_frames} frames 640x480), incl. setup", e2e, "frames/s",
                     f"centre error {s['center_error_mm']['train']:.1f} mm"))
        rows.append(("simreal render + sensor + PNG, steady state", steady, "frames/s", ""))
    x = torch.rand(8, 480, 640)
    t0 = time.perf_counter()
    for _ in range(20):
        x + 1
    rows.append(("calibration: 2.4M-element add (idle core ~1-2 ms)", (time.perf_counter() - t0) / 20 * 1e3, "ms", ""))
    w = max(len(r[0]) for r in rows)
    print(f"{'what':<{w}}  {'rate':>9}  unit       note")
    for name, rate, unit, note in rows:
        print(f"{name:<{w}}  {rate:9.1f}  {unit:<9}  {note}")


if __name__ == "__main__":
    main()
