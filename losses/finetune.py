"""Self-supervised fine-tuning losses (spec 10.3-10.7): one real-batch loss parameterised by the
number of stages (R14), and the synthetic part (pretraining terms without shape/scale + collision).

Real part, stages s = 1..S, teacher = stage S detached:
* every stage: collision (6.3), render residual rho_s on the boxed crop, data -> mesh (X_all),
  part data -> mesh (X_part);
* stages s < S: distillation from the teacher (maps, PWE joints, MPE joints <- teacher PWE joints,
  MPE vertices), each x cfg.w_distill;
* stage S: pixel -> model H(J_S^uvd, sg(Q_S)) and model -> pixel H(Q_S[sel], sg(J_S^uvd)[sel]) on
  the reliable (sample, joint) pairs of 10.4.
With S = 1 this is the one-stage variant of 10.7 (the stage is its own teacher).

Mean teacher (`teacher_outputs`, cfg.finetune_teacher=average): the targets above, the hand box, the
segmentation and the model -> pixel gate come from the last stage of another network's outputs (the
moving average of the trained weights, run without gradient) instead of the trained network's own.
The idea: the trained weights swing from step to step and a network taught by its own detached
predictions keeps its own errors, while the average is steadier.  Measured on the mismatch set (three
seeds) it converged faster on one seed and ended far worse on the other two, so it is an option, not
the default (README, the self-supervision experiment).

Every term is returned separately (already weighted) under a name `real/s{stage}_{term}`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losses.fitting import (apply_hand_box, data_mesh_distance, gather_points, intersection_residual,
                            masked_mean, mm_to_nu, part_mesh_distance, render_residual, sample_indices)
from losses.huber import huber
from losses.pretrain import pretrain_losses, stage_mesh
from losses.reliability import select_reliable, select_reliable_relative
from losses.spheres import collision_loss, hand_spheres, segment_points
from models.dual_branch import NetConfig, decode_joints
from render.camera import crop_points_norm, uvd_norm_to_xyz_norm


@dataclass
class Teacher:
    """Targets and fitting inputs derived from the last stage, all without gradient.

    maps (B, 84, F, F); pixel_uvd / pixel_xyz (B, 21, 3) decoded PWE joints; joints_xyz (B, 21, 3),
    verts_xyz (B, V, 3) of the MPE branch; boxed (B, 1, S, S) crop restricted to the hand box;
    points_all (B, N, 3) + valid_all (B,); points_part (B, N, 3) + labels_part (B, N) + valid_part (B,).
    """
    maps: Tensor
    pixel_uvd: Tensor
    pixel_xyz: Tensor
    joints_xyz: Tensor
    verts_xyz: Tensor
    boxed: Tensor
    points_all: Tensor
    valid_all: Tensor
    points_part: Tensor
    labels_part: Tensor
    valid_part: Tensor


def box(depth: Tensor, joints_xyz: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor, cfg) -> Tensor:
    """Hand box (7.4) of `joints_xyz` with the configured margins."""
    return apply_hand_box(depth, joints_xyz, center, cube, K_crop, cfg.handbox_xy_margin_mm,
                          cfg.handbox_far_margin_mm, cfg.handbox_near_margin_mm, cfg.fg_threshold_nu)


def spheres(joints_xyz: Tensor, verts_xyz: Tensor, cube: Tensor, hand_model, cfg,
            centre_joints: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """66 spheres (6.2) with the configured palm-radius settings."""
    return hand_spheres(joints_xyz, verts_xyz, hand_model.regressor_support, cube, cfg.palm_radius_offset_mm,
                        cfg.palm_radius_min_mm, cfg.palm_radius_max_mm, centre_joints)


def collision_term(joints_xyz: Tensor, verts_xyz: Tensor, cube: Tensor, hand_model, cfg) -> Tensor:
    """Collision prior (6.3) on one stage's MPE output, gate converted per sample."""
    c, r = spheres(joints_xyz, verts_xyz, cube, hand_model, cfg)
    return collision_loss(c, r, mm_to_nu(cfg.collision_gate_mm, cube), cfg.collision_mode)[0]


