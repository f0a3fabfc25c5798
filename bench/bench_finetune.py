"""One self-supervised fine-tuning step, timed whole and broken down by part.

    python bench/bench_finetune.py                         # default config and tiny, 2 threads, CPU
    python bench/bench_finetune.py --configs tiny:1:16:512 --iters 5
    python bench/bench_finetune.py --compare-wait-policy   # the same in two processes: OMP_WAIT_POLICY unset / PASSIVE

A configuration is net:stages:batch:points[:checkpoint] (default: resnet18:2:32:2048, the method's,
and tiny:2:16:512).  Without a checkpoint the network is untrained, so its meshes lie far from the
crops' points: the worst case of the point-to-mesh search (more candidate faces per point); with one
(e.g. a pretraining latest.pt of that net and stage count) the step is the one a real run takes.
The step is the one `stages/finetune.py` runs: a synthetic batch rendered on the fly
(view rotation 'original'), the network on it with the synthetic losses, the network on a "real"
batch with the self-supervised losses (`stages.finetune.real_loss_total`), backward, AdamW.  The
real batch is a second synthetic batch with frame masks all true: the same shapes and hand content
as real crops, without needing a dataset; it is made before each step and not timed (a real run
reads its crops in DataLoader workers).

Columns: seconds per step (the fastest of --iters after a warm-up; the timings below alternate, so
slow phases of the machine hit each) and the share of the whole step; parts are means over the steps.
* whole step, and the CNN alone (the same network on both batches with the stage-1 rendering frozen
  and a plain sum as loss, as bench_train.py does);
* outside the CNN, measured directly: the same step with the network replaced by `OutsideOnly` (its
  outputs as leaf tensors, everything else - renderer, hand model, losses, their backward - as in
  the step), share = outside / (outside + CNN alone); beside it the indirect estimate step - CNN
  alone (two large, noisy times subtracted: at resnet18 scale it can even come out negative);
* the step's five blocks (synthetic rendering, forward + synthetic losses, real forward + losses,
  backward, optimizer) and, "of which", the forward time of each part measured in place (wrappers
  around the functions of losses.finetune and the renderer; on CUDA with a synchronize around each
  call).  Backward is one block: autograd does not tell the parts apart.
Load average before / after is printed: run it alone on the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import make_config  # noqa: E402
from render.camera import crop_intrinsics  # noqa: E402

# (module, attribute, part name): forward pieces of the real-batch losses, timed where they run
LOSS_PARTS = (
    ("losses.finetune", "box", "hand box"),
    ("losses.finetune", "crop_points_norm", "segmentation"),
    ("losses.finetune", "spheres", "segmentation"),
    ("losses.finetune", "segment_points", "segmentation"),
    ("losses.finetune", "sample_indices", "sampling"),
    ("losses.finetune", "render_residual", "render residual"),
    ("losses.finetune", "data_mesh_distance", "data -> mesh"),
    ("losses.finetune", "part_mesh_distance", "part data -> mesh"),
    ("losses.finetune", "intersection_residual", "reliability selection"),
    ("losses.finetune", "select_reliable", "reliability selection"),
    ("losses.finetune", "select_reliable_relative", "reliability selection"),
    ("losses.finetune", "collision_term", "collision"),
)


STEP_BLOCKS = ("synthetic rendering", "network forward + synthetic losses",
               "real batch: network forward + self-supervised losses", "backward", "optimizer")


class PartTimer:
    """Accumulates the wall time of wrapped functions by part name (nested parts are not subtracted)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.depth = device, defaultdict(float), 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def wrap(self, owner, name: str, part: str) -> None:
        fn = getattr(owner, name, None)
        if fn is None:
            return

        def timed(*args, **kwargs):
            if self.depth:               # inside another timed part: counted there
                return fn(*args, **kwargs)
            self.sync()
            t0 = time.perf_counter()
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.sync()
                self.seconds[part] += time.perf_counter() - t0
        setattr(owner, name, timed)

    @contextlib.contextmanager
    def paused(self):
        """Wrapped functions called inside are not counted (as if nested in another part)."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def block(self, part: str):
        timer = self

        class _Block:
            def __enter__(self):
                timer.sync()
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.sync()
                timer.seconds[part] += time.perf_counter() - self.t0
        return _Block()


def build(net: str, stages: int, batch: int, points: int, device: torch.device, load: str = ""):
    from datasets.synthetic import SyntheticHands
    from stages.checkpoints import load_checkpoint
    from stages.common import build_parts
    cfg = make_config([], net=net, stage_num=stages, batch_size=batch, num_points=points, hand_model="standin",
                      device=device.type, train_stage="finetune")
    hand, renderer, model = build_parts(cfg, device)
    if load:       # trained weights: its meshes lie near the crops' points, as in a real fine-tuning
        model.load_state_dict(load_checkpoint(Path(load), map_location=device)["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return cfg, hand, renderer, model, opt, SyntheticHands(cfg, hand, renderer, "original")


def real_like(synth, batch: int, gen, device, cfg) -> dict:
    s = synth.batch(batch, gen, device)
    S = s["clean"].shape[-1]
    return {"depth": s["clean"], "center": s["center"], "cube": s["cube"], "K_crop": crop_intrinsics(s["K"], s["M"]),
            "frame_mask": torch.ones(batch, S, S, dtype=torch.bool, device=device)}


def one_step(parts, timer: PartTimer, gen, point_gen, device, x: dict, net=None):
    """The fine-tuning step of stages/finetune.py on the "real" batch x, with its pieces timed
    (net: the network, default the model; `OutsideOnly` for the step without the CNN)."""
    from losses.finetune import synthetic_losses
    from stages.finetune import real_loss_total
    cfg, hand, renderer, model, opt, synth = parts
    model = model if net is None else net
    run = SimpleNamespace(autocast=lambda: torch.autocast(device.type, enabled=False))
    with timer.block("synthetic rendering"):
        s = synth.batch(cfg.batch_size, gen, device)
    with timer.block("network forward + synthetic losses"):
        outs = model(s["clean"], s["center"], s["cube"], crop_intrinsics(s["K"], s["M"]))
        synth_terms = synthetic_losses(outs, s, hand, cfg)
    with timer.block("real batch: network forward + self-supervised losses"):
        real_sum, _, _, _ = real_loss_total(model, x, renderer, hand, cfg, run, point_gen)
    loss = sum(synth_terms.values()) + real_sum
    with timer.block("backward"):
        opt.zero_grad(set_to_none=True)
        loss.backward()
    with timer.block("optimizer"):
        opt.step()


class OutsideOnly(torch.nn.Module):
    """The network without its CNN, for timing everything else: each call runs the real network
    without gradient (its time is counted in `excluded` and left out), then returns its outputs as
    fresh leaf tensors with gradient; with 2 stages the stage-1 hand is rendered and encoded with
    gradient as the real network does (the encoding joined to the stage-2 maps by a zero-weighted sum,
    so its backward runs).  So the losses, the renderer, the hand model and their backward run as in
    the real step, and the CNN's forward, backward and AdamW do not."""

    def __init__(self, model, timer: PartTimer):
        super().__init__()
        self.__dict__["model"], self.timer, self.excluded = model, timer, 0.0

    def forward(self, depth, center, cube, K_crop):
        from models.dual_branch import StageOutput, encode_joints
        self.timer.sync()
        t0 = time.perf_counter()
        with self.timer.paused(), torch.no_grad():
            outs = self.model(depth, center, cube, K_crop)
        self.timer.sync()
        self.excluded += time.perf_counter() - t0
        leaves = [(o.maps.detach().clone().requires_grad_(), o.params.detach().clone().requires_grad_()) for o in outs]
        if len(leaves) == 1:
            return [StageOutput(*leaves[0])]
        (m1, p1), (m2, p2) = leaves
        render = self.model.render_input(p1, center, cube, K_crop)
        pose_maps = encode_joints(render.joints_uvd, render.depth, self.model.net_cfg)
        return [StageOutput(m1, p1, render), StageOutput(m2 + 0.0 * pose_maps.sum(), p2)]


