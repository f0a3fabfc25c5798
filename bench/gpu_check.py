"""The prepared GPU check: one command, a few minutes, a table for the README.

    python bench/gpu_check.py                      # on a GPU machine (device=cuda)
    python bench/gpu_check.py --device cpu --quick # the same path end to end on the CPU (known to work)

1. parity: the renderer and the exact point-to-mesh distance on the device vs the CPU (same inputs:
   depth difference at pixels both cover, coverage mismatches, distance difference), with timings
   of forward + backward on each;
2. one fine-tuning step of the default configuration (resnet18, 2 stages, 32 + 32, 2048 points) in
   fp32, bf16 autocast and torch.compile, each broken down (bench/bench_finetune.py); --quick: tiny;
3. a 100-step fine-tuning run through the entry point with its defaults on (image logs every 20
   steps, validation, checkpoints) on a small generated set: it must not crash; peak GPU memory.
Everything is printed; with --out DIR a results.json is written too.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_render import make_ops, time_op, workload  # noqa: E402
from render.geometry import point_mesh_sqdist  # noqa: E402
from render.rasterizer import rasterize_depth  # noqa: E402


def parity(device: str, batch: int, repeats: int) -> dict:
    """Device vs CPU: renderer depths / coverage and point-to-mesh distances; fwd+bwd timings."""
    cpu, dev = workload(batch, device="cpu"), workload(batch, device=device)
    with torch.no_grad():
        d_cpu, f_cpu = rasterize_depth(cpu["verts_mm"], cpu["faces"], cpu["Kc"], 128, 128)
        d_dev, f_dev = rasterize_depth(dev["verts_mm"], dev["faces"], dev["Kc"], 128, 128)
        both = (f_cpu >= 0) & (f_dev.cpu() >= 0)
        q_cpu = point_mesh_sqdist(cpu["pts"], cpu["verts_n"], cpu["faces"])
        q_dev = point_mesh_sqdist(dev["pts"], dev["verts_n"], dev["faces"]).cpu()
    out = {"covered_px": int((f_cpu >= 0).sum()), "coverage_mismatch_px": int(((f_cpu >= 0) != (f_dev.cpu() >= 0)).sum()),
           "face_mismatch_px": int((both & (f_cpu != f_dev.cpu())).sum()),
           "depth_max_diff_mm": float((d_cpu - d_dev.cpu())[both].abs().max()) if both.any() else 0.0,
           "point_mesh_max_rel_diff": float(((q_cpu - q_dev).abs() / q_cpu.clamp_min(1e-12)).max())}
    for name, w, where in (("cpu", cpu, "cpu"), (device, dev, device)):
        ops = make_ops(w)
        for op in ("render fwd+bwd", "point-mesh fwd+bwd"):
            out[f"{op} {name} s"] = time_op(ops[op], repeats, where)[1]
    return out


def step_breakdowns(device: str, spec: str, iters: int) -> dict:
    """bench_finetune's table in fp32, bf16 and compiled (the last two on CUDA only)."""
    from bench import bench_finetune as bf
    modes = ["fp32"] + (["bf16", "compile"] if device.startswith("cuda") else [])
    out = {}
    for mode in modes:
        if mode == "bf16":
            ctx = torch.autocast("cuda", dtype=torch.bfloat16)
        else:
            ctx = torch.autocast(device.split(":")[0], enabled=False)
        old_build = bf.build
        if mode == "compile":
            def build(*a, _old=old_build, **k):
                parts = _old(*a, **k)
                return (parts[0], parts[1], parts[2], torch.compile(parts[3]), parts[4], parts[5])
            bf.build = build
        try:
            with ctx:
                rows = bf.bench(spec, iters, torch.device(device))
        except Exception as e:  # noqa: BLE001 - a failing mode is reported, the check goes on
            rows = [("failed: " + f"{type(e).__name__}: {e}"[:120], float("nan"))]
        finally:
            bf.build = old_build
        print(f"\n[{mode}]")
        if rows[0][1] == rows[0][1]:     # not NaN: the mode ran
            bf.print_table(spec, rows)
        else:
            print(rows[0][0])
        out[mode] = rows
    return out


def finetune_run(device: str, net: str, steps: int) -> dict:
    """A pretrain (20 steps) + fine-tuning (`steps`) pair through train_render.run with defaults on."""
    from config import make_config
    from train_render import run
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    common = dict(dataset="simreal", data_root=str(root / "data"), simreal_train_frames=96, simreal_test_frames=16,
                  net=net, device=device, num_workers=2, progress=False, log_interval=10, image_log_interval=20,
                  batch_size=16, val_size=16)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run(make_config([], **common, train_stage="pretrain", max_steps=20, out_dir=str(root / "pre")))
    t0 = time.time()
    res = run(make_config([], **common, train_stage="finetune", max_steps=steps, out_dir=str(root / "ft"),
                          load_model=str(root / "pre" / "latest.pt")))
    out = {"finetune_steps": res["step"], "finetune_seconds": round(time.time() - t0, 1),
           "last_loss": res["last_losses"]["loss"], "checkpoints": res["checkpoints"]}
    if device.startswith("cuda"):
        out["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny network and short runs (the CPU dry run)")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device (run with --device cpu --quick for the dry run)", file=sys.stderr)
        return 2
    t0 = time.time()
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    print(f"gpu_check on {name}, torch {torch.__version__}")
    results = {"device": name, "torch": torch.__version__}
    results["parity"] = parity(a.device, 8 if a.quick else 32, 3 if a.quick else 10)
    for k, v in results["parity"].items():
        print(f"  {k:<36}{v}")
    spec = "tiny:2:8:256" if a.quick else "resnet18:2:32:2048"
    breakdowns = step_breakdowns(a.device, spec, 2 if a.quick else 3)
    results["step"] = {m: [tuple(r) for r in rows] for m, rows in breakdowns.items()}
    results["run"] = finetune_run(a.device, "tiny" if a.quick else "resnet18", 10 if a.quick else 100)
    print("\nfine-tuning run:", json.dumps(results["run"]))
    results["seconds"] = round(time.time() - t0, 1)
    print(f"gpu_check done in {results['seconds']} s")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