@torch.no_grad()
def make_teacher(maps: Tensor, render, depth: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                 hand_model, cfg, generator: torch.Generator | None = None) -> Teacher:
    """Teacher targets, boxed crop, segmentation and the two point samples (10.3 pre-processing)."""
    maps = maps.detach()
    pixel_uvd = decode_joints(maps, depth, NetConfig.from_config(cfg))
    pixel_xyz = uvd_norm_to_xyz_norm(pixel_uvd, center, cube, K_crop)
    joints, verts = render.joints_xyz.detach(), render.verts_xyz.detach()
    boxed = box(depth, joints, center, cube, K_crop, cfg)
    points, fg = crop_points_norm(boxed, center, cube, K_crop, cfg.fg_threshold_nu)
    c, r = spheres(joints, verts, cube, hand_model, cfg, centre_joints=pixel_xyz)
    labels = segment_points(points, c, r, mask=fg)     # background pixels are never sampled
    idx_all, valid_all = sample_indices(fg, cfg.num_points, generator)
    idx_part, valid_part = sample_indices(fg & (labels >= 1), cfg.num_points, generator)
    labels_part = gather_points(labels, idx_part) * valid_part[:, None]
    return Teacher(maps, pixel_uvd, pixel_xyz, joints, verts, boxed, gather_points(points, idx_all), valid_all,
                   gather_points(points, idx_part), labels_part, valid_part)


def mesh_residuals(verts_xyz: Tensor, teacher: Teacher, hand_model, cfg) -> tuple[Tensor, Tensor, Tensor]:
    """Point-to-mesh residuals of a mesh (B, V, 3) against the teacher's point samples: data -> mesh
    (B,) nu^2 (trimmed mean), part data -> mesh (B, 15) nu^2 and the labelled points per part (B, 15)."""
    data = data_mesh_distance(teacher.points_all, verts_xyz, hand_model.faces, cfg.data_mesh_trim_fraction)
    part, counts = part_mesh_distance(teacher.points_part, teacher.labels_part, verts_xyz,
                                      hand_model.part_faces, hand_model.faces)
    return data, part, counts


def fitting_terms(render, boxed_render: Tensor, teacher: Teacher, cube: Tensor, hand_model,
                  cfg) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Model-fitting terms of one stage (weighted) and its raw residuals (for reliability).

    render: the stage's HandRender; boxed_render (B, 1, S, S) its rendering in the teacher's box.
    """
    rho = render_residual(teacher.boxed, boxed_render, cfg.fg_threshold_nu)
    data, part, counts = mesh_residuals(render.verts_xyz, teacher, hand_model, cfg)
    terms = {
        "collision": cfg.w_collision * collision_term(render.joints_xyz, render.verts_xyz, cube, hand_model, cfg),
        "render": cfg.w_render * rho.mean(),
        "data_mesh": cfg.w_data_mesh * masked_mean(data, teacher.valid_all),
        "part_mesh": cfg.w_part_mesh * masked_mean(part.mean(dim=1), teacher.valid_part),
    }
    return terms, {"data": data.detach(), "part": part.detach(), "counts": counts.detach()}


def distillation_terms(maps: Tensor, render, depth: Tensor, teacher: Teacher, cfg) -> dict[str, Tensor]:
    """Stage s < S learns from the detached last stage (10.3 stage-1 table), x cfg.w_distill."""
    d = cfg.huber_delta_nu
    w = cfg.w_distill
    pixel_uvd = decode_joints(maps, depth, NetConfig.from_config(cfg))
    return {
        "distill_maps": w * cfg.w_maps * huber(maps, teacher.maps, d),
        "distill_pwe_joints": w * cfg.w_pwe_joints * huber(pixel_uvd, teacher.pixel_uvd, d),
        "distill_mpe_joints": w * cfg.w_mpe_joints * huber(render.joints_xyz, teacher.pixel_xyz, d),
        "distill_mpe_verts": w * cfg.w_mpe_verts * huber(render.verts_xyz, teacher.verts_xyz, d),
    }


@dataclass
class GateInputs:
    """What the model -> pixel target and its reliability gate are read from, without gradient:
    model_uvd (B, 21, 3) the target joints; boxed_render (B, 1, S, S) that model's rendering in the
    teacher's box; residuals its fitting residuals ('data' (B,), 'part' (B, 15), 'counts' (B, 15))."""
    model_uvd: Tensor
    boxed_render: Tensor
    residuals: dict


