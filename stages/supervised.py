"""train_stage=supervised: the network on real labelled crops, the upper reference of the
self-supervision experiment.

The same network and losses as pretraining (`losses.pretrain.pretrain_losses`) on
build_dataset(cfg, 'train', labels=True); the dataset's joints map to network joints through
JOINT_SETS[...].to_network (joints without a counterpart are skipped); no vertex term; validation
(mean joint error, mm) on the 'val' split; best.pt by the last stage's PWE error.
"""
from __future__ import annotations

import torch
from torch import Tensor

from config import Config
from datasets.joints import JOINT_SETS
from losses.pretrain import pretrain_losses
from render import camera
from stages import engine
from stages.common import build_network, finish, make_optimizer, real_splits, schedule, validate
from stages.images import ImageLog
from stages.loaders import BatchStream


def real_batch(batch: dict, ids_ds: list[int], net_ids: list[int], device) -> dict:
    """Move a labelled real batch to the device; targets restricted to joints with a network twin."""
    x = {k: batch[k].to(device) for k in ("depth", "center", "cube", "M", "K", "joints_uvd", "joints_xyz")}
    return {"net_in": x["depth"], "ref": x["depth"], "center": x["center"], "cube": x["cube"],
            "K_crop": camera.crop_intrinsics(x["K"], x["M"]), "joints_uvd": x["joints_uvd"][:, ids_ds],
            "joints_xyz": x["joints_xyz"][:, ids_ds], "net_ids": net_ids}


def run(cfg: Config) -> dict:
    """Train on the real labels; returns the engine's summary plus out_dir."""
    r = engine.setup(cfg)
    dev, B = r.device, cfg.batch_size
    jset = JOINT_SETS[cfg.preset().joint_set]
    ids_ds = [i for i, k in enumerate(jset.to_network) if k is not None]
    net_ids = [jset.to_network[i] for i in ids_ds]
    hand_model, renderer, model = build_network(cfg, r, "supervised")
    train_set, val_set, spe = real_splits(cfg, r, "supervised", labels=True)
    total = schedule(cfg, spe)
    r.print(f"supervised: {len(train_set)} labelled {cfg.dataset} training frames ({len(net_ids)} of "
            f"{jset.num_joints} {jset.name} joints have a network counterpart), {len(val_set)} held out, "
            f"{spe} steps per epoch, {total} steps")
    opt, sched = make_optimizer(model, cfg)
    stream = BatchStream(train_set, r, B, spe)
    images = ImageLog("supervised", cfg, renderer)

    def step_fn(step: int) -> dict[str, Tensor]:
        x = real_batch(stream.batch(step), ids_ds, net_ids, dev)
        with r.autocast():
            outs = model(x["net_in"], x["center"], x["cube"], x["K_crop"])
        terms = pretrain_losses(outs, x, x["ref"], hand_model, cfg, joint_ids=tuple(net_ids))
        images.keep(outs, x["net_in"], x["ref"], x["center"], x["cube"], x["K_crop"])
        return {"loss": sum(terms.values()), **terms}

    validate_fn = None
    if r.is_main and len(val_set) > 0:
        loader = torch.utils.data.DataLoader(val_set, batch_size=B, shuffle=False, num_workers=cfg.num_workers)
        validate_fn = lambda step: validate(  # noqa: E731
            engine.unwrap(model), (real_batch(b, ids_ds, net_ids, dev) for b in loader), hand_model, cfg, r)
    result = engine.train(r, model, opt, sched, step_fn, total, spe, validate_fn=validate_fn,
                          best_key=f"s{cfg.stage_num}_pwe_mm", image_fn=images)
    return finish(r, result)
