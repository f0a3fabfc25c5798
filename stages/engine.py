"""The run engine shared by every training stage (pretrain, supervised, transfer, finetune).

Usage (one obvious loop; see stages/pretrain.py for a complete example)::

    run = engine.setup(cfg)                          # device, seeds, DDP, out_dir, config.yaml, TensorBoard
    model = engine.wrap_model(Net(...).to(run.device), run)     # DDP under torchrun, torch.compile
    opt, sched = AdamW(model.parameters(), ...), StepLR(...)
    gen = torch.Generator(run.device).manual_seed(run.seed)     # every RNG the steps use

    def step_fn(step: int) -> dict[str, Tensor]:     # one iteration's losses; key 'loss' is optimised
        with run.autocast():                         # bf16/fp16 on CUDA for the network only
            outs = model(...)
        return {"loss": total, "maps": ..., ...}     # scalar tensors; the engine does backward/step

    result = engine.train(run, model, opt, sched, step_fn, total_steps, steps_per_epoch,
                          validate_fn=lambda step: {"s2_pwe_mm": ...}, best_key="s2_pwe_mm",
                          generators=[gen], image_fn=lambda step: {"train": grid})
    engine.teardown(run)

`train` restores `out_dir/latest.pt` when cfg.resume (model, optimizer, scheduler, AMP scaler, step,
epoch, best value, RNG states of torch/numpy/python and of `generators`, `state_extra`), so a resumed run
continues with the same schedule and, on CPU, the same losses.  The scheduler is stepped once per
epoch (every `steps_per_epoch` optimizer steps).  Validation runs every cfg.val_interval steps (0 = at
each epoch end) and at the end, on rank 0 only (validate_fn must not use collectives: call it on
`unwrap(model)`); `latest.pt` is written then, `best.pt` when `best_key` improves (lower is better;
without validate_fn `best.pt` is the latest).  Checkpoints are written atomically (tmp + os.replace).
A non-finite loss saves `last_good.pt` (the weights before that step) and raises `NonFiniteLoss`
naming the step and every loss term.

Other helpers: `select_device`, `seed_everything`, `worker_init_fn`, `epoch_loader` (deterministic
DistributedSampler-based DataLoader that can start mid-epoch), `BatchStream` (the batch of step t),
`save_checkpoint` / `load_checkpoint`
(`CheckpointError` names the file), `load_weights` (name-matched init from any of our checkpoints),
`image_grid` (depth | rendering | joints drawn on the crop), `unwrap`.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from config import Config

StepFn = Callable[[int], dict]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


class NonFiniteLoss(FloatingPointError):
    """A NaN/Inf loss; the message names the step and the loss terms."""


# ---------------------------------------------------------------------------------------------
# device, seeds, distributed
def select_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no CUDA device is available (use device=auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader workers: seed numpy/python from the worker's torch seed (set by the loader's generator)."""
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)


@dataclass
class Run:
    """Everything a stage needs to know about where and how it runs."""
    cfg: Config
    device: torch.device
    rank: int
    world_size: int
    out_dir: Path
    writer: object | None           # torch.utils.tensorboard.SummaryWriter on rank 0, else None
    seed: int                       # cfg.seed + rank: per-process seed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def print(self, *args) -> None:
        if self.is_main:
            print(*args, flush=True)

    def autocast(self):
        """Autocast context for the network (cfg.amp on CUDA); a no-op on CPU or amp=none."""
        if self.device.type != "cuda" or self.cfg.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def log_scalars(self, step: int, values: dict, prefix: str) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", float(v), step)