def inter_branch_terms(maps: Tensor, render, depth: Tensor, teacher: Teacher, gate: GateInputs,
                       cube: Tensor, cfg) -> tuple[dict[str, Tensor], Tensor]:
    """Pixel -> model on all joints and model -> pixel on the reliable ones (10.3 stage-2 table, 10.4).

    Returns the weighted terms and the selection (B, 21) bool; gate.residuals gains 'selected_samples'
    and 'depth_residual' (for logging).
    """
    d = cfg.huber_delta_nu
    pixel_uvd = decode_joints(maps, depth, NetConfig.from_config(cfg))
    residuals = gate.residuals
    eps_depth = intersection_residual(teacher.boxed, gate.boxed_render.detach(), cfg.fg_threshold_nu)
    args = (eps_depth, residuals["data"], residuals["part"], residuals["counts"], teacher.valid_all, cube,
            cfg.reliability_depth_mm, cfg.reliability_fit_rms_mm)
    if cfg.reliability_mode == "relative":
        sel, samples = select_reliable_relative(*args, cfg.reliability_quantile, cfg.reliability_ceiling,
                                                cfg.reliability_min_bone_points)
    else:
        sel = select_reliable(*args, cfg.reliability_min_bone_points)
        samples = sel.any(dim=1)
    residuals.update(selected_samples=samples, depth_residual=eps_depth)
    if sel.any():
        m2p = huber(pixel_uvd[sel], gate.model_uvd.detach()[sel], d)
    else:
        m2p = pixel_uvd.sum() * 0.0
    terms = {"pixel_to_model": cfg.w_pixel_to_model * huber(render.joints_uvd, teacher.pixel_uvd, d),
             "model_to_pixel": cfg.w_model_to_pixel * m2p}
    return terms, sel


@torch.no_grad()
def teacher_gate(render, rendered: Tensor, teacher: Teacher, center: Tensor, cube: Tensor, K_crop: Tensor,
                 hand_model, cfg) -> GateInputs:
    """GateInputs of the teacher's own mesh (render: its HandRender, rendered its frame-blanked depth)."""
    boxed = box(rendered, teacher.joints_xyz, center, cube, K_crop, cfg)
    data, part, counts = mesh_residuals(render.verts_xyz, teacher, hand_model, cfg)
    return GateInputs(render.joints_uvd, boxed, {"data": data, "part": part, "counts": counts})


def reliability_stats(sel: Tensor, residuals: dict[str, Tensor], valid: Tensor, cube: Tensor) -> dict[str, float]:
    """What the model -> pixel gate let through (logged every step): fractions of samples and of
    (sample, joint) pairs selected, and the batch medians of the two sample residuals in mm."""
    half = 0.5 * cube[:, 2]
    v = valid if bool(valid.any()) else torch.ones_like(valid)
    return {"reliable_sample_fraction": float(residuals["selected_samples"].float().mean()),
            "reliable_joint_fraction": float(sel.float().mean()),
            "depth_residual_mm_median": float((residuals["depth_residual"] * half)[v].median()),
            "fit_rms_mm_median": float((residuals["data"].clamp_min(0).sqrt() * half)[v].median())}