def cnn_step(parts, x: dict, device) -> None:
    """The network alone on two batches: stage-1 rendering frozen, a plain sum as loss."""
    from bench.bench_train import FrozenRender
    cfg, hand, renderer, model, opt, synth = parts
    frozen = None
    if cfg.stage_num == 2:
        with torch.no_grad():
            p = model(x["depth"], x["center"], x["cube"], x["K_crop"])[0].params
            frozen = FrozenRender(renderer.render_params(p, x["center"], x["cube"], x["K_crop"]))
    model.__dict__["renderer"] = frozen or renderer
    loss = 0
    for _ in range(2):
        outs = model(x["depth"], x["center"], x["cube"], x["K_crop"])
        loss = loss + sum(o.maps.sum() + o.params.sum() for o in outs)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    model.__dict__["renderer"] = renderer


def bench(spec: str, iters: int, device: torch.device) -> list[tuple]:
    import importlib
    net, stages, batch, points, *load = spec.split(":", 4)
    parts = build(net, int(stages), int(batch), int(points), device, load[0] if load else "")
    timer = PartTimer(device)
    for mod, name, part in LOSS_PARTS:
        timer.wrap(importlib.import_module(mod), name, part)
    timer.wrap(parts[2], "render_params", "hand rendering (stage input and losses)")
    gen, point_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    steps, cnn, outside = [], [], []
    x_cnn = real_like(parts[5], int(batch), gen, device, parts[0])
    null, quiet = OutsideOnly(parts[3], timer), PartTimer(device)
    # the stand-in real batch is made before each step, untimed: a real run reads it in loader workers
    one_step(parts, timer, gen, point_gen, device, real_like(parts[5], int(batch), gen, device, parts[0]))  # warm-up
    one_step(parts, quiet, gen, point_gen, device, x_cnn, net=null)
    cnn_step(parts, x_cnn, device)
    timer.seconds.clear()
    for _ in range(iters):      # the three timings interleaved, so that drift of the machine hits each
        with timer.paused():                             # its rendering is not part of the step
            x = real_like(parts[5], int(batch), gen, device, parts[0])
        timer.sync()
        t0 = time.perf_counter()
        one_step(parts, timer, gen, point_gen, device, x)
        timer.sync()
        steps.append(time.perf_counter() - t0)
        with timer.paused():
            t0 = time.perf_counter()
            cnn_step(parts, x_cnn, device)
            timer.sync()
            cnn.append(time.perf_counter() - t0)
            null.excluded, t0 = 0.0, time.perf_counter()
            one_step(parts, quiet, gen, point_gen, device, x, net=null)
            timer.sync()
            outside.append(time.perf_counter() - t0 - null.excluded)
    per_part = {k: v / iters for k, v in timer.seconds.items()}
    step, cnn_s, out_s = min(steps), min(cnn), min(outside)
    rows = [("whole step", step), ("CNN alone (both batches, fwd + bwd + AdamW)", cnn_s),
            ("outside the CNN, measured (the step without the CNN)", out_s),
            ("  share outside = outside / (outside + CNN alone)", None, out_s / (out_s + cnn_s)),
            ("  check: step - CNN alone", step - cnn_s)]
    rows += [(k, per_part[k]) for k in STEP_BLOCKS if k in per_part]
    rows += [("  of which " + k, v) for k, v in sorted(per_part.items(), key=lambda kv: -kv[1]) if k not in STEP_BLOCKS]
    return rows


