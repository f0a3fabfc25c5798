"""The stages' toolkit: what pretrain, supervised, finetune and transfer build the same way.

* `build_parts` / `build_network`: hand model + renderer + dual-branch network (+ initial weights from
  cfg.load_model, checked against the run's hand model) on the run's device.
* `ensure_real_data`, `real_splits`: the real dataset's train / val splits and steps per epoch.
* `load_transfer`, `network_input`: the frozen translator and the crop the network sees.
* `schedule`, `make_optimizer`: total steps and AdamW + per-epoch step decay.
* `joint_errors_mm`, `validate`: labelled validation (synthetic or real labels).
* `finish`: the run summary (only files that exist are announced) and teardown.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from config import Config, ConfigError
from datasets import build_dataset
from datasets.simreal import ensure_simreal
from losses.pretrain import stage_mesh
from models.dual_branch import DualBranchNet, NetConfig, decode_joints
from models.mano import build_hand_model
from models.translator import load_translator, translate
from render import camera
from render.hand_renderer import HandRenderer
from stages import engine
from stages.checkpoints import load_weights


def build_parts(cfg: Config, device: torch.device):
    """Hand model, renderer and network on `device`: (hand_model, renderer, net)."""
    hand_model = build_hand_model(cfg).to(device)
    renderer = HandRenderer(hand_model)
    return hand_model, renderer, DualBranchNet(NetConfig.from_config(cfg), renderer).to(device)


def build_network(cfg: Config, r: engine.Run, stage: str):
    """build_parts on the run's device, recorded in r.hand_model, cfg.load_model's weights (checked to
    come from the same hand model; warned when a stage that expects them has none) and the (possibly
    DDP-wrapped) training model: (hand_model, renderer, model)."""
    hand_model, renderer, net = build_parts(cfg, r.device)
    r.hand_model = hand_model.identity()
    if cfg.load_model:
        load_weights(net, cfg.load_model, r.hand_model, cfg.hand_model_check, log=r.print)
    elif stage == "finetune":
        r.print("warning: load_model is empty: fine-tuning starts from random weights, not from pretraining")
    return hand_model, renderer, engine.wrap_model(net, r)


def ensure_real_data(cfg: Config, r: engine.Run) -> None:
    """Generate the simreal set on first use (main process only; the others wait); other datasets
    are read as they are."""
    if cfg.dataset == "simreal":
        if r.is_main:
            ensure_simreal(cfg)
        r.barrier()


def real_splits(cfg: Config, r: engine.Run, stage: str, labels: bool):
    """(train set, val set, steps per epoch) of the real dataset for `stage`; generates the simreal set
    on first use; a train split smaller than one batch per process is a clear error."""
    ensure_real_data(cfg, r)
    train_set = build_dataset(cfg, "train", labels=labels)
    val_set = build_dataset(cfg, "val", labels=labels)
    spe = len(train_set) // (cfg.batch_size * r.world_size)
    if spe == 0:
        raise ConfigError(f"{stage}: {len(train_set)} real training frames are fewer than one batch of "
                         f"{cfg.batch_size} per process; lower batch_size")
    return train_set, val_set, spe


def load_transfer(cfg: Config, run: engine.Run):
    """The frozen translator (or None, said in the log)."""
    if not cfg.transfer_net:
        run.print("transfer_net not set: training runs on untranslated synthetic crops")
        return None
    run.print(f"synthetic crops are translated by {cfg.transfer_net}")
    return load_translator(cfg.transfer_net, run.device)


def network_input(batch: dict, translator, cfg: Config) -> Tensor:
    """The crop the network sees: the translated clean crop, or the clean crop itself."""
    if translator is None:
        return batch["clean"]
    return translate(translator, batch["clean"], cfg.fg_threshold_nu if cfg.gan_snap_background else None)


def schedule(cfg: Config, steps_per_epoch: int) -> int:
    """Total optimizer steps: cfg.epochs epochs, or cfg.max_steps when that is set (steps are steps:
    max_steps may be longer than the epochs, the schedule then runs on past them)."""
    return cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch


def make_optimizer(model, cfg: Config):
    """AdamW(lr, weight_decay) and StepLR(lr_step_epochs, lr_gamma), stepped once per epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)


def joint_errors_mm(outs: list, ref_depth: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                    gt_xyz_n: Tensor, net_ids: list[int], hand_model, cfg: Config) -> dict[str, Tensor]:
    """Per-(frame, joint) Euclidean errors (B, len(net_ids)) in mm of each stage and branch."""
    gt = camera.norm_to_xyz(gt_xyz_n.float(), center, cube)
    errs, net_cfg = {}, NetConfig.from_config(cfg)
    for s, out in enumerate(outs, start=1):
        pwe = camera.uvd_norm_to_xyz(decode_joints(out.maps, ref_depth, net_cfg), center, cube, K_crop)[:, net_ids]
        mpe = camera.norm_to_xyz(stage_mesh(out, hand_model)[1].float(), center, cube)[:, net_ids]
        errs[f"s{s}_pwe_mm"] = (pwe - gt).norm(dim=-1)
        errs[f"s{s}_mpe_mm"] = (mpe - gt).norm(dim=-1)
    return errs


@torch.no_grad()
def validate(model, batches, hand_model, cfg: Config, run: engine.Run) -> dict[str, float]:
    """Mean joint error (mm) over all frames x joints of `batches` (dicts with net_in, ref, center,
    cube, K_crop, joints_xyz and the network joint ids)."""
    model.eval()
    sums, count = {}, 0
    for b in batches:
        with run.autocast():
            outs = model(b["net_in"], b["center"], b["cube"], b["K_crop"])
        errs = joint_errors_mm(outs, b["ref"], b["center"], b["cube"], b["K_crop"], b["joints_xyz"],
                               b["net_ids"], hand_model, cfg)
        for k, v in errs.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
        count += errs["s1_pwe_mm"].numel()
    model.train()
    return {k: v / max(count, 1) for k, v in sums.items()}


def finish(r: engine.Run, result: dict) -> dict:
    """Announce what the run wrote (files that exist), close it, return the summary with out_dir."""
    result["out_dir"] = str(r.out_dir)
    names = [n for n in ("latest.pt", "best.pt") if (Path(r.out_dir) / n).is_file()]
    ckpts = " and ".join(f"{r.out_dir}/{n}" for n in names) if names else "none written"
    r.print(f"outputs: checkpoints {ckpts}, config {r.out_dir}/config.yaml, TensorBoard logs {r.out_dir}/tb "
            f"(tensorboard --logdir {r.out_dir}/tb)")
    engine.teardown(r)
    return result