def stage_render(out, renderer, center: Tensor, cube: Tensor, K_crop: Tensor):
    """The stage's rendering: reuse the one made in the forward pass (R11) or render its params."""
    return out.render if out.render is not None else renderer.render_params(out.params, center, cube, K_crop)


def blank_outside(depth: Tensor, frame_mask: Tensor | None) -> Tensor:
    """Rendered depth (B, 1, S, S) set to background (1) outside the sensor frame (B, S, S)."""
    return depth if frame_mask is None else torch.where(frame_mask[:, None], depth, torch.ones_like(depth))


def real_losses(outputs: list, depth: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor, renderer,
                hand_model, cfg, frame_mask: Tensor | None = None, generator: torch.Generator | None = None,
                teacher_outputs: list | None = None) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Self-supervised loss of one unlabeled real batch for any number of stages S = len(outputs).

    outputs: list[StageOutput]; depth (B, 1, S, S) real crop; center, cube (B, 3); K_crop (B, 3, 3);
    frame_mask (B, S, S) bool: crop pixels inside the sensor frame (renderings are blanked outside);
    teacher_outputs: list[StageOutput] of the mean teacher on the same batch (None: the last stage of
    `outputs` teaches, the original).
    Returns (weighted terms by name, statistics for logging).
    """
    renders = [stage_render(o, renderer, center, cube, K_crop) for o in outputs]
    rendered = [blank_outside(r.depth, frame_mask) for r in renders]
    last = len(outputs) - 1
    if teacher_outputs is None:
        t_maps, t_render = outputs[last].maps, renders[last]
    else:
        t_maps, t_render = teacher_outputs[-1].maps, stage_render(teacher_outputs[-1], renderer, center, cube, K_crop)
    teacher = make_teacher(t_maps, t_render, depth, center, cube, K_crop, hand_model, cfg, generator)
    losses, stats = {}, {}
    for s, (out, render, depth_s) in enumerate(zip(outputs, renders, rendered)):
        boxed_render = box(depth_s, teacher.joints_xyz, center, cube, K_crop, cfg)
        terms, residuals = fitting_terms(render, boxed_render, teacher, cube, hand_model, cfg)
        if s < last:
            terms.update(distillation_terms(out.maps, render, depth, teacher, cfg))
        else:
            if teacher_outputs is None:
                gate = GateInputs(render.joints_uvd.detach(), boxed_render, residuals)
            else:
                gate = teacher_gate(t_render, blank_outside(t_render.depth, frame_mask), teacher, center, cube,
                                    K_crop, hand_model, cfg)
            inter, sel = inter_branch_terms(out.maps, render, depth, teacher, gate, cube, cfg)
            terms.update(inter)
            stats.update(reliability_stats(sel, gate.residuals, teacher.valid_all, cube))
        losses.update({f"real/s{s + 1}_{k}": v for k, v in terms.items()})
    stats["valid_fraction"] = float(teacher.valid_all.float().mean())
    return losses, stats


def synthetic_losses(outputs: list, batch: dict, hand_model, cfg) -> dict[str, Tensor]:
    """Synthetic part of fine-tuning (10.3): the pretraining terms without shape prior and scale
    (targets encoded/decoded with the clean crop) plus the collision prior of every stage.

    batch: the synthetic sample dict (clean, joints_uvd, joints_xyz, verts_xyz, cube).
    Returns weighted terms named `synth/s{stage}/{term}`.
    """
    terms = pretrain_losses(outputs, batch, batch["clean"], hand_model, cfg, priors=False)
    for s, out in enumerate(outputs, start=1):
        verts, joints = stage_mesh(out, hand_model)
        terms[f"s{s}/collision"] = cfg.w_collision * collision_term(joints.float(), verts.float(), batch["cube"],
                                                                    hand_model, cfg)
    return {f"synth/{k}": v for k, v in terms.items()}
