"""The run engine shared by every training stage (pretrain, supervised, transfer, finetune).

Usage (one obvious loop; see stages/pretrain.py for a complete example)::

    run = engine.setup(cfg)                          # device, seeds, DDP, out_dir checks, config.yaml, TensorBoard
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

Nothing is lost silently:
* `setup` refuses an out_dir that holds checkpoints unless cfg.resume (continue it) or cfg.overwrite
  (delete them first).  On resume, settings in config.RESUME_FIXED must be unchanged; every other
  change is applied, printed, and the earlier settings are kept as `config.step<N>.yaml`.
* `train` restores `latest.pt` on resume (model, optimizer moments with the *new* optimizer settings,
  scheduler position, AMP scaler, step, best value, RNG states of torch/numpy/python and of
  `generators`, `state_extra`), so an unchanged resumed run gives the same losses on CPU.
* `latest.pt` is written at every validation (every cfg.val_interval steps, 0 = each epoch end, and at
  the end) and at least every cfg.checkpoint_interval_min minutes; `best.pt` when `best_key` improves
  (lower is better; without validate_fn `best.pt` is the latest).
* A non-finite loss, gradient or updated weight stops the run with `NonFiniteLoss` naming the step;
  the weights from before that step (never the broken ones) are saved to `last_good.pt`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import textwrap
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from config import Config, ConfigError
from models.mano import resolved_hand_model
from stages.averaging import WeightAverage
from stages.checkpoints import CheckpointError, check_hand_model, rng_state, save_checkpoint, set_rng_state
from stages.rundir import check_out_dir, prepare_out_dir, resume_changes

StepFn = Callable[[int], dict]


class NonFiniteLoss(FloatingPointError):
    """A NaN/Inf loss, gradient or weight; the message names the step and what was not finite."""


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
    resume_state: dict | None = None    # latest.pt when cfg.resume (read by setup, restored by train)
    hand_model: dict | None = None      # HandModel.identity() of the run's hand model (set by the stage)

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
    """Init DDP from torchrun's env (RANK, WORLD_SIZE), pick the device, seed, check out_dir (see the
    module docstring), save the resolved config (config.yaml) and open TensorBoard (rank 0)."""
    cfg = dataclasses.replace(cfg, hand_model=resolved_hand_model(cfg))   # record what 'auto' means
    resume_state, to_delete = check_out_dir(cfg)
    changes = resume_changes(resume_state.get("config", {}), cfg, Path(cfg.out_dir) / "latest.pt") \
        if resume_state is not None else []
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
        prepare_out_dir(out_dir, to_delete, changes, resume_state)
        cfg.save_yaml(out_dir / "config.yaml")
        print(f"resolved config (saved to {out_dir / 'config.yaml'}):")
        text = "  ".join(f"{k}={v}" for k, v in cfg.to_dict().items())
        print(textwrap.fill(text, width=110, initial_indent="  ", subsequent_indent="  ",
                            break_on_hyphens=False), flush=True)
        print(f"device: {device}, processes: {world}", flush=True)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tb"))
    run = Run(cfg, device, rank, world, out_dir, writer, cfg.seed + rank, resume_state)
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


# ---------------------------------------------------------------------------------------------
# the pieces of the loop
@dataclass
class _Trainer:
    """The objects a checkpoint holds, and the bookkeeping of when to write one."""
    run: Run
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    generators: list
    state_extra: dict
    steps_per_epoch: int
    average: WeightAverage | None = None
    best: float = math.inf
    last_write: float = dataclasses.field(default_factory=time.time)
    written: set = dataclasses.field(default_factory=set)

    def state(self, step: int, with_optimizer: bool = True) -> dict:
        o, s = self.optimizer, self.scheduler
        return {**self.weights(), "optimizer": o.state_dict() if with_optimizer else None,
                "scheduler": s.state_dict() if s is not None else None, "scaler": self.scaler.state_dict(),
                "step": step, "epoch": step // self.steps_per_epoch, "best": self.best,
                "rng": rng_state(self.generators), "config": self.run.cfg.to_dict(),
                "hand_model": self.run.hand_model,
                "extra": {k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in self.state_extra.items()}}

    def weights(self) -> dict:
        """{'model': the weights to use (the average when one is kept)} plus, with an average,
        'train_model': the trained weights that resume continues from."""
        own = unwrap(self.model).state_dict()
        if self.average is None:
            return {"model": own}
        return {"model": self.average.state_dict(), "train_model": own}

    def using_average(self):
        """Context in which the model holds the weights to use (validation)."""
        return contextlib.nullcontext() if self.average is None else self.average.applied(unwrap(self.model))

    def save(self, name: str, step: int) -> None:
        if self.run.is_main:
            save_checkpoint(self.run.out_dir / name, self.state(step))
            self.written.add(name)
            self.last_write = time.time()

    def snapshot(self, step: int) -> None:
        """Weights only (no optimizer), snapshots/step<N>.pt: loadable by load_model= and phase=test."""
        if self.run.is_main:
            path = self.run.out_dir / "snapshots" / f"step{step:07d}.pt"
            path.parent.mkdir(exist_ok=True)
            save_checkpoint(path, {"model": self.weights()["model"], "step": step,
                                   "config": self.run.cfg.to_dict(), "hand_model": self.run.hand_model})

    def due(self) -> bool:
        minutes = self.run.cfg.checkpoint_interval_min
        return minutes > 0 and time.time() - self.last_write >= 60.0 * minutes


def _scheduled_lrs(scheduler) -> list[float]:
    if hasattr(scheduler, "_get_closed_form_lr"):
        return scheduler._get_closed_form_lr()
    with warnings.catch_warnings():     # get_lr() outside step() warns; LambdaLR's is closed-form
        warnings.simplefilter("ignore")
        return scheduler.get_lr()


def _resume(t: _Trainer) -> int:
    """Restore run.resume_state into the trainer; optimizer and scheduler keep the settings they were
    built with now (lr, weight decay, betas, step size, gamma) with the saved moments and position."""
    run, ck = t.run, t.run.resume_state
    path = run.out_dir / "latest.pt"
    check_hand_model(ck, run.hand_model, path, run.cfg.hand_model_check)
    try:
        unwrap(t.model).load_state_dict(ck.get("train_model", ck["model"]))
        if t.average is not None:     # a run saved without an average starts one at its weights
            t.average.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit this network ({str(e).splitlines()[0]} ...); "
                              f"was it trained with other architecture settings?") from None
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in t.optimizer.param_groups]
    t.optimizer.load_state_dict(ck["optimizer"])
    changed = any(any(g.get(k) != v for k, v in f.items() if k != "lr") for g, f in zip(t.optimizer.param_groups, fresh))
    for g, f in zip(t.optimizer.param_groups, fresh):
        g.update({k: v for k, v in f.items() if k != "lr"})
    if t.scheduler is not None and ck["scheduler"] is not None:
        own = t.scheduler.state_dict()
        counters = ("last_epoch", "_step_count")
        changed |= any(own.get(k) != v for k, v in ck["scheduler"].items() if k not in counters + ("_last_lr",))
        for k in counters:
            setattr(t.scheduler, k, ck["scheduler"][k])
        if changed or not hasattr(t.scheduler, "_get_closed_form_lr"):
            lrs = _scheduled_lrs(t.scheduler)
            for g, lr in zip(t.optimizer.param_groups, lrs):
                g["lr"] = lr
        t.scheduler._last_lr = [g["lr"] for g in t.optimizer.param_groups]
    t.scaler.load_state_dict(ck["scaler"])
    for k, v in t.state_extra.items():
        v.load_state_dict(ck["extra"][k])
    set_rng_state(ck["rng"], t.generators)
    t.best = ck["best"]
    run.print(f"resumed from {path} at step {ck['step']} (epoch {ck['epoch']}), lr {t.optimizer.param_groups[0]['lr']:.3g}")
    return ck["step"]


class _FiniteGuard:
    """Keeps a copy of the model state from before the current step; a non-finite loss, gradient or
    updated weight restores it, saves it as last_good.pt and raises NonFiniteLoss."""

    def __init__(self, t: _Trainer, check_grads: bool):
        self.t, self.check_grads = t, check_grads
        self.tensors = list(unwrap(t.model).state_dict().values())    # share storage with the model
        self.saved = [x.detach().clone() for x in self.tensors]
        self.params = [p for p in t.model.parameters() if p.requires_grad]
        self.step, self.rng = 0, None

    def before(self, step: int) -> None:
        with torch.no_grad():
            for dst, src in zip(self.saved, self.tensors):
                dst.copy_(src)
        self.step, self.rng = step, rng_state(self.t.generators) if self.t.run.is_main else None

    def losses(self, losses: dict) -> None:
        if not _all_finite(list(losses.values()), self.t.run):
            terms = ", ".join(f"{k}={float(v.detach()):.6g}" for k, v in losses.items())
            self._fail(f"non-finite loss at step {self.step}: {terms}", with_optimizer=True)

    def gradients(self) -> None:
        if self.check_grads and not _all_finite([p.grad for p in self.params if p.grad is not None], self.t.run):
            names = [n for n, p in unwrap(self.t.model).named_parameters()
                     if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
            self._fail(f"non-finite gradient at step {self.step} in {len(names)} tensor(s), e.g. {names[:3]}",
                       with_optimizer=True)

    def weights(self) -> None:
        if not _all_finite(self.tensors, self.t.run):
            self._fail(f"the optimizer step {self.step} made weights non-finite (learning rate too high?)",
                       with_optimizer=False)

    def _fail(self, what: str, with_optimizer: bool) -> None:
        with torch.no_grad():
            for dst, src in zip(self.tensors, self.saved):
                dst.copy_(src)
        path = self.t.run.out_dir / "last_good.pt"
        if self.t.run.is_main:
            st = self.t.state(self.step, with_optimizer)
            st["rng"] = self.rng
            save_checkpoint(path, st)
        raise NonFiniteLoss(f"{what}; the weights from before this step were saved to {path}")


def _all_finite(tensors: list[Tensor], run: Run) -> bool:
    ok = torch.stack([torch.isfinite(x.detach()).all() for x in tensors]).all().float().reshape(1).cpu() \
        if tensors else torch.ones(1)
    if run.distributed:
        ok = ok.to(run.device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def _log(run: Run, bar, done: int, start: int, total: int, losses: dict, lr: float, t0: float, spe: int) -> None:
    cfg = run.cfg
    if not run.is_main or not (done % cfg.log_interval == 0 or done == total):
        return
    run.log_scalars(done, {k: v.detach() for k, v in losses.items()}, "train")
    run.log_scalars(done, {"lr": lr}, "train")
    bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}", epoch=(done - 1) // spe)
    if not cfg.progress:   # plain log lines instead of the bar
        per = (time.time() - t0) / (done - start)
        print(f"step {done}/{total} loss {float(losses['loss'].detach()):.4f} "
              f"({per:.2f} s/step, ETA {per * (total - done) / 60:.1f} min)", flush=True)


def _validate(t: _Trainer, bar, validate_fn, best_key: str, step: int, done: int) -> dict:
    """Validate (rank 0), write latest.pt and, when best_key improved, best.pt."""
    run, val, improved = t.run, {}, True
    if run.is_main and validate_fn is not None:
        with t.using_average():
            val = validate_fn(step)
        run.log_scalars(done, val, "val")
        bar.write(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
        improved = val[best_key] < t.best
        t.best = min(t.best, val[best_key])
    t.save("latest.pt", done)
    if improved:
        t.save("best.pt", done)
    run.barrier()
    return val


def train(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, step_fn: StepFn,
          total_steps: int, steps_per_epoch: int, validate_fn: Callable[[int], dict] | None = None,
          best_key: str = "", generators: Iterable[torch.Generator] = (), image_fn=None,
          state_extra: dict | None = None, average_decay: float = 0.0,
          average: WeightAverage | None = None) -> dict:
    """Run optimizer steps [start, total_steps); returns {'step', 'best', 'last_losses', 'val', 'seconds',
    'checkpoints' (names written by this call)}.

    step_fn(step) -> dict of scalar loss tensors with key 'loss' (the one optimised); the engine calls
    backward (through the AMP scaler), optimizer.step, scheduler.step at epoch ends, logs every term at
    cfg.log_interval (prefix 'train/', plus 'train/lr') and images from image_fn(step) -> {tag: (3,H,W)}
    at cfg.image_log_interval.  state_extra: {name: object with state_dict/load_state_dict} saved too.
    average_decay > 0 keeps a `stages.averaging.WeightAverage` of the weights: validation and
    best.pt / latest.pt / snapshots ('model') use it; 'train_model' holds the trained weights (images
    show the training step's own outputs).  `average` passes one made by the caller instead (e.g. one
    whose module step_fn runs as a teacher); it is updated after every step the same way.
    """
    cfg, spe = run.cfg, max(1, steps_per_epoch)
    if total_steps <= 0:
        raise ConfigError(f"{cfg.train_stage}: the schedule has no step (epochs={cfg.epochs}, max_steps={cfg.max_steps})")
    scaler = torch.amp.GradScaler("cuda", enabled=run.device.type == "cuda" and cfg.amp == "fp16")
    if average is None and average_decay > 0:
        average = WeightAverage(unwrap(model), average_decay)
    t = _Trainer(run, model, optimizer, scheduler, scaler, list(generators), state_extra or {}, spe, average)
    start = _resume(t) if run.resume_state is not None else 0
    if start >= total_steps:
        run.print(f"{run.out_dir / 'latest.pt'} is at step {start} >= {total_steps} steps asked: nothing to train")
    guard = _FiniteGuard(t, check_grads=not scaler.is_enabled())   # fp16's scaler skips inf steps itself
    bar = tqdm(total=total_steps, initial=start, disable=not (run.is_main and cfg.progress),
               dynamic_ncols=True, desc=f"{cfg.train_stage}")
    t0, losses, val = time.time(), {}, {}
    val_every = cfg.val_interval if cfg.val_interval > 0 else spe
    for step in range(start, total_steps):
        model.train()
        guard.before(step)
        losses = step_fn(step)
        guard.losses(losses)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        guard.gradients()
        scaler.step(optimizer)
        scaler.update()
        guard.weights()
        if t.average is not None:
            t.average.update(unwrap(model))
        done = step + 1
        if scheduler is not None and done % spe == 0:
            scheduler.step()
        _log(run, bar, done, start, total_steps, losses, optimizer.param_groups[0]["lr"], t0, spe)
        if run.is_main and image_fn is not None and cfg.image_log_interval > 0 and done % cfg.image_log_interval == 0:
            for tag, img in image_fn(step).items():
                run.writer.add_image(tag, img, done)
        bar.update(1)
        if done % val_every == 0 or done == total_steps:
            val = _validate(t, bar, validate_fn, best_key, step, done)
        elif t.due():
            t.save("latest.pt", done)
        if cfg.snapshot_interval > 0 and done % cfg.snapshot_interval == 0:
            t.snapshot(done)
    bar.close()
    return {"step": max(start, total_steps), "best": t.best, "val": val, "seconds": time.time() - t0,
            "checkpoints": sorted(t.written), "last_losses": {k: float(v.detach()) for k, v in losses.items()}}
