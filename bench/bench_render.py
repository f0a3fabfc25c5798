"""Renderer and point-to-mesh benchmark at the original's workload (prints a table).

    python bench/bench_render.py [--threads 2] [--repeats 10] [--batch 32]

Workload: batch 32, 128 x 128 crops, the capped hand (MANO when the file exists, else the stand-in)
in random poses, centred in an NYU crop (f = 588 px, cube 250 mm) at 500-1200 mm, i.e. as a real
NYU crop.  Rows: render forward, render forward+backward, point-to-mesh distance of 2048 points per
sample (forward, forward+backward) and the part-aware variant.  Wall time: min and median over the
repeats (a shared machine makes single timings noisy); CPU: process CPU time (min), all threads.
Peak memory: extra memory of one call, measured in a fresh subprocess (sampled resident set on
CPU, max_memory_allocated on CUDA).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import make_config  # noqa: E402
from hand.params import NUM_POSE_COEFFS, POSE, ROTATION, TRANSLATION, identity_params  # noqa: E402
from render import camera  # noqa: E402
from render.geometry import nearest_face, part_point_mesh_sqdist, point_mesh_sqdist  # noqa: E402
from render.rasterizer import pytorch3d_available, rasterize_depth  # noqa: E402

P3D_REFERENCE = {"fwd": 2.35, "fwd+bwd": 3.9}  # issue 3: pytorch3d CPU, batch 32, 128^2, 2 threads


def hand_model():
    try:
        from models.mano import build_hand_model
        return build_hand_model(make_config([]))
    except Exception as e:  # hand model area unavailable: fall back to a 1554-face sphere
        print(f"hand model unavailable ({e}); using a 1554-face sphere")
        return None


def workload(B: int, seed: int = 0, device: str = "cpu"):
    """verts_mm (B, V, 3), faces, K_crop (B, 3, 3), center, cube, points (B, 2048, 3) nu, verts nu."""
    g = torch.Generator().manual_seed(seed)
    hm = hand_model()
    K = camera.make_intrinsics(588.03, 587.07, 320.0, 240.0).expand(B, 3, 3)
    z0 = 500 + 700 * torch.rand(B, generator=g)
    center = torch.stack([torch.zeros(B), torch.zeros(B), z0], -1)
    cube = torch.full((B, 3), 250.0)
    if hm is not None:
        params = identity_params(B)
        params[:, ROTATION] = (torch.rand(B, 3, generator=g) - 0.5) * 2.0
        params[:, POSE] = torch.randn(B, NUM_POSE_COEFFS, generator=g) * 0.7
        with torch.no_grad():
            _, joints = hm.network_space(params)
            params[:, TRANSLATION] = -joints.mean(1)
            verts_n, _ = hm.network_space(params)
        faces = hm.faces
    else:
        n_lat, n_lon = 22, 37
        th = torch.linspace(0, math.pi, n_lat + 1)[1:-1]
        ph = torch.arange(n_lon) * 2 * math.pi / n_lon
        T, Ph = torch.meshgrid(th, ph, indexing="ij")
        v = torch.stack([T.sin() * Ph.cos(), T.sin() * Ph.sin(), T.cos()], -1).reshape(-1, 3)
        v = torch.cat([v, torch.tensor([[0.0, 0, 1], [0, 0, -1]])]) * 0.5
        f = []
        for i in range(n_lat - 2):
            for j in range(n_lon):
                a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
                f += [[a, b, b + n_lon], [a, b + n_lon, a + n_lon]]
        N = v.shape[0] - 2
        for j in range(n_lon):
            f += [[N, (j + 1) % n_lon, j], [N + 1, (n_lat - 3) * n_lon + j, (n_lat - 3) * n_lon + (j + 1) % n_lon]]
        faces, verts_n = torch.tensor(f), v[None].expand(B, -1, -1).clone()
    verts_mm = camera.norm_to_xyz(verts_n, center, cube)
    Kc = camera.crop_intrinsics(K, camera.crop_transform(center, cube, K))
    with torch.no_grad():  # points: back-projected foreground of the rendering + 2 mm noise
        depth, _ = rasterize_depth(verts_mm, faces, Kc, 128, 128)
        dn = camera.normalize_depth(depth[:, None], center[:, 2], cube[:, 2])
        pts_all, fg = camera.crop_points_norm(dn, center, cube, Kc, make_config([]).fg_threshold_nu)
        pts = torch.stack([pa[m][torch.randint(int(m.sum()), (2048,), generator=g)] for pa, m in zip(pts_all, fg)])
        pts = pts + 0.016 * torch.randn(pts.shape, generator=g)
    labels = torch.zeros(B, 2048, dtype=torch.long)
    if hm is not None:  # realistic labels: the part of each point's nearest face (0 = palm only)
        face_part = torch.zeros(faces.shape[0], dtype=torch.long)
        for k, pf in enumerate(hm.part_faces):
            face_part[pf] = k + 1
        labels = face_part[nearest_face(pts, verts_n, faces, 2048)]
    dev = torch.device(device)
    return dict(verts_mm=verts_mm.to(dev), faces=faces.to(dev), Kc=Kc.to(dev), center=center.to(dev),
                cube=cube.to(dev), pts=pts.to(dev), verts_n=verts_n.to(dev), labels=labels.to(dev),
                part_faces=[p.to(dev) for p in hm.part_faces] if hm is not None else None,
                coverage=float((depth > 0).float().mean()))


def make_ops(w, backend="torch"):
    wt = torch.rand(w["verts_mm"].shape[0], 128, 128, device=w["verts_mm"].device)

    def render(bwd):
        v = w["verts_mm"].clone().requires_grad_(bwd)
        d, _ = rasterize_depth(v, w["faces"], w["Kc"], 128, 128, backend=backend)
        if bwd:
            (d * wt).sum().backward()

    def dist(bwd):
        v = w["verts_n"].clone().requires_grad_(bwd)
        p = w["pts"].clone().requires_grad_(bwd)
        d = point_mesh_sqdist(p, v, w["faces"])
        if bwd:
            d.mean().backward()

    def part(bwd):
        v = w["verts_n"].clone().requires_grad_(bwd)
        m, _ = part_point_mesh_sqdist(w["pts"], w["labels"], v, w["part_faces"], faces=w["faces"])
        if bwd:
            m.mean().backward()

    ops = {"render fwd": lambda: render(False), "render fwd+bwd": lambda: render(True),
           "point-mesh fwd": lambda: dist(False), "point-mesh fwd+bwd": lambda: dist(True)}
    if w["part_faces"] is not None:
        ops["part point-mesh fwd+bwd"] = lambda: part(True)
    return ops


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_op(fn, repeats, device):
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), statistics.median(walls), min(cpus)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_memory_child(name, threads, batch, device):
    """Run in a subprocess: print the peak extra memory (MiB) of one call of op `name`.

    CPU: resident set sampled every 0.2 ms by a thread during the call, minus the resident set just
    before it (first call in a fresh process, so freed memory kept by malloc does not hide it).
    CUDA: torch.cuda.max_memory_allocated minus the allocation before the call.
    """
    torch.set_num_threads(threads)
    w = workload(batch, device=device)
    ops = make_ops(w)
    if device.startswith("cuda"):
        ops[name]()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ops[name]()
        torch.cuda.synchronize()
        print((torch.cuda.max_memory_allocated() - base) / 2 ** 20)
        return
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.0002)

    base = _rss_mib()
    th = threading.Thread(target=sample)
    th.start()
    ops[name]()
    done.set()
    th.join()
    print(max(peak[0], _rss_mib()) - base)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_child:
        return peak_memory_child(a.memory_child, a.threads, a.batch, a.device)
    torch.set_num_threads(a.threads)
    w = workload(a.batch, device=a.device)
    print(f"device {a.device}, torch {torch.__version__}, threads {a.threads}, batch {a.batch}, 128x128, "
          f"{w['faces'].shape[0]} faces, coverage {100 * w['coverage']:.1f}% of the crop pixels, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows = {}
    print(f"{'operation':<26}{'wall min s':>11}{'wall med s':>11}{'cpu s':>9}{'peak MiB':>10}")
    for name, fn in make_ops(w).items():
        tmin, tmed, cpu = time_op(fn, a.repeats, a.device)
        mem = subprocess.run([sys.executable, __file__, "--memory-child", name, "--threads", str(a.threads),
                              "--batch", str(a.batch), "--device", a.device],
                             capture_output=True, text=True).stdout.strip().splitlines()
        rows[name] = tmin
        print(f"{name:<26}{tmin:>11.3f}{tmed:>11.3f}{cpu:>9.3f}{float(mem[-1]) if mem else float('nan'):>10.1f}")
    if pytorch3d_available():
        p3 = make_ops(w, backend="pytorch3d")
        ref = {k: time_op(p3[f"render {k}"], a.repeats, a.device)[0] for k in ("fwd", "fwd+bwd")}
        label = "pytorch3d (measured here)"
    else:
        ref = P3D_REFERENCE
        label = "pytorch3d reference figure from issue 3 (NOT measured here: pytorch3d not installed)"
    print(f"\n{label}: fwd {ref['fwd']:.2f} s, fwd+bwd {ref['fwd+bwd']:.2f} s")
    for k in ("fwd", "fwd+bwd"):
        print(f"speed-up render {k}: {ref[k] / rows[f'render {k}']:.1f}x (wall min)")
    print(f"target: render fwd+bwd <= 0.39 s -> {'met' if rows['render fwd+bwd'] <= 0.39 else 'NOT met'}")


if __name__ == "__main__":
    main()
