"""train_stage=supervised: the network on real labelled crops, the upper reference of the
self-supervision experiment.

The same network and losses as pretraining (`losses.pretrain.pretrain_losses`) on
build_dataset(cfg, 'train', labels=True); the dataset's joints map to network joints through
JOINT_SETS[...].to_network; no vertex term; validation (mean joint error, mm) on the 'val' split;
best.pt by the last stage's PWE error.

Dataset joints without a network counterpart (NYU's PALM_2, PALM_3) are predicted at evaluation by
the fixed palm map of `models.palm_landmarks` (a linear combination of the 21 network joints); they
are trained here through that same map, with the joint weights (w_pwe_joints on the pixel branch's
decoded joints, w_mpe_joints on the model branch's), so that the reference learns every joint it is
scored on — the wrist and MCP joints that feed the map included.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from config import Config
from datasets.joints import JOINT_SETS
from datasets.nyu import nyu14_from_network
from losses.huber import huber
from losses.pretrain import pretrain_losses, stage_mesh
from models.dual_branch import NetConfig, decode_joints
from models.palm_landmarks import build_palm_landmarks
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
            "joints_xyz": x["joints_xyz"][:, ids_ds], "net_ids": net_ids,
            "all_joints_uvd": x["joints_uvd"], "all_joints_xyz": x["joints_xyz"]}


def mapped_joint_terms(outs: list, x: dict, palm_map: np.ndarray, label_ids: list[int], hand_model,
                       cfg: Config) -> dict[str, Tensor]:
    """Terms of the NYU joints that the evaluator predicts from the palm map, per stage.

    The stage's 21 joints become NYU's 14 exactly as at evaluation (`datasets.nyu.nyu14_from_network`;
    the map's rows sum to 1, so it commutes with the crop normalization and applies to decoded uvd and
    to xyz alike); label_ids: the mapped columns, compared with the batch's full joints_uvd /
    joints_xyz (B, 14, 3) nu (non-finite labels = absent, left out).
    Returns {'s{s}/pwe_mapped', 's{s}/mpe_mapped'}.
    """
    d, terms = cfg.huber_delta_nu, {}
    uvd_t, xyz_t = x["all_joints_uvd"][:, label_ids], x["all_joints_xyz"][:, label_ids]
    known = torch.isfinite(uvd_t).all(-1) & torch.isfinite(xyz_t).all(-1)     # (B, L): labels present
    for s, out in enumerate(outs, start=1):
        uvd = nyu14_from_network(decode_joints(out.maps.float(), x["ref"], NetConfig.from_config(cfg)), palm_map)
        xyz = nyu14_from_network(stage_mesh(out, hand_model)[1].float(), palm_map)
        uvd, xyz = uvd[:, label_ids], xyz[:, label_ids]
        if bool(known.any()):
            pwe, mpe = huber(uvd[known], uvd_t[known], d), huber(xyz[known], xyz_t[known], d)
        else:
            pwe = mpe = 0.0 * (uvd.sum() + xyz.sum())
        terms[f"s{s}/pwe_mapped"] = cfg.w_pwe_joints * pwe
        terms[f"s{s}/mpe_mapped"] = cfg.w_mpe_joints * mpe
    return terms


def mapped_joints(cfg: Config, jset, hand_model) -> tuple[list[int], np.ndarray | None]:
    """Dataset joints without a network twin that the evaluator predicts by the palm map (NYU's PALM_2,
    PALM_3) and that map (3, 21); ([], None) for other joint sets."""
    missing = [i for i, k in enumerate(jset.to_network) if k is None]
    if jset.name != "nyu" or not missing:
        return [], None
    return missing, build_palm_landmarks(hand_model).palm_map


def run(cfg: Config) -> dict:
    """Train on the real labels; returns the engine's summary plus out_dir."""
    r = engine.setup(cfg)
    dev, B = r.device, cfg.batch_size
    jset = JOINT_SETS[cfg.preset().joint_set]
    ids_ds = [i for i, k in enumerate(jset.to_network) if k is not None]
    net_ids = [jset.to_network[i] for i in ids_ds]
    hand_model, renderer, model = build_network(cfg, r, "supervised")
    mapped_ids, palm_map = mapped_joints(cfg, jset, hand_model)
    train_set, val_set, spe = real_splits(cfg, r, "supervised", labels=True)
    total = schedule(cfg, spe)
    r.print(f"supervised: {len(train_set)} labelled {cfg.dataset} training frames ({len(net_ids)} of "
            f"{jset.num_joints} {jset.name} joints have a network counterpart), {len(val_set)} held out, "
            f"{spe} steps per epoch, {total} steps"
            + (f"; dataset joints {mapped_ids} trained through the palm map" if mapped_ids else ""))
    opt, sched = make_optimizer(model, cfg)
    stream = BatchStream(train_set, r, B, spe)
    images = ImageLog("supervised", cfg, renderer)

    def step_fn(step: int) -> dict[str, Tensor]:
        x = real_batch(stream.batch(step), ids_ds, net_ids, dev)
        with r.autocast():
            outs = model(x["net_in"], x["center"], x["cube"], x["K_crop"])
        terms = pretrain_losses(outs, x, x["ref"], hand_model, cfg, joint_ids=tuple(net_ids))
        if mapped_ids:
            terms.update(mapped_joint_terms(outs, x, palm_map, mapped_ids, hand_model, cfg))
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
