"""The self-supervision experiment of issue 7: one command, fixed seeds, one table.

    python bench/experiment_selfsup.py                       # net=tiny, CPU budget (~30 min per seed)
    python bench/experiment_selfsup.py net=resnet18 device=cuda --scale 10 --seeds 0 1

On the real-like NYU-format set (dataset=simreal) it trains and evaluates (standard NYU 14-joint mean
error, mm, test split, final-epoch models):
  1. synthetic pretraining only                         (pre)
  2. + transfer net: translator, then pretraining with it (pre_tn)
  3. + self-supervised fine-tuning from (2)               (ft)       the full method
  4. supervised training on the real-like labels          (sup)      the upper reference
and the share of the gap (1) -> (4) that (3) closes, (e1 - e3) / (e1 - e4), per branch (S2-PWE,
S2-MPE); plus (3) with each loss family removed: model fitting (render, data->mesh, part data->mesh),
inter-branch (pixel->model, model->pixel), distillation (stage 2 -> stage 1).
Extra `key=value` arguments go to every run (e.g. device=cuda).  Cost (measured on 2 shared CPU
cores, net=tiny, batch 16): a fine-tuning step's real-batch losses take ~30 CPU-s with 2048 points
and ~12 CPU-s with 512 (point-to-mesh search dominates), so the CPU default is --ft-points 512 and
150 fine-tuning steps; on a GPU use --ft-points 2048 and a larger --scale.  Results: <out>/results.json and
<out>/results.md.
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

ABLATIONS = {
    "fitting": ["w_render=0", "w_data_mesh=0", "w_part_mesh=0"],
    "inter_branch": ["w_pixel_to_model=0", "w_model_to_pixel=0"],
    "distillation": ["w_distill=0"],   # stage 2 -> stage 1: exists only with two stages
}
BRANCHES = ("s2_pwe", "s2_mpe")


def steps(base: int, scale: float) -> str:
    return f"max_steps={max(1, int(base * scale))}"


def train(name: str, out: Path, common: list[str], extra: list[str], log: dict) -> Path:
    """Run one training stage; an existing latest.pt is resumed (a finished stage returns at once,
    an interrupted one continues from its last checkpoint).  Returns that checkpoint."""
    ckpt = out / name / "latest.pt"
    resumed = ckpt.is_file()
    t0 = time.time()
    run_stage(make_config(common + extra + [f"out_dir={out / name}", f"resume={resumed}"]))
    # a resumed stage's seconds cover only this call (0 steps when it had finished)
    log[name] = {"train_seconds": round(time.time() - t0, 1), "resumed": resumed}
    return ckpt


def evaluate(name: str, ckpt: Path, out: Path, common: list[str]) -> dict[str, float]:
    metrics = run_stage(make_config(common + ["phase=test", f"load_model={ckpt}", f"out_dir={out / name / 'test'}",
                                              "save_overlays=0"]))
    std = metrics["protocols"]["standard"]
    return {k: round(float(std[k]["mean_mm"]), 3) for k in BRANCHES if k in std}


def one_seed(seed: int, out: Path, args, passthrough: list[str]) -> dict:
    common = ["dataset=simreal", f"net={args.net}", f"seed={seed}", f"stage_num={args.stage_num}",
              f"batch_size={args.batch_size}", "progress=false"] + passthrough
    out = out / f"seed{seed}"
    log: dict = {}
    s = args.scale
    pre = train("pre", out, common, ["train_stage=pretrain", steps(args.pretrain_steps, s)], log)
    if args.skip_transfer:  # row 2 not run: fine-tuning starts from (1), without translation
        pre_tn, tn_args = pre, []
    else:
        tn = train("transfer", out, common, ["train_stage=transfer", steps(args.transfer_steps, s),
                                             f"gan_ngf={args.gan_ngf}", f"gan_blocks={args.gan_blocks}",
                                             f"gan_ndf={args.gan_ndf}", f"gan_batch_size={args.gan_batch_size}",
                                             f"gan_lr={args.gan_lr}", f"gan_residual={args.gan_residual}",
                                             f"w_gan_idt={args.gan_idt}"], log)
        tn_args = [f"transfer_net={tn.parent / 'best.pt'}"]
        pre_tn = train("pre_tn", out, common, ["train_stage=pretrain", steps(args.pretrain_steps, s)] + tn_args, log)
    ft_args = ["train_stage=finetune", steps(args.finetune_steps, s), f"load_model={pre_tn}",
               f"num_points={args.ft_points}"] + tn_args
    runs = {"pre": pre, **({} if args.skip_transfer else {"pre_tn": pre_tn}), "ft": train("ft", out, common, ft_args, log)}
    if not args.skip_sup:
        runs["sup"] = train("sup", out, common, ["train_stage=supervised", steps(args.pretrain_steps, s)], log)
    for family in args.ablations:
        if family == "distillation" and args.stage_num == 1:
            print("experiment: no distillation ablation with stage_num=1 (one stage has no stage-2 teacher)")
            continue
        runs[f"ft_no_{family}"] = train(f"ft_no_{family}", out, common, ft_args + ABLATIONS[family], log)
    errors = {name: evaluate(name, ckpt, out, common) for name, ckpt in runs.items()}
    gap = {}
    for b in BRANCHES:
        e1, e3, e4 = errors["pre"].get(b), errors["ft"].get(b), errors.get("sup", {}).get(b)
        if None not in (e1, e3, e4) and abs(e1 - e4) > 1e-9:
            gap[b] = round((e1 - e3) / (e1 - e4), 4)
    return {"errors_mm": errors, "gap_closed": gap, "timing": log}


def markdown(results: dict) -> str:
    seeds = sorted(results)
    names = list(results[seeds[0]]["errors_mm"])
    lines = ["| run | " + " | ".join(f"{b.upper().replace('_', '-')} (mm)" for b in BRANCHES) + " |",
             "|---|" + "---|" * len(BRANCHES)]
    for n in names:
        cells = []
        for b in BRANCHES:
            vals = [results[s]["errors_mm"][n][b] for s in seeds if b in results[s]["errors_mm"][n]]
            cells.append(f"{statistics.mean(vals):.2f}" + (f" ± {statistics.pstdev(vals):.2f}" if len(vals) > 1 else ""))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    for b in BRANCHES:
        g = [results[s]["gap_closed"][b] for s in seeds if b in results[s]["gap_closed"]]
        if g:
            lines.append(f"\nGap (pre -> sup) closed by ft, {b.upper()}: " + ", ".join(f"{100 * v:.1f}%" for v in g)
                         + f" (seeds {', '.join(map(str, seeds))})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="checkpoints/experiment_selfsup")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--net", default="tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every step budget")
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--transfer-steps", type=int, default=2000)
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--ft-points", type=int, default=512,
                   help="points per crop for the point-to-mesh terms (spec: 2048; 512 keeps CPU runs affordable)")
    p.add_argument("--gan-ngf", type=int, default=8, help="translator generator width (spec: 64)")
    p.add_argument("--gan-blocks", type=int, default=2, help="translator residual blocks (spec: 9)")
    p.add_argument("--gan-ndf", type=int, default=16, help="translator discriminator width (spec: 64)")
    p.add_argument("--gan-batch-size", type=int, default=2)
    p.add_argument("--gan-lr", type=float, default=5e-4)
    p.add_argument("--gan-residual", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                   help="residual generator (design option that trains on CPU; the original is false)")
    p.add_argument("--gan-idt", type=float, default=0.0, help="identity weight (spec 5; 0 for the residual generator)")
    p.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=list(ABLATIONS),
                   help="loss families removed one at a time from (3); none = no ablation rows")
    p.add_argument("--skip-transfer", action="store_true",
                   help="leave out row 2 (translator + pretraining with it); fine-tune from row 1")
    p.add_argument("--skip-sup", action="store_true", help="leave out row 4 (and so the gap share)")
    p.add_argument("--stage-num", type=int, default=2, help="1 = the one-stage variant (spec 10.7)")
    passthrough = [a for a in argv if "=" in a and not a.startswith("-")]   # key=value, in any position
    args = p.parse_args([a for a in argv if a not in passthrough])
    global BRANCHES  # the headline branches are those of the last stage
    BRANCHES = (f"s{args.stage_num}_pwe", f"s{args.stage_num}_mpe")
    out = Path(args.out)
    results = {}
    for seed in args.seeds:
        results[seed] = one_seed(seed, out, args, passthrough)
        print(json.dumps(results[seed], indent=1), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    table = markdown(results)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
