"""Inference speed on CPU: full depth frame in, 21 joints out (localization + crop + network).

    python bench/bench_infer.py [--threads 2] [--frames 20] [--batch 32] [--frame path.png]

For net = tiny / resnet18 and stage_num = 1 / 2 (random weights: speed does not depend on them):
* `locate ms`: hand localization per frame, in steady-state tracking (HandTracker.locate on a
  sequence) and, separately, full-frame detection (`detect ms`, paid on the first frame and after a
  lost track);
* `frame ms` / `frame fps`: one frame at batch 1, tracked localization + crop + network + decoding
  (stages.export.locate_and_predict without the detection re-centring), median over the frames;
* `net fps @B`: network-only frames/s on normalized crops at batch B (predict_crops);
* `cpu ms` / `cpu fps` / `cpu`: the same from the process CPU time instead of the wall clock.  On a
  shared, overloaded machine the wall clock mostly measures waiting for a core; with 1 thread the
  CPU time is what the frame costs on a core of its own (with 2 threads it is the sum of both).
The frame is the first Kinect v2 frame of ../shared/data/kinect2 (512 x 424, mirrored like the
exporter does) or, where absent, a rendered 640 x 480 frame of the stand-in hand with a forearm.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from config import make_config  # noqa: E402
from datasets.common import mirror_frame  # noqa: E402
from datasets.depth_io import read_png16  # noqa: E402
from datasets.localize import HandTracker, LocalizerSettings, detect_hand  # noqa: E402
from stages.predict import Predictor  # noqa: E402

KINECT = ROOT.parent / "shared" / "data" / "kinect2" / "00000001.png"
KINECT_K = (363.9, 363.9, 255.4, 206.3)


def load_frame(path: str) -> tuple[np.ndarray, tuple[float, float, float, float], str]:
    """(depth mm, intrinsics, description)."""
    p = Path(path) if path else KINECT
    if p.is_file():
        return mirror_frame(read_png16(p), KINECT_K[2]), KINECT_K, f"{p.name} {read_png16(p).shape[::-1]}"
    from models.mano import HandModel
    from models.standin_hand import make_standin_arrays
    from stream_scenes import hand_scene, intrinsics, sample_poses
    arrays = make_standin_arrays(seed=0)
    K = (588.03, 587.07, 320.0, 240.0)
    scene = hand_scene(HandModel(arrays), sample_poses(arrays, 1, seed=0)[0], np.array([30.0, -20.0, 600.0]),
                       intrinsics(*K), 480, 640)
    return scene.depth, K, "rendered stand-in hand 640x480"


def build_predictor(net: str, stage_num: int) -> Predictor:
    from models.dual_branch import DualBranchNet, NetConfig
    from models.mano import build_hand_model
    from render.hand_renderer import HandRenderer
    cfg = make_config(net=net, stage_num=stage_num, hand_model="standin", device="cpu", phase="export")
    torch.manual_seed(0)
    hand = build_hand_model(cfg)
    model = DualBranchNet(NetConfig.from_config(cfg), HandRenderer(hand, size=128))
    return Predictor(cfg, model, hand, torch.device("cpu"))


def time_calls(fn, n: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of n calls."""
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def bench_config(net: str, stage_num: int, frame: np.ndarray, K, frames: int, batch: int) -> dict:
    pred = build_predictor(net, stage_num)
    s = LocalizerSettings.from_config(pred.cfg)
    Km = np.array([[K[0], 0, K[2]], [0, K[1], K[3]], [0, 0, 1.0]])
    detect, _ = time_calls(lambda: detect_hand(frame, K, s), max(3, frames // 4))
    tracker = HandTracker(K, s, track=True)
    c0, _ = tracker.locate(frame)
    tracker.update(c0)
    locate, _ = time_calls(lambda: tracker.locate(frame), frames)

    def one_frame():
        center, _ = tracker.locate(frame)
        p = pred.predict_frame(frame, center, Km)
        tracker.update(p["xyz"].mean(axis=0) if np.all(np.isfinite(p["xyz"])) else center)

    one_frame()  # warm-up
    per_frame, per_frame_cpu = time_calls(one_frame, frames)
    crops = torch.rand(batch, 1, 128, 128) * 2 - 1
    center = torch.tensor([[0.0, 0.0, 600.0]]).repeat(batch, 1)
    cube = torch.full((batch, 3), 250.0)
    from render import camera
    Kc = camera.crop_transform(center, cube, torch.from_numpy(Km).float()[None]) @ torch.from_numpy(Km).float()[None]
    pred.predict_crops(crops, center, cube, Kc)  # warm-up
    reps = 2
    net_wall, net_cpu = time_calls(lambda: pred.predict_crops(crops, center, cube, Kc), reps)
    med, med_cpu = statistics.median(per_frame), statistics.median(per_frame_cpu)
    return {"net": net, "stages": stage_num, "detect_ms": 1e3 * statistics.median(detect),
            "locate_ms": 1e3 * statistics.median(locate), "frame_ms": 1e3 * med, "frame_fps": 1.0 / med,
            "frame_cpu_ms": 1e3 * med_cpu, "net_fps": batch * reps / sum(net_wall),
            "net_cpu_fps": batch * reps / sum(net_cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=20, help="timed frames per configuration")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frame", default="", help="a 16-bit PNG depth frame (default: Kinect v2 frame 1)")
    ap.add_argument("--nets", default="tiny,resnet18")
    ap.add_argument("--stages", default="1,2")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    frame, K, what = load_frame(a.frame)
    load = os.getloadavg()[0]
    print(f"CPU, torch {torch.__version__}, {a.threads} threads, load average {load:.1f} on {os.cpu_count()} cores; "
          f"frame: {what}; {a.frames} frames per row, batch 1; network-only at batch {a.batch}")
    print(f"{'net':9s} {'stages':>6s} {'detect ms':>9s} {'locate ms':>9s} {'frame ms':>9s} {'frame fps':>9s} "
          f"{'cpu ms':>7s} {'cpu fps':>7s} {'net fps @' + str(a.batch):>11s} {'cpu':>6s}")
    for net in a.nets.split(","):
        for st in (int(x) for x in a.stages.split(",")):
            r = bench_config(net, st, frame, K, a.frames, a.batch)
            cpu_fps = 1e3 / r["frame_cpu_ms"]
            flag = "  >= 30 fps" if r["frame_fps"] >= 30 else ("  >= 30 fps of CPU time" if cpu_fps >= 30 else "")
            print(f"{r['net']:9s} {r['stages']:6d} {r['detect_ms']:9.1f} {r['locate_ms']:9.1f} {r['frame_ms']:9.1f} "
                  f"{r['frame_fps']:9.1f} {r['frame_cpu_ms']:7.1f} {cpu_fps:7.1f} {r['net_fps']:11.1f} "
                  f"{r['net_cpu_fps']:6.1f}{flag}", flush=True)


if __name__ == "__main__":
    main()
