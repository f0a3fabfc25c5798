"""The self-supervision experiment: does fine-tuning on unlabeled real depth beat its controls?

    python bench/experiment_selfsup.py                                 # mismatch set, tiny, CPU budget
    python bench/experiment_selfsup.py --real-set simreal              # the easy set (the model's own hand)
    python bench/experiment_selfsup.py --seeds 0 1 --stage-num 2 --variant relgate --ft-extra reliability_mode=relative

Rows per seed (same seed, same synthetic stream, same step budget; labels are read only by `sup`
and the evaluator):
  pre            synthetic pretraining only
  pre_tn         pretraining with the translator (unless --skip-transfer)
  ctrl_no_real   fine-tuning with the five real-data loss weights at 0 (synthetic stream only)
  ctrl_synth     pretraining continued for the fine-tuning budget with fine-tuning's view rotation
  ft             self-supervised fine-tuning (the method; --ft-extra settings apply to it only)
  ft_no_<family> ft without one loss family (--ablations)
  sup            supervised on the set's labels, the pretraining budget from scratch (upper reference)
The effect of self-supervision is (best control - ft) / (best control - sup) per protocol (standard
NYU 14 joints, DSF 11 joints) and branch (PWE, MPE of the last stage), best control = the lowest of
pre, ctrl_no_real, ctrl_synth.  The test errors of ft's snapshots (every --curve-every steps) give the
learning curve, computed after training and never used to select anything.

Real sets: `mismatch` (datasets/mismatch.py: other hands, anatomical labels, other poses and sensor;
generated once into data/mismatch_exp, read as dataset=nyu) or `simreal` (datasets/simreal.py).
Finished runs are reused and interrupted ones resume when the command is run again.  Extra `key=value`
arguments go to every run (e.g. device=cuda).  Results: <out>/results.json, results.md, curve.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import make_config  # noqa: E402
from train_render import run as run_stage  # noqa: E402

REAL_WEIGHTS = ("w_render", "w_data_mesh", "w_part_mesh", "w_pixel_to_model", "w_model_to_pixel")
ABLATIONS = {
    "fitting": ["w_render=0", "w_data_mesh=0", "w_part_mesh=0"],
    "inter_branch": ["w_pixel_to_model=0", "w_model_to_pixel=0"],
    "distillation": ["w_distill=0"],   # stage 2 -> stage 1: exists only with two stages
    "collision": ["w_collision=0"],
}
PROTOCOLS = ("standard", "dsf")
CONTROLS = ("pre", "ctrl_no_real", "ctrl_synth")


def real_set_args(args) -> list[str]:
    """Settings that point every run at the real-like set (generated on first use)."""
    if args.real_set == "simreal":
        return ["dataset=simreal", f"data_root={args.data_root or 'data/simreal_exp'}",
                f"simreal_train_frames={args.train_frames}", f"simreal_test_frames={args.test_frames}"]
    from datasets.mismatch import ensure_mismatch
    root = ensure_mismatch(args.data_root or "data/mismatch_exp", args.train_frames, args.test_frames)
    return ["dataset=nyu", f"data_root={root}"]


def train(name: str, out: Path, common: list[str], extra: list[str], log: dict) -> Path:
    """Run one training stage; an existing latest.pt is resumed (a finished stage returns at once).
    Returns that checkpoint."""
    ckpt = out / name / "latest.pt"
    resumed = ckpt.is_file()
    t0 = time.time()
    run_stage(make_config(common + extra + [f"out_dir={out / name}", f"resume={resumed}"]))
    log[name] = {"train_seconds": round(time.time() - t0, 1), "resumed": resumed}   # resumed: this call only
    return ckpt


def evaluate(ckpt: Path, out_dir: Path, common: list[str]) -> dict:
    """{protocol: {'s1_pwe': mm, ...}} on the test split (reused when out_dir holds the metrics of this
    very checkpoint file, written after it)."""
    done = out_dir / "metrics.json"
    if done.is_file() and done.stat().st_mtime > ckpt.stat().st_mtime:
        metrics = json.loads(done.read_text())
        if metrics.get("checkpoint") and Path(metrics["checkpoint"]).resolve() == ckpt.resolve():   # via links too
            return {p: {k: round(float(v["mean_mm"]), 3) for k, v in metrics["protocols"][p].items()} for p in PROTOCOLS}
    metrics = run_stage(make_config(common + ["phase=test", f"load_model={ckpt}", f"out_dir={out_dir}",
                                              "save_overlays=0"]))
    return {p: {k: round(float(v["mean_mm"]), 3) for k, v in metrics["protocols"][p].items()} for p in PROTOCOLS}


def effect(errors: dict, ft: str = "ft") -> dict:
    """(best control - ft) / (best control - sup) per protocol and branch key."""
    out = {}
    for p in PROTOCOLS:
        for key in errors[ft][p]:
            ctrl = min(errors[c][p][key] for c in CONTROLS if c in errors)
            sup = errors.get("sup", {}).get(p, {}).get(key)
            if sup is not None and abs(ctrl - sup) > 1e-9:
                out[f"{p}/{key}"] = round((ctrl - errors[ft][p][key]) / (ctrl - sup), 4)
    return out


def one_seed(seed: int, out: Path, args, passthrough: list[str]) -> dict:
    common = real_set_args(args) + [f"net={args.net}", f"seed={seed}", f"stage_num={args.stage_num}",
                                    f"batch_size={args.batch_size}", "progress=false"] + passthrough
    out = out / f"seed{seed}"
    var = out / args.variant
    log: dict = {}
    pre_steps, ft_steps = f"max_steps={args.pretrain_steps}", f"max_steps={args.finetune_steps}"
    runs = {"pre": train("pre", out, common, ["train_stage=pretrain", pre_steps], log)}
    init, tn_args = runs["pre"], []
    if args.transfer_net:
        tn_args = [f"transfer_net={args.transfer_net}"]
    elif not args.skip_transfer:
        tn = train("transfer", out, common, ["train_stage=transfer", f"max_steps={args.transfer_steps}"]
                   + args.transfer_extra, log)
        tn_args = [f"transfer_net={tn.parent / 'best.pt'}"]
    if tn_args:
        init = runs["pre_tn"] = train("pre_tn", out, common, ["train_stage=pretrain", pre_steps] + tn_args, log)
    ft_common = ["train_stage=finetune", ft_steps, f"load_model={init}", f"num_points={args.ft_points}"] + tn_args
    runs["ctrl_no_real"] = train("ctrl_no_real", out, common, ft_common + [f"{w}=0" for w in REAL_WEIGHTS], log)
    runs["ctrl_synth"] = train("ctrl_synth", out, common, ["train_stage=pretrain", ft_steps, f"load_model={init}",
                                                          "synth_rotation=original"] + tn_args, log)
    if not args.skip_sup:
        runs["sup"] = train("sup", out, common, ["train_stage=supervised", pre_steps], log)
    ft_args = ft_common + [f"snapshot_interval={args.curve_every}"] + args.ft_extra
    runs["ft"] = train("ft", var, common, ft_args, log)
    for family in args.ablations:
        if family == "distillation" and args.stage_num == 1:
            continue
        runs[f"ft_no_{family}"] = train(f"ft_no_{family}", var, common, ft_common + args.ft_extra + ABLATIONS[family], log)
    where = {n: (var if n.startswith("ft") else out) / n for n in runs}
    errors = {n: evaluate(ck, where[n] / "test", common) for n, ck in runs.items()}
    curve = {}
    for snap in sorted((where["ft"] / "snapshots").glob("step*.pt")):
        step = int(snap.stem[4:])
        curve[step] = evaluate(snap, where["ft"] / "curve" / snap.stem, common)
    curve[0] = errors["pre_tn" if "pre_tn" in errors else "pre"]       # where fine-tuning starts
    return {"errors_mm": errors, "effect": effect(errors), "curve": {str(k): curve[k] for k in sorted(curve)},
            "timing": log}


def _cell(vals: list[float], pct: bool = False) -> str:
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}")
    return f(statistics.mean(vals)) + (f" ± {f(statistics.pstdev(vals)).rstrip('%')}" if len(vals) > 1 else "")


def markdown(results: dict, last: int) -> str:
    """Errors (mean ± spread over seeds) and the effect of self-supervision, both protocols."""
    seeds = sorted(results)
    keys = [f"s{last}_pwe", f"s{last}_mpe"]
    head = [f"{p[:3].upper()} {k.upper().replace('_', '-')}" for p in PROTOCOLS for k in keys]
    lines = ["| run | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for n in results[seeds[0]]["errors_mm"]:
        cells = [_cell([results[s]["errors_mm"][n][p][k] for s in seeds]) for p in PROTOCOLS for k in keys]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    eff = [_cell([results[s]["effect"][f"{p}/{k}"] for s in seeds], pct=True) if f"{p}/{k}" in results[seeds[0]]["effect"]
           else "-" for p in PROTOCOLS for k in keys]
    lines.append("| **(best control - ft) / (best control - sup)** | " + " | ".join(eff) + " |")
    return "\n".join(lines) + f"\n\nseeds {', '.join(map(str, seeds))}; mm, mean ± population spread over seeds"


def plot_curve(results: dict, path: Path, last: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, r in sorted(results.items()):
        steps = [int(s) for s in r["curve"]]
        for k, style in ((f"s{last}_pwe", "-"), (f"s{last}_mpe", "--")):
            ax.plot(steps, [r["curve"][str(s)]["standard"][k] for s in steps], style, marker="o",
                    label=f"seed {seed} {k.upper().replace('_', '-')}")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("test error, standard protocol (mm)")
    ax.set_title("self-supervised fine-tuning: test error of its snapshots\n(computed after training, never used to select)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options (everything but the key=value settings)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="checkpoints/experiment_selfsup")
    p.add_argument("--real-set", choices=("mismatch", "simreal"), default="mismatch")
    p.add_argument("--data-root", default="", help="folder of the real-like set (default data/<set>_exp)")
    p.add_argument("--train-frames", type=int, default=800)
    p.add_argument("--test-frames", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--net", default="tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--stage-num", type=int, default=1, help="1 = the one-stage variant (spec 10.7), 2 = the method")
    p.add_argument("--pretrain-steps", type=int, default=1000)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--curve-every", type=int, default=50, help="fine-tuning snapshot interval for the curve")
    p.add_argument("--ft-points", type=int, default=512, help="points per crop (spec 2048; 512 for CPU runs)")
    p.add_argument("--variant", default="base", help="folder name of the ft runs (controls are shared)")
    p.add_argument("--ft-extra", nargs="*", default=[], help="key=value settings of the ft runs only")
    p.add_argument("--ablations", nargs="*", default=[], choices=list(ABLATIONS))
    p.add_argument("--skip-transfer", action=argparse.BooleanOptionalAction, default=True,
                   help="leave out the translator rows (default: left out)")
    p.add_argument("--transfer-steps", type=int, default=2000)
    p.add_argument("--transfer-extra", nargs="*", default=[], help="key=value settings of the translator run")
    p.add_argument("--skip-sup", action="store_true", help="leave out sup (and so the effect)")
    p.add_argument("--transfer-net", default="", help="use this translator checkpoint (e.g. from bench/bench_transfer.py) "
                   "instead of training one: rows pre_tn, and ft and the controls start from pre_tn")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    passthrough, rest = [], []
    grab = False      # key=value right after --ft-extra / --transfer-extra belong to them
    for a in argv:
        if a in ("--ft-extra", "--transfer-extra"):
            grab = True
        elif a.startswith("-"):
            grab = False
        elif "=" in a and not grab:
            passthrough.append(a)
            continue
        rest.append(a)
    args = parse_args(rest)
    out = Path(args.out)
    results = {}
    for seed in args.seeds:
        results[seed] = one_seed(seed, out, args, passthrough)
        print(json.dumps(results[seed]["errors_mm"], indent=1), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.variant}_" if args.variant != "base" else ""
    (out / f"{tag}results.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    table = markdown(results, args.stage_num)
    (out / f"{tag}results.md").write_text(table + "\n")
    plot_curve(results, out / f"{tag}curve.png", args.stage_num)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