def setup(cfg: Config) -> Run:
    """Init DDP from torchrun's env (RANK, WORLD_SIZE), pick the device, seed, create out_dir, print and
    save the resolved config (config.yaml) and open TensorBoard (rank 0)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = select_device(cfg.device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    seed_everything(cfg.seed + rank)
    out_dir = Path(cfg.out_dir)
    writer = None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save_yaml(out_dir / "config.yaml")
        print(f"resolved config (saved to {out_dir / 'config.yaml'}):")
        text = "  ".join(f"{k}={v}" for k, v in cfg.to_dict().items())
        print(textwrap.fill(text, width=110, initial_indent="  ", subsequent_indent="  ",
                            break_on_hyphens=False), flush=True)
        print(f"device: {device}, processes: {world}", flush=True)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tb"))
    run = Run(cfg, device, rank, world, out_dir, writer, cfg.seed + rank)
    run.barrier()
    return run


def teardown(run: Run) -> None:
    """Close TensorBoard and leave the process group."""
    if run.writer is not None:
        run.writer.close()
    if run.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, run: Run) -> nn.Module:
    """DistributedDataParallel under torchrun, then torch.compile when cfg.compile."""
    if run.distributed:
        ids = [run.device.index] if run.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if run.cfg.compile:
        model = torch.compile(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile / DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def epoch_loader(dataset, run: Run, batch_size: int, epoch: int, start_batch: int = 0,
                 shuffle: bool = True, drop_last: bool = True) -> torch.utils.data.DataLoader:
    """DataLoader over this rank's shard of `epoch` (DistributedSampler order, seed cfg.seed), skipping
    the first `start_batch` batches (resume mid-epoch).  Worker seeds derive from (seed, epoch)."""
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=run.world_size, rank=run.rank,
                                                  shuffle=shuffle, seed=run.cfg.seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    indices = list(sampler)[start_batch * batch_size:]
    gen = torch.Generator().manual_seed(run.cfg.seed * 100_003 + epoch * 1_009 + run.rank)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=indices, drop_last=drop_last,
                                       num_workers=run.cfg.num_workers, worker_init_fn=worker_init_fn,
                                       generator=gen, persistent_workers=False,
                                       pin_memory=run.device.type == "cuda")


class BatchStream:
    """Batches of `dataset` by optimizer step: step t reads batch t % steps_per_epoch of epoch
    t // steps_per_epoch (epoch_loader order), so a resumed run reads the same batches."""

    def __init__(self, dataset, run: Run, batch_size: int, steps_per_epoch: int):
        self.dataset, self.run, self.batch_size, self.spe = dataset, run, batch_size, steps_per_epoch
        self.iterator, self.next_step = None, None

    def batch(self, step: int) -> dict:
        if self.iterator is None or step != self.next_step or step % self.spe == 0:
            epoch, start = divmod(step, self.spe)
            self.iterator = iter(epoch_loader(self.dataset, self.run, self.batch_size, epoch, start))
        self.next_step = step + 1
        return next(self.iterator)


# ---------------------------------------------------------------------------------------------
# checkpoints
def rng_state(generators: Iterable[torch.Generator] = ()) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "generators": [g.get_state() for g in generators]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: Iterable[torch.Generator] = ()) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for g, s in zip(generators, state["generators"]):
        g.set_state(s)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to a temporary file then os.replace: a killed run never leaves a partial file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read one of our checkpoints; CheckpointError names the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} holds no 'model' entry")
    return state


def load_weights(model: nn.Module, path: str | Path, run: Run | None = None) -> tuple[list, list]:
    """Name-matched load of a checkpoint's model weights (shapes must agree); returns (missing, unexpected)."""
    state = load_checkpoint(path)["model"]
    own = unwrap(model).state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    unexpected = [k for k in state if k not in usable]
    unwrap(model).load_state_dict(usable, strict=False)
    if run is not None:
        run.print(f"initialised from {path}: {len(usable)} tensors loaded, {len(missing)} missing, "
                  f"{len(unexpected)} unused")
    return missing, unexpected


def _state(run: Run, model, optimizer, scheduler, scaler, step, epoch, best, generators, state_extra) -> dict:
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "best": best,
            "rng": rng_state(generators), "config": run.cfg.to_dict(),
            "extra": {k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in (state_extra or {}).items()}}


# ---------------------------------------------------------------------------------------------
# images
def image_grid(depth: Tensor, rendered: Tensor | None = None, joints_uvd: Tensor | None = None,
               n: int = 8) -> Tensor:
    """Rows of [input depth with joints drawn | rendered hand] for the first n samples.

    depth, rendered (B, 1, S, S) normalized (background +1); joints_uvd (B, J, 3) nu.
    Returns an RGB image (3, n*S, 2*S) float in [0, 1] for SummaryWriter.add_image.
    """
    import cv2
    from render.camera import norm_to_crop_px

    n = min(n, depth.shape[0])
    S = depth.shape[-1]
    rows = []
    for b in range(n):
        tiles = []
        for img in (depth, rendered):
            if img is None:
                tiles.append(np.zeros((S, S, 3), np.float32))
                continue
            g = ((1.0 - img[b, 0].detach().float().clamp(-1, 1).cpu().numpy()) / 2.0).astype(np.float32)
            tiles.append(np.repeat(g[..., None], 3, axis=-1).copy())
        if joints_uvd is not None:
            uv = norm_to_crop_px(joints_uvd[b, :, :2].detach().float().cpu(), S).numpy()
            for k, (u, v) in enumerate(uv):
                if np.isfinite(u) and np.isfinite(v):
                    color = (1.0, 0.2 + 0.6 * (k % 3) / 2, 0.1) if k else (0.1, 0.9, 0.1)
                    cv2.circle(tiles[0], (int(round(u)), int(round(v))), 2, color, -1)
        rows.append(np.concatenate(tiles, axis=1))
    return torch.from_numpy(np.concatenate(rows, axis=0)).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------