def print_table(spec: str, rows: list[tuple]) -> None:
    """rows: (name, seconds) with the share of the whole step, or (name, None, share)."""
    step = rows[0][1]
    print(f"\n{spec}  (net:stages:batch:points[:checkpoint])")
    print(f"{'part':<58}{'seconds':>10}{'share':>9}")
    for name, sec, *share in rows:
        if sec is None:
            print(f"{name:<58}{'':>10}{100 * share[0]:>8.1f}%")
        else:
            print(f"{name:<58}{sec:>10.3f}{100 * sec / step:>8.1f}%")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="resnet18:2:32:2048,tiny:2:16:512")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compare-wait-policy", action="store_true")
    a = ap.parse_args(argv)
    if a.compare_wait_policy:
        rest = [x for x in argv if x != "--compare-wait-policy"]
        for policy in ("", "PASSIVE"):
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            print(f"\n===== OMP_WAIT_POLICY={policy or '(unset)'} =====", flush=True)
            subprocess.run([sys.executable, __file__, *rest], env=env, check=True)
        return 0
    from stages.engine import select_device
    torch.set_num_threads(a.threads)
    device = select_device(a.device)
    print(f"device {device}, {a.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"{a.iters} timed steps (+1 warm-up); load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for spec in a.configs.split(","):
        print_table(spec, bench(spec, a.iters, device))
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
