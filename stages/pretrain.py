"""train_stage=pretrain (synthetic hands, spec 10.2) and train_stage=supervised (real labels).

pretrain: every step renders one synthetic batch (no view rotation unless synth_rotation says so),
translated by the frozen transfer net when cfg.transfer_net is set (the clean crop stays the
reference for target encoding and decoding), and minimises `losses.pretrain.pretrain_losses` summed
over the stages with AdamW + StepLR (one epoch = cfg.synth_epoch_size samples).  Validation: mean 3D
joint error (mm) per stage and branch on cfg.val_size held-out synthetic samples (fixed seed);
best.pt by the last stage's PWE error.

supervised: the same network and losses on real labelled crops (build_dataset(cfg, 'train',
labels=True)); the dataset's joints map to network joints through JOINT_SETS[...].to_network (joints
without a counterpart are skipped); no vertex term; validation on the 'val' split.  The upper
reference of the self-supervised experiment.
"""
from __future__ import annotations

import torch
from torch import Tensor

from config import Config
from datasets import build_dataset
from datasets.joints import JOINT_SETS
from losses.pretrain import ALL_JOINTS, pretrain_losses, stage_mesh
from models.dual_branch import DualBranchNet, decode_joints
from render import camera
from stages import engine

VAL_SEED_OFFSET = 1_000_003       # the held-out synthetic validation set's generator seed = cfg.seed + this


def pretrain_rotation(cfg: Config) -> str:
    """View rotation of the pretraining stream: 'auto' = none (spec 10.2)."""
    return "none" if cfg.synth_rotation == "auto" else cfg.synth_rotation


def build_parts(cfg: Config, device: torch.device):
    """Hand model, renderer and network on `device`."""
    from models.mano import build_hand_model
    from render.hand_renderer import HandRenderer
    hand_model = build_hand_model(cfg).to(device)
    renderer = HandRenderer(hand_model)
    return hand_model, renderer, DualBranchNet(cfg, renderer).to(device)


def build_network(cfg: Config, r: engine.Run, stage: str):
    """build_parts on the run's device, cfg.load_model's weights (warned when a stage that expects
    them has none) and the (possibly DDP-wrapped) training model: (hand_model, renderer, model)."""
    hand_model, renderer, net = build_parts(cfg, r.device)
    if cfg.load_model:
        engine.load_weights(net, cfg.load_model, r)
    elif stage == "finetune":
        r.print("warning: load_model is empty: fine-tuning starts from random weights, not from pretraining")
    return hand_model, renderer, engine.wrap_model(net, r)


def ensure_real_data(cfg: Config, r: engine.Run) -> None:
    """Generate the simreal set on first use (main process only; the others wait); other datasets
    are read as they are."""
    if cfg.dataset == "simreal":
        from datasets.simreal import ensure_simreal
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
        raise ValueError(f"{stage}: {len(train_set)} real training frames are fewer than one batch of "
                         f"{cfg.batch_size} per process; lower batch_size")
    return train_set, val_set, spe


def load_transfer(cfg: Config, run: engine.Run):
    """The frozen translator (or None, said in the log)."""
    if not cfg.transfer_net:
        run.print("transfer_net not set: training runs on untranslated synthetic crops")
        return None
    from models.translator import load_translator
    run.print(f"synthetic crops are translated by {cfg.transfer_net}")
    return load_translator(cfg.transfer_net, run.device)


def network_input(batch: dict, translator, cfg: Config) -> Tensor:
    """The crop the network sees: the translated clean crop, or the clean crop itself."""
    if translator is None:
        return batch["clean"]
    from models.translator import translate
    return translate(translator, batch["clean"], cfg.fg_threshold_nu if cfg.gan_snap_background else None)


def joint_errors_mm(outs: list, ref_depth: Tensor, center: Tensor, cube: Tensor, K_crop: Tensor,
                    gt_xyz_n: Tensor, net_ids: list[int], hand_model, cfg: Config) -> dict[str, Tensor]:
    """Per-(frame, joint) Euclidean errors (B, len(net_ids)) in mm of each stage and branch."""
    gt = camera.norm_to_xyz(gt_xyz_n.float(), center, cube)
    errs = {}
    for s, out in enumerate(outs, start=1):
        pwe = camera.uvd_norm_to_xyz(decode_joints(out.maps, ref_depth, cfg), center, cube, K_crop)[:, net_ids]
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


def schedule(cfg: Config, steps_per_epoch: int) -> int:
    total = cfg.epochs * steps_per_epoch
    return min(cfg.max_steps, total) if cfg.max_steps > 0 else total


def make_optimizer(model, cfg: Config):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)


