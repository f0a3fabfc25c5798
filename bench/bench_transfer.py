"""Proof experiment of the synthetic -> real translator (issues 6 and 14), one command.

    python bench/bench_transfer.py --minutes 25 --downstream          # sensor translator, mismatch set
    python bench/bench_transfer.py --real-set simreal                   # the easy set
    python bench/bench_transfer.py --data-root /path/to/nyu_like        # any NYU-format folder as real domain
    python bench/bench_transfer.py --arch original --ngf 8 --blocks 2   # the spec's Consis-CycleGAN
    python bench/bench_transfer.py --minutes 20 --ngf 64 --blocks 9 --ndf 64 --batch 4 device=cuda

1. ensure the real-like set exists (default: the model-mismatch set, datasets/mismatch.py; or simreal;
   or any NYU-format folder given by --data-root); calibrate the seconds per translator step; train
   the translator (`train_render.py phase=train train_stage=transfer`) for the time budget;
2. on held-out synthetic crops (their own seed, never seen in training) compare CLEAN and TRANSLATED
   (G_A of best.pt, the checkpoint pretraining would load) crops with REAL crops (test split;
   classifier training uses the train split without augmentation):
   * 1-D Wasserstein distances to real of per-pixel depth-gradient and Laplacian (sensor noise)
     statistics on the foreground, and of per-crop foreground fraction and ragged-edge fraction;
   * two-sample classifier tests (C2ST): a small CNN trained real vs X, tested on held-out real vs X
     (balanced accuracy; 0.5 = indistinguishable), X = clean or translated; and the real-vs-clean
     classifier applied to translated crops (fraction called real);
   * foreground fidelity (spec 9.2 acceptance): mean |G_A(x) - x| over the hand mask (nu and mm) and
     % of hand pixels turned into background (acceptance <= 0.03 nu, <= 5 %);
   * <out>/sheet.png: clean | translated | real crops side by side;
3. --downstream: the self-supervision experiment (bench/experiment_selfsup.py, same seed and budget)
   without the translator (rows pre, ft) and with it (pre_tn: pretraining on translated crops, then
   the same fine-tuning), in <out>/downstream/{without,with}; finished runs are reused.
Extra `key=value` arguments go to the training config.  Results: <out>/bench_transfer.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.experiment_selfsup import real_set_settings  # noqa: E402
from config import Config, make_config  # noqa: E402
from losses.translation import foreground_fidelity  # noqa: E402
from models.translator import load_translator, translate  # noqa: E402

FG = 0.99


# ---- realism statistics ----------------------------------------------------------------------------
def pixel_stats(x: Tensor, fg: float = FG) -> dict[str, np.ndarray]:
    """Per-pixel / per-crop statistics of crops x (N, 1, S, S): foreground depth gradient |dx|+|dy|
    (pixel pairs both foreground), |Laplacian| on interior foreground pixels, per-crop foreground
    fraction and per-crop fraction of foreground pixels touching background (ragged edges)."""
    m = x < fg
    dx, dy = (x[..., :, 1:] - x[..., :, :-1]).abs(), (x[..., 1:, :] - x[..., :-1, :]).abs()
    mx, my = m[..., :, 1:] & m[..., :, :-1], m[..., 1:, :] & m[..., :-1, :]
    grad = torch.cat([dx[mx], dy[my]])
    inner = F.max_pool2d((~m).float(), 3, 1, 1) < 0.5            # foreground with all 8 neighbours fg
    lap = (4 * x - F.pad(x, (1, 1, 1, 1), mode="replicate")[..., 1:-1, :-2]
           - F.pad(x, (1, 1, 1, 1), mode="replicate")[..., 1:-1, 2:]
           - F.pad(x, (1, 1, 1, 1), mode="replicate")[..., :-2, 1:-1]
           - F.pad(x, (1, 1, 1, 1), mode="replicate")[..., 2:, 1:-1]).abs()[inner]
    n_fg = m.flatten(1).sum(1).clamp(min=1)
    edge = (m & ~inner).flatten(1).sum(1) / n_fg
    return {"grad": grad.numpy(), "lap": lap.numpy(), "fg_frac": m.flatten(1).float().mean(1).numpy(),
            "edge_frac": edge.numpy()}


def wasserstein(a: np.ndarray, b: np.ndarray, n: int = 200_000, seed: int = 0) -> float:
    """1-D Wasserstein-1 distance between two samples (subsampled to n values each)."""
    from scipy.stats import wasserstein_distance
    rng = np.random.default_rng(seed)
    a = a if len(a) <= n else rng.choice(a, n, replace=False)
    b = b if len(b) <= n else rng.choice(b, n, replace=False)
    return float(wasserstein_distance(a, b))


# ---- two-sample classifier test ---------------------------------------------------------------------
def small_cnn() -> nn.Module:
    """Domain classifier on 64x64 (2x average-pooled) crops -> one logit (real = 1)."""
    return nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))


def train_classifier(real: Tensor, fake: Tensor, steps: int, seed: int) -> nn.Module:
    """Balanced minibatches of real (label 1) vs fake (label 0) crops; Adam 1e-3, batch 64."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = small_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        ir, iff = torch.randint(len(real), (32,), generator=g), torch.randint(len(fake), (32,), generator=g)
        x = torch.cat([real[ir], fake[iff]])
        y = torch.cat([torch.ones(32), torch.zeros(32)])
        loss = F.binary_cross_entropy_with_logits(net(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def p_real(net: nn.Module, x: Tensor) -> Tensor:
    """Fraction of crops x classified real (logit > 0) -> scalar tensor."""
    return torch.cat([net(x[i:i + 256])[:, 0] > 0 for i in range(0, len(x), 256)]).float().mean()


def c2st(real_tr: Tensor, fake_tr: Tensor, real_te: Tensor, fake_te: Tensor, steps: int, seed: int
         ) -> tuple[float, nn.Module]:
    """Balanced held-out accuracy of a real-vs-fake classifier (0.5 = the domains are indistinguishable)."""
    net = train_classifier(real_tr, fake_tr, steps, seed)
    return float(0.5 * (p_real(net, real_te) + 1.0 - p_real(net, fake_te))), net


# ---- data ---------------------------------------------------------------------------------------------
def real_crops(cfg: Config, split: str, n: int) -> Tensor:
    """Up to n un-augmented real crops (n, 1, S, S) of the split (labels never loaded)."""
    import dataclasses

    from datasets import build_dataset
    ds = build_dataset(dataclasses.replace(cfg, augment=False), split, labels=False)
    idx = torch.linspace(0, len(ds) - 1, min(n, len(ds))).round().long().unique()
    return torch.stack([ds[int(i)]["depth"] for i in idx])


def synthetic_crops(cfg: Config, n: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """n held-out clean synthetic crops (n, 1, S, S) and their cube_z (n,) mm, rendered as in training."""
    from datasets.synthetic import SyntheticHands
    from models.mano import build_hand_model
    from render.camera import CROP_SIZE
    from render.hand_renderer import HandRenderer
    from stages.transfer import held_out_synthetic
    hand = build_hand_model(cfg).to(device)
    synth = SyntheticHands(cfg, hand, HandRenderer(hand, size=CROP_SIZE), cfg.gan_synth_rotation)
    clean, cube_z = held_out_synthetic(synth, n, seed, device)
    return clean.cpu(), cube_z.cpu()


def seconds_per_step(cfg: Config, device: torch.device, reps: int = 3) -> float:
    """Measured wall time of one translator iteration (synthetic render + real batch + GAN step)."""
    from datasets.synthetic import SyntheticHands
    from models.mano import build_hand_model
    from render.camera import CROP_SIZE
    from render.hand_renderer import HandRenderer
    from stages.transfer import build_translator, cyclegan_losses
    from stages.transfer_sensor import sensor_losses
    hand = build_hand_model(cfg).to(device)
    synth = SyntheticHands(cfg, hand, HandRenderer(hand, size=CROP_SIZE), cfg.gan_synth_rotation)
    model, opt, _ = build_translator(cfg, device)
    if cfg.gan_arch == "sensor":
        objective = lambda x_s, x_r: sensor_losses(model(x_s, x_r), cfg)  # noqa: E731
    else:
        objective = lambda x_s, x_r: cyclegan_losses(model(x_s, x_r), x_s, x_r, cfg)  # noqa: E731
    x_r = real_crops(cfg, "train", cfg.gan_batch_size).to(device)
    g = torch.Generator(device).manual_seed(1)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        x_s = synth.batch(cfg.gan_batch_size, g, device)["clean"]
        loss = objective(x_s, x_r)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


# ---- stuck-at-identity diagnosis ------------------------------------------------------------------------
def escape_test(ckpt: Path, cfg: Config, xs: Tensor, xr: Tensor, cube: Tensor, steps: int = 10
                ) -> dict[str, dict[str, float]]:
    """Why a generator stays at the identity: from a transfer checkpoint, take `steps` Adam steps on
    G_A only (discriminators frozen) with (a) the adversarial term alone and (b) the full generator
    objective, and report how far G_A(xs) moves from xs on the hand mask and on the background (nu)
    and the adversarial term before/after.  (a) moving and (b) not means the consistency/cycle terms,
    not a weak discriminator, hold the generator at the identity."""
    from stages.checkpoints import load_checkpoint
    from stages.transfer import ConsisCycleGAN, cyclegan_losses, fg_tolerance_nu
    hand, bg = xs < FG, xs >= FG
    report = {}
    for name in ("adversarial_only", "full_objective"):
        model = ConsisCycleGAN(cfg.gan_ngf, cfg.gan_blocks, cfg.gan_ndf, cfg.gan_residual)
        model.load_state_dict(load_checkpoint(ckpt)["model"])
        opt = torch.optim.Adam(model.G_A.parameters(), lr=cfg.gan_lr, betas=(cfg.gan_beta1, cfg.gan_beta2))
        advs = []
        for _ in range(steps + 1):
            t = cyclegan_losses(model(xs, xr, identity=cfg.w_gan_idt > 0), xs, xr, cfg,
                                fg_tol_nu=fg_tolerance_nu(cfg, cube))
            advs.append(float(t["adv_A"]))
            loss = t["adv_A"] if name == "adversarial_only" else t["G"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            d = (model.G_A(xs) - xs).abs()
        report[name] = {"adv_before": advs[0], "adv_after": advs[-1], "hand_change_nu": float(d[hand].mean()),
                        "background_change_nu": float(d[bg].mean())}
    return report


# ---- main ---------------------------------------------------------------------------------------------
ARCH_DEFAULTS = {   # CPU-sized settings per architecture: ngf, blocks, ndf, batch, G lr, D lr
    "sensor": (16, 2, 32, 8, 2e-4, 4e-4),
    "original": (8, 2, 16, 2, 2e-4, 0.0),
}


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=25.0, help="translator training time budget")
    ap.add_argument("--out", default="checkpoints/bench_transfer")
    ap.add_argument("--arch", choices=tuple(ARCH_DEFAULTS), default="sensor", help="gan_arch of the translator")
    ap.add_argument("--real-set", choices=("mismatch", "simreal"), default="mismatch")
    ap.add_argument("--data-root", default="", help="NYU-format folder as the real domain (overrides --real-set)")
    ap.add_argument("--ngf", type=int, default=0, help="generator width (0 = the arch's CPU default; spec: 64)")
    ap.add_argument("--blocks", type=int, default=-1, help="generator blocks (-1 = the arch's CPU default; spec: 9)")
    ap.add_argument("--ndf", type=int, default=0, help="discriminator width (0 = the arch's CPU default)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (0 = the arch's CPU default)")
    ap.add_argument("--lr", type=float, default=0.0, help="generator Adam learning rate (0 = the arch's default)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--n-eval", type=int, default=1000, help="held-out synthetic crops")
    ap.add_argument("--clf-steps", type=int, default=300)
    ap.add_argument("--skip-train", action="store_true", help="evaluate an existing <out>/best.pt")
    ap.add_argument("--downstream", action="store_true", help="also run the self-supervision experiment with and without it")
    ap.add_argument("--seed", type=int, default=0, help="seed of the downstream runs")
    ap.add_argument("--diagnose", action="store_true",
                    help="only run escape_test on <out>/latest.pt (is a cycle generator held at the identity?)")
    return ap.parse_known_args(argv)


def real_domain(args) -> list[str]:
    """Settings that make the real-like set the training set: --data-root (an NYU-format folder) or
    --real-set (generated on first use)."""
    if args.data_root:
        return real_set_settings("mismatch", args.data_root)
    return real_set_settings(args.real_set)


def main(argv: list[str]) -> int:
    args, extra = parse(argv)
    out = Path(args.out)
    ngf, blocks, ndf, batch, lr, lr_d = ARCH_DEFAULTS[args.arch]
    ngf, ndf, batch = args.ngf or ngf, args.ndf or ndf, args.batch or batch
    blocks, lr = (args.blocks if args.blocks >= 0 else blocks), (args.lr or lr)
    domain = real_domain(args)
    if args.real_set == "simreal" and not args.data_root:
        from datasets.simreal import ensure_simreal
        ensure_simreal(make_config(domain))
    base = domain + ["phase=train", "train_stage=transfer", f"out_dir={out}", "num_workers=0",
                     "device=cpu", f"gan_arch={args.arch}", f"gan_ngf={ngf}", f"gan_blocks={blocks}", f"gan_ndf={ndf}",
                     f"gan_batch_size={batch}", f"gan_lr={lr}", f"gan_lr_d={lr_d}", "val_size=128",
                     "image_log_interval=100", "log_interval=10"]
    cfg = make_config(base + extra)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from stages.engine import select_device
    device = select_device(cfg.device)
    report: dict = {"command": "python bench/bench_transfer.py " + " ".join(argv), "arch": args.arch,
                    "real_domain": domain, "train": {}}
    if args.diagnose:
        if args.arch != "original":
            raise SystemExit("--diagnose studies the cycle generator: add --arch original (and its run's --out)")
        return diagnose(out, cfg, device)
    if not args.skip_train:
        report["train"] = train_for(cfg, base, extra, args.minutes, batch, device)
    G = load_translator(out / "best.pt", device)
    clean, cube_z = synthetic_crops(cfg, args.n_eval, cfg.seed + 7_777_777, device)
    raw = torch.cat([translate(G, clean[i:i + 64].to(device)).cpu() for i in range(0, len(clean), 64)])
    snapped = torch.where(raw >= FG, torch.ones_like(raw), raw)
    real_tr, real_te = real_crops(cfg, "train", 1000), real_crops(cfg, "test", 1000)
    save_sheet(out / "sheet.png", clean, snapped, real_te)
    report.update(realism=realism(clean, snapped, real_tr, real_te, args.clf_steps),
                  fidelity_raw=foreground_fidelity(raw, clean, FG, 0.5 * cube_z),
                  fidelity_snapped=foreground_fidelity(snapped, clean, FG, 0.5 * cube_z),
                  range=[float(raw.min()), float(raw.max())], n_eval=len(clean), n_real=[len(real_tr), len(real_te)])
    if args.downstream:
        report["downstream"] = downstream(out, args, extra)
    print_table(report)
    (out / "bench_transfer.json").write_text(json.dumps(report, indent=2))
    return 0


def train_for(cfg: Config, base: list[str], extra: list[str], minutes: float, batch: int, device) -> dict:
    """Train the translator for about `minutes` (steps from a measured step time) -> training report."""
    sps = seconds_per_step(cfg, device)
    steps = max(1, int(minutes * 60 / sps))
    from datasets import build_dataset
    spe = len(build_dataset(cfg, "train", labels=False)) // batch
    epochs = max(2, math.ceil(steps / spe))
    cfg = make_config(base + extra + [f"max_steps={steps}", f"gan_epochs_constant={epochs // 2}",
                                      f"gan_epochs_decay={epochs - epochs // 2}"])
    print(f"bench: {sps:.2f} s/step -> {steps} steps ({epochs} epochs of {spe}) for {minutes} min", flush=True)
    t0 = time.time()
    from stages.transfer import run
    res = run(cfg)
    return {"seconds_per_step": sps, "steps": steps, "train_seconds": round(time.time() - t0, 1),
            "last_losses": res["last_losses"], "val": res["val"]}


def realism(clean: Tensor, translated: Tensor, real_tr: Tensor, real_te: Tensor, clf_steps: int) -> dict:
    """Distances to real and C2ST accuracies of the clean and the translated crops."""
    half = len(clean) // 2
    sets = {"clean": clean, "translated": translated}
    stats = {k: pixel_stats(v) for k, v in {"real": real_te, **sets}.items()}
    rows = {}
    for name, x in sets.items():
        acc, net = c2st(real_tr, x[:half], real_te, x[half:], clf_steps, seed=1)
        rows[name] = {f"W1_{k}": wasserstein(stats[name][k], stats["real"][k]) for k in stats["real"]}
        rows[name]["c2st_acc"] = acc
        if name == "clean":
            rows["translated_by_clean_clf"] = float(p_real(net, translated[half:]))
            rows["clean_by_clean_clf"] = float(p_real(net, clean[half:]))
    return rows


def save_sheet(path: Path, clean: Tensor, translated: Tensor, real: Tensor, n: int = 6) -> None:
    """PNG of n rows: clean | translated (same sample) | real (another frame); near = bright."""
    import cv2
    to8 = lambda x: ((1.0 - x[0].clamp(-1, 1)) * 127.5).round().byte().numpy()  # noqa: E731
    idx = torch.linspace(0, len(real) - 1, n).long()
    sep = np.full((128, 4), 255, np.uint8)
    rows = [np.concatenate([to8(clean[i]), sep, to8(translated[i]), sep, to8(real[int(idx[i])])], 1) for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(rows, 0))


def downstream(out: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    """Rows of bench/experiment_selfsup.py (its default budget) without and with the translator
    out/best.pt, same seed; returns {'without': errors_mm, 'with': errors_mm} (mm per row)."""
    from bench import experiment_selfsup as ex
    where = ["--data-root", args.data_root] if args.data_root else ["--real-set", args.real_set]
    res = {}
    for tag in ("without", "with"):
        if tag == "with":      # pretraining without the translator and sup are the same runs: share them
            seed_dir = out / "downstream" / "with" / f"seed{args.seed}"
            seed_dir.mkdir(parents=True, exist_ok=True)
            for name in ("pre", "sup"):
                if not (seed_dir / name).exists():
                    (seed_dir / name).symlink_to((out / "downstream" / "without" / f"seed{args.seed}" / name).resolve())
        tn = ["--transfer-net", str((out / "best.pt").resolve())] if tag == "with" else []
        ex_args = ex.parse_args(where + ["--out", str(out / "downstream" / tag), "--seeds", str(args.seed),
                                         "--variant", "head"] + tn)
        res[tag] = ex.one_seed(args.seed, Path(ex_args.out), ex_args, ["num_workers=1"] + extra)["errors_mm"]
    return res


def diagnose(out: Path, cfg: Config, device) -> int:
    xs, cube_z = synthetic_crops(cfg, 8, cfg.seed + 7_777_777, device)
    cube = torch.stack([cube_z] * 3, dim=1).to(device)
    res = escape_test(out / "latest.pt", cfg, xs.to(device), real_crops(cfg, "test", 8).to(device), cube)
    print("| G_A trained 10 steps on | adv before | adv after | hand change (nu) | background change (nu) |\n"
          "|---|---|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v['adv_before']:.3f} | {v['adv_after']:.3f} | {v['hand_change_nu']:.4f} | "
              f"{v['background_change_nu']:.4f} |")
    return 0


def print_table(r: dict) -> None:
    re = r["realism"]
    print("\n| distance to REAL (lower = more real-like) | clean | translated |\n|---|---|---|")
    for k in re["clean"]:
        print(f"| {k} | {re['clean'][k]:.4g} | {re['translated'][k]:.4g} |")
    print(f"| real-vs-clean classifier: fraction called real | {re['clean_by_clean_clf']:.3f} | "
          f"{re['translated_by_clean_clf']:.3f} |")
    f, s = r["fidelity_raw"], r["fidelity_snapped"]
    print(f"\nforeground fidelity on {r['n_eval']} held-out synthetic crops (acceptance: <= 0.03 nu, <= 5 %):")
    print(f"  raw:     mean |G_A(x)-x| on hand {f['fg_abs_nu']:.4f} nu = {f['fg_abs_mm']:.2f} mm, "
          f"hand pixels -> background {100 * f['fg_lost_frac']:.2f} %")
    print(f"  snapped: mean |G_A(x)-x| on hand {s['fg_abs_nu']:.4f} nu = {s['fg_abs_mm']:.2f} mm, "
          f"hand pixels -> background {100 * s['fg_lost_frac']:.2f} %")
    print(f"  output range [{r['range'][0]:.3f}, {r['range'][1]:.3f}]")
    if "downstream" in r:
        print_downstream(r["downstream"])
    print(f"\ncommand: {r['command']}")


def print_downstream(d: dict) -> None:
    """Test errors (mm, last stage) of the runs without and with the translator, both protocols."""
    rows = [(f"{tag}: {name}", e) for tag in ("without", "with") for name, e in d[tag].items()
            if name in ("pre", "pre_tn", "ft", "ctrl_no_real", "ctrl_synth", "sup")]
    keys = [(p, k) for p in ("standard", "dsf") for k in sorted(rows[0][1]["standard"])]
    print("\n| downstream run | " + " | ".join(f"{p} {k}" for p, k in keys) + " |\n|---|" + "---|" * len(keys))
    for name, e in rows:
        print(f"| {name} | " + " | ".join(f"{e[p][k]:.2f}" for p, k in keys) + " |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