# the loop
def _all_finite(losses: dict, run: Run) -> bool:
    ok = torch.tensor([all(bool(torch.isfinite(v.detach()).all()) for v in losses.values())], dtype=torch.float32)
    if run.distributed:
        ok = ok.to(run.device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def train(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, step_fn: StepFn,
          total_steps: int, steps_per_epoch: int, validate_fn: Callable[[int], dict] | None = None,
          best_key: str = "", generators: Iterable[torch.Generator] = (), image_fn=None,
          state_extra: dict | None = None) -> dict:
    """Run optimizer steps [start, total_steps); returns {'step', 'best', 'last_losses', 'val', 'seconds'}.

    step_fn(step) -> dict of scalar loss tensors with key 'loss' (the one optimised); the engine calls
    backward (through the AMP scaler), optimizer.step, scheduler.step at epoch ends, logs every term at
    cfg.log_interval (prefix 'train/', plus 'train/lr') and images from image_fn(step) -> {tag: (3,H,W)}
    at cfg.image_log_interval.  state_extra: {name: object with state_dict/load_state_dict} saved too.
    """
    cfg, generators = run.cfg, list(generators)
    steps_per_epoch = max(1, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=run.device.type == "cuda" and cfg.amp == "fp16")
    start, best, val = 0, math.inf, {}
    latest = run.out_dir / "latest.pt"
    if cfg.resume:
        if not latest.is_file():
            raise CheckpointError(f"resume=true but {latest} does not exist")
        ck = load_checkpoint(latest)
        unwrap(model).load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and ck["scheduler"] is not None:
            scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        for k, v in (state_extra or {}).items():
            v.load_state_dict(ck["extra"][k])
        set_rng_state(ck["rng"], generators)
        start, best = ck["step"], ck["best"]
        run.print(f"resumed from {latest} at step {start} (epoch {ck['epoch']})")

    def checkpoint(name: str, step: int) -> None:
        if run.is_main:
            save_checkpoint(run.out_dir / name, _state(run, model, optimizer, scheduler, scaler, step,
                                                       step // steps_per_epoch, best, generators, state_extra))

    from tqdm import tqdm
    bar = tqdm(total=total_steps, initial=start, disable=not (run.is_main and cfg.progress),
               dynamic_ncols=True, desc=f"{cfg.train_stage}")
    t0, losses = time.time(), {}
    val_every = cfg.val_interval if cfg.val_interval > 0 else steps_per_epoch
    for step in range(start, total_steps):
        model.train()
        rng_before = rng_state(generators) if run.is_main else None
        losses = step_fn(step)
        if not _all_finite(losses, run):
            terms = ", ".join(f"{k}={float(v.detach()):.6g}" for k, v in losses.items())
            if run.is_main:
                st = _state(run, model, optimizer, scheduler, scaler, step, step // steps_per_epoch, best,
                            generators, state_extra)
                st["rng"] = rng_before
                save_checkpoint(run.out_dir / "last_good.pt", st)
            raise NonFiniteLoss(f"non-finite loss at step {step}: {terms}; weights before this step saved to "
                                f"{run.out_dir / 'last_good.pt'}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        done = step + 1
        if scheduler is not None and done % steps_per_epoch == 0:
            scheduler.step()
        if run.is_main and (done % cfg.log_interval == 0 or done == total_steps):
            run.log_scalars(done, {k: v.detach() for k, v in losses.items()}, "train")
            run.log_scalars(done, {"lr": optimizer.param_groups[0]["lr"]}, "train")
            bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}", epoch=step // steps_per_epoch)
            if not cfg.progress:   # plain log lines instead of the bar
                per = (time.time() - t0) / (done - start)
                print(f"step {done}/{total_steps} loss {float(losses['loss'].detach()):.4f} "
                      f"({per:.2f} s/step, ETA {per * (total_steps - done) / 60:.1f} min)", flush=True)
        if run.is_main and image_fn is not None and cfg.image_log_interval > 0 and done % cfg.image_log_interval == 0:
            for tag, img in image_fn(step).items():
                run.writer.add_image(tag, img, done)
        bar.update(1)
        if done % val_every == 0 or done == total_steps:
            if run.is_main and validate_fn is not None:
                val = validate_fn(step)
                run.log_scalars(done, val, "val")
                bar.write(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
                improved = val[best_key] < best
                best = min(best, val[best_key])
            else:
                improved = True
            checkpoint("latest.pt", done)
            if improved or validate_fn is None:
                checkpoint("best.pt", done)
            run.barrier()
    bar.close()
    return {"step": total_steps, "best": best, "val": val, "seconds": time.time() - t0,
            "last_losses": {k: float(v.detach()) for k, v in losses.items()}}
