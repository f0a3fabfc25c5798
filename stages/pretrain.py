"""train_stage=pretrain: the network on synthetic hands (spec 10.2).

Every step renders one synthetic batch (no view rotation unless synth_rotation says so), translated
by the frozen transfer net when cfg.transfer_net is set (the clean crop stays the reference for
target encoding and decoding), and minimises `losses.pretrain.pretrain_losses` summed over the
stages with AdamW + StepLR (one epoch = cfg.synth_epoch_size samples).  Validation: mean 3D joint
error (mm) per stage and branch on cfg.val_size held-out synthetic samples (fixed seed); best.pt by
the last stage's PWE error.
"""
from __future__ import annotations

import torch
from torch import Tensor

from config import Config
from datasets.synthetic import SyntheticHands
from losses.pretrain import ALL_JOINTS, pretrain_losses
from render import camera
from stages import engine
from stages.common import build_network, finish, load_transfer, make_optimizer, network_input, schedule, validate
from stages.images import ImageLog

VAL_SEED_OFFSET = 1_000_003       # the held-out synthetic validation set's generator seed = cfg.seed + this


def pretrain_rotation(cfg: Config) -> str:
    """View rotation of the pretraining stream: 'auto' = none (spec 10.2)."""
    return "none" if cfg.synth_rotation == "auto" else cfg.synth_rotation


def synthetic_val_set(synth, translator, cfg: Config, device) -> list[dict]:
    """cfg.val_size held-out synthetic samples (own seed), rendered once."""
    gen = torch.Generator().manual_seed(cfg.seed + VAL_SEED_OFFSET)
    out, left = [], cfg.val_size
    while left > 0:
        n = min(cfg.batch_size, left)
        s = synth.batch(n, gen, device)
        out.append({"net_in": network_input(s, translator, cfg), "ref": s["clean"], "center": s["center"],
                    "cube": s["cube"], "K_crop": camera.crop_intrinsics(s["K"], s["M"]),
                    "joints_xyz": s["joints_xyz"], "net_ids": list(ALL_JOINTS)})
        left -= n
    return out


def run(cfg: Config) -> dict:
    """Pretrain on synthetic hands; returns the engine's summary plus out_dir."""
    r = engine.setup(cfg)
    dev, B = r.device, cfg.batch_size
    hand_model, renderer, model = build_network(cfg, r, "pretrain")
    translator = load_transfer(cfg, r)
    synth = SyntheticHands(cfg, hand_model, renderer, pretrain_rotation(cfg))
    val_set = synthetic_val_set(synth, translator, cfg, dev) if r.is_main and cfg.val_size > 0 else []
    spe = max(1, cfg.synth_epoch_size // (B * r.world_size))
    total = schedule(cfg, spe)
    r.print(f"pretrain: net={cfg.net}, {cfg.stage_num} stage(s), batch {B} x {r.world_size} process(es), "
            f"{spe} steps per epoch, {total} steps, {cfg.val_size} held-out synthetic samples, "
            f"hand model: {hand_model.name} {r.hand_model['fingerprint']}")
    opt, sched = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(r.seed)
    images = ImageLog("pretrain", cfg, renderer)

    def step_fn(step: int) -> dict[str, Tensor]:
        s = synth.batch(B, gen, dev)
        net_in = network_input(s, translator, cfg)
        K_crop = camera.crop_intrinsics(s["K"], s["M"])
        with r.autocast():
            outs = model(net_in, s["center"], s["cube"], K_crop)
        terms = pretrain_losses(outs, s, s["clean"], hand_model, cfg)
        images.keep(outs, net_in, s["clean"], s["center"], s["cube"], K_crop)
        return {"loss": sum(terms.values()), **terms}

    validate_fn = (lambda step: validate(engine.unwrap(model), val_set, hand_model, cfg, r)) if val_set else None
    result = engine.train(r, model, opt, sched, step_fn, total, spe, validate_fn=validate_fn,
                          best_key=f"s{cfg.stage_num}_pwe_mm", generators=[gen], image_fn=images)
    return finish(r, result)
