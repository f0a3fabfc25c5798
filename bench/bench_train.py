"""Training-step and inference speed of the dual-branch network on synthetic hands.

    python bench/bench_train.py [--threads 2] [--batch 32] [--iters 3] [--device auto] [--nets resnet18:1,resnet18:2,tiny:2]

Per configuration: full pretraining step time (synthetic batch rendered on the fly, forward with the
stage-2 rendering, losses, backward, AdamW step), the CNN-only time of the same step (same network,
a renderer stub returning the precomputed rendering, a plain sum as loss), the share spent outside the
CNN = 1 - CNN/full (rendering, encoding, MANO, losses, data; target < 20 %), and inference frames/s
at batch 1 and the training batch (eval mode, stage-2 rendering included).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import make_config  # noqa: E402
from losses.pretrain import pretrain_losses  # noqa: E402
from models.dual_branch import DualBranchNet, NetConfig  # noqa: E402
from render import camera  # noqa: E402
from stages import engine  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, iters: int, device: torch.device) -> float:
    """Mean seconds of fn() over `iters` runs after one warm-up."""
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t) / iters


class FrozenRender:
    """Renderer stub: returns a fixed HandRender (no rendering cost) for the CNN-only timing."""

    def __init__(self, render):
        self.r = render

    def render_params(self, params, center, cube, K_crop, frame_mask=None):
        return SimpleNamespace(depth=self.r.depth, joints_uvd=self.r.joints_uvd + 0 * params[:, :1, None],
                               verts_xyz=self.r.verts_xyz, joints_xyz=self.r.joints_xyz)


def bench(net_name: str, stages: int, batch: int, iters: int, device: torch.device) -> dict:
    from datasets.synthetic import SyntheticHands
    from models.mano import build_hand_model
    from render.hand_renderer import HandRenderer

    cfg = make_config([], net=net_name, stage_num=stages, batch_size=batch, hand_model="standin",
                      device=str(device.type))
    hand = build_hand_model(cfg).to(device)
    renderer = HandRenderer(hand)
    net = DualBranchNet(NetConfig.from_config(cfg), renderer).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    synth = SyntheticHands(cfg, hand, renderer, "none")
    gen = torch.Generator().manual_seed(0)
    s = synth.batch(batch, gen, device)
    K_crop = camera.crop_intrinsics(s["K"], s["M"])

    def full_step():
        b = synth.batch(batch, gen, device)
        outs = net(b["clean"], b["center"], b["cube"], camera.crop_intrinsics(b["K"], b["M"]))
        loss = sum(pretrain_losses(outs, b, b["clean"], hand, cfg).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    frozen = None
    if stages == 2:
        with torch.no_grad():
            frozen = FrozenRender(renderer.render_params(net(s["clean"], s["center"], s["cube"], K_crop)[0].params,
                                                         s["center"], s["cube"], K_crop))

    def cnn_step():
        if frozen is not None:
            net.__dict__["renderer"] = frozen
        outs = net(s["clean"], s["center"], s["cube"], K_crop)
        loss = sum(o.maps.sum() + o.params.sum() for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        net.__dict__["renderer"] = renderer

    t_full = timed(full_step, iters, device)
    t_cnn = timed(cnn_step, iters, device)
    net.eval()
    fps = {}
    with torch.no_grad():
        for n in (1, batch):
            x = [s[k][:n] for k in ("clean", "center", "cube")] + [K_crop[:n]]
            fps[n] = n / timed(lambda: net(*x), iters, device)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    return {"net": f"{net_name} x{stages}", "params_m": params, "step_s": t_full, "cnn_s": t_cnn,
            "outside": 1.0 - t_cnn / t_full, "fps1": fps[1], f"fps{batch}": fps[batch]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nets", default="resnet18:1,resnet18:2,tiny:2")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = engine.select_device(a.device)
    print(f"device {device}, {a.threads} threads, batch {a.batch}, {a.iters} timed iterations (+1 warm-up)")
    head = f"{'network':<14}{'params M':>9}{'step s':>9}{'CNN s':>9}{'outside':>9}{'fps@1':>9}{'fps@' + str(a.batch):>9}"
    print(head)
    for spec in a.nets.split(","):
        name, stages = spec.split(":")
        r = bench(name, int(stages), a.batch, a.iters, device)
        print(f"{r['net']:<14}{r['params_m']:>9.1f}{r['step_s']:>9.3f}{r['cnn_s']:>9.3f}{100 * r['outside']:>8.1f}%"
              f"{r['fps1']:>9.1f}{r[f'fps{a.batch}']:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
