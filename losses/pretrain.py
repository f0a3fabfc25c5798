"""Supervised losses of pretraining (spec 10.2), summed over stages; also used by train_stage=supervised
(real labels: a subset of the 21 joints, no vertices) and by the synthetic part of fine-tuning.

Per stage s (names 's{s}/<term>', every value already weighted):
    maps          w_maps        * H(M_s[ch(J)], encode(J*_uvd, ref))      ref = clean crop (synthetic)
    pwe_joints    w_pwe_joints  * H(Q_s[J], J*_uvd),  Q_s = decode(M_s, ref)
    mpe_joints    w_mpe_joints  * H(J_s[J], J*_xyz)
    mpe_verts     w_mpe_verts   * H(V_s, V*_xyz)                           (when target vertices exist)
    shape_prior   w_shape_prior * mean(beta_s^2)                           (priors=True)
    scale         w_scale       * mean(max(-s_s, 0))                       (priors=True)
J = `joint_ids`: the network joints that have targets (all 21 for synthetic data).  MANO joints and
vertices of a stage come from its rendering when the forward pass made one (R11), else from
hand_model.network_space(params).
"""
from __future__ import annotations

import torch
from torch import Tensor

from config import Config
from hand.params import SCALE, SHAPE
from hand.skeleton import NUM_JOINTS
from losses.huber import huber
from models.dual_branch import NetConfig, decode_joints, encode_joints

ALL_JOINTS = tuple(range(NUM_JOINTS))


def map_channels(joint_ids: tuple[int, ...], num_joints: int = NUM_JOINTS) -> list[int]:
    """Map channels of the given joints: offsets 3k, 3k+1, 3k+2, then heats 3J + k."""
    return [3 * k + a for k in joint_ids for a in range(3)] + [3 * num_joints + k for k in joint_ids]


def stage_mesh(out, hand_model) -> tuple[Tensor, Tensor]:
    """MANO vertices (B, V, 3) and joints (B, 21, 3) in normalized xyz of a StageOutput."""
    if out.render is not None:
        return out.render.verts_xyz, out.render.joints_xyz
    with torch.autocast(out.params.device.type, enabled=False):
        return hand_model.network_space(out.params.float())


def target_maps(ref_depth: Tensor, joints_uvd: Tensor, joint_ids: tuple[int, ...], cfg: Config) -> Tensor:
    """Dense-map targets (B, 84, F, F) of the labelled joints (B, len(joint_ids), 3); channels of
    joints without a target hold a copy of the first labelled joint and are never compared."""
    ids = list(joint_ids)
    full = joints_uvd
    if ids != list(ALL_JOINTS):
        full = joints_uvd[:, :1].expand(-1, NUM_JOINTS, 3).clone()
        full[:, ids] = joints_uvd
    return encode_joints(full, ref_depth, NetConfig.from_config(cfg))


def pwe_terms(maps: Tensor, target: Tensor, ref_depth: Tensor, joints_uvd: Tensor, joint_ids: tuple[int, ...],
              cfg: Config) -> dict[str, Tensor]:
    """Dense-map and decoded-joint terms; maps, target (B, 84, F, F), joints_uvd (B, len(joint_ids), 3)."""
    maps = maps.float()
    ch = map_channels(joint_ids)
    pred_uvd = decode_joints(maps, ref_depth, NetConfig.from_config(cfg))[:, list(joint_ids)]
    return {"maps": cfg.w_maps * huber(maps[:, ch], target[:, ch], cfg.huber_delta_nu),
            "pwe_joints": cfg.w_pwe_joints * huber(pred_uvd, joints_uvd, cfg.huber_delta_nu)}


def prior_terms(params: Tensor, cfg: Config) -> dict[str, Tensor]:
    """Shape prior mean(beta^2) and positive-scale penalty mean(max(-s, 0)) of params (B, 62)."""
    params = params.float()
    return {"shape_prior": cfg.w_shape_prior * params[:, SHAPE].square().mean(),
            "scale": cfg.w_scale * torch.relu(-params[:, SCALE]).mean()}


def pretrain_losses(outs: list, targets: dict[str, Tensor], ref_depth: Tensor, hand_model, cfg: Config,
                    joint_ids: tuple[int, ...] = ALL_JOINTS, priors: bool = True) -> dict[str, Tensor]:
    """All weighted terms, summed over nothing: {'s1/maps': ..., 's2/mpe_verts': ...}.

    outs: list of StageOutput; targets: joints_uvd, joints_xyz (B, len(joint_ids), 3) nu and optional
    verts_xyz (B, V, 3); ref_depth (B, 1, S, S): the clean crop (synthetic) or the input crop (real).
    """
    d, ids = cfg.huber_delta_nu, list(joint_ids)
    terms = {}
    target = target_maps(ref_depth, targets["joints_uvd"], joint_ids, cfg)      # once for all stages
    for s, out in enumerate(outs, start=1):
        t = pwe_terms(out.maps, target, ref_depth, targets["joints_uvd"], joint_ids, cfg)
        verts, joints = stage_mesh(out, hand_model)
        t["mpe_joints"] = cfg.w_mpe_joints * huber(joints[:, ids], targets["joints_xyz"], d)
        if targets.get("verts_xyz") is not None:
            t["mpe_verts"] = cfg.w_mpe_verts * huber(verts, targets["verts_xyz"], d)
        if priors:
            t.update(prior_terms(out.params, cfg))
        terms.update({f"s{s}/{k}": v for k, v in t.items()})
    return terms