def keep_for_images(last: dict, outs: list, net_in: Tensor, ref: Tensor) -> None:
    """Remember (detached) what the image log of this step shows."""
    r = outs[0].render
    last.update(net_in=net_in.detach(), ref=ref.detach(), maps=outs[-1].maps.detach(),
                rendered=r.depth.detach() if r is not None else None)


def image_fn_for(last: dict, cfg: Config):
    """Input crop with the last stage's decoded PWE joints | stage-1 rendering (stage 2 input)."""
    def image_fn(step: int) -> dict[str, Tensor]:
        joints = decode_joints(last["maps"], last["ref"], cfg)
        return {f"{cfg.train_stage}/input_joints_render": engine.image_grid(last["net_in"], last["rendered"], joints)}
    return image_fn


def finish(r: engine.Run, result: dict) -> dict:
    result["out_dir"] = str(r.out_dir)
    r.print(f"outputs: checkpoints {r.out_dir}/latest.pt and best.pt, config {r.out_dir}/config.yaml, "
            f"TensorBoard logs {r.out_dir}/tb (tensorboard --logdir {r.out_dir}/tb)")
    engine.teardown(r)
    return result


def run_pretrain(cfg: Config) -> dict:
    from datasets.synthetic import SyntheticHands
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
            f"hand model: {'stand-in' if getattr(hand_model, 'is_standin', False) else 'MANO'}")
    opt, sched = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(r.seed)
    last: dict = {}

    def step_fn(step: int) -> dict[str, Tensor]:
        s = synth.batch(B, gen, dev)
        net_in = network_input(s, translator, cfg)
        with r.autocast():
            outs = model(net_in, s["center"], s["cube"], camera.crop_intrinsics(s["K"], s["M"]))
        terms = pretrain_losses(outs, s, s["clean"], hand_model, cfg)
        keep_for_images(last, outs, net_in, s["clean"])
        return {"loss": sum(terms.values()), **terms}

    validate_fn = (lambda step: validate(engine.unwrap(model), val_set, hand_model, cfg, r)) if val_set else None
    result = engine.train(r, model, opt, sched, step_fn, total, spe, validate_fn=validate_fn,
                          best_key=f"s{cfg.stage_num}_pwe_mm", generators=[gen], image_fn=image_fn_for(last, cfg))
    return finish(r, result)


def real_batch(batch: dict, ids_ds: list[int], net_ids: list[int], device) -> dict:
    """Move a labelled real batch to the device; targets restricted to joints with a network twin."""
    x = {k: batch[k].to(device) for k in ("depth", "center", "cube", "M", "K", "joints_uvd", "joints_xyz")}
    return {"net_in": x["depth"], "ref": x["depth"], "center": x["center"], "cube": x["cube"],
            "K_crop": camera.crop_intrinsics(x["K"], x["M"]), "joints_uvd": x["joints_uvd"][:, ids_ds],
            "joints_xyz": x["joints_xyz"][:, ids_ds], "net_ids": net_ids}


def run_supervised(cfg: Config) -> dict:
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
    stream = engine.BatchStream(train_set, r, B, spe)
    last: dict = {}

    def step_fn(step: int) -> dict[str, Tensor]:
        x = real_batch(stream.batch(step), ids_ds, net_ids, dev)
        with r.autocast():
            outs = model(x["net_in"], x["center"], x["cube"], x["K_crop"])
        terms = pretrain_losses(outs, x, x["ref"], hand_model, cfg, joint_ids=tuple(net_ids))
        keep_for_images(last, outs, x["net_in"], x["ref"])
        return {"loss": sum(terms.values()), **terms}

    validate_fn = None
    if r.is_main and len(val_set) > 0:
        loader = torch.utils.data.DataLoader(val_set, batch_size=B, shuffle=False, num_workers=cfg.num_workers)
        validate_fn = lambda step: validate(  # noqa: E731
            engine.unwrap(model), (real_batch(b, ids_ds, net_ids, dev) for b in loader), hand_model, cfg, r)
    result = engine.train(r, model, opt, sched, step_fn, total, spe, validate_fn=validate_fn,
                          best_key=f"s{cfg.stage_num}_pwe_mm", image_fn=image_fn_for(last, cfg))
    return finish(r, result)


def run(cfg: Config) -> dict:
    """train_stage=pretrain or supervised; returns the engine's summary plus out_dir."""
    if cfg.train_stage == "supervised":
        return run_supervised(cfg)
    if cfg.train_stage != "pretrain":
        raise ValueError(f"stages.pretrain runs train_stage=pretrain or supervised, not {cfg.train_stage!r}")
    return run_pretrain(cfg)
