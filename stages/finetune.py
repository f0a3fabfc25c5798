"""train_stage=finetune: self-supervised fine-tuning on unlabeled real depth (spec 10.3-10.7).

Each optimizer step: one synthetic batch (rendered on the fly with view rotation, translated by the
frozen transfer net when cfg.transfer_net is set) with its supervised terms + collision, and one
unlabeled real batch (`build_dataset(cfg, 'train', labels=False)`) with the self-supervised terms of
`losses.finetune.real_losses`; all terms summed, one AdamW step (through `stages.engine`).

Initialisation: name-matched load of cfg.load_model (the pretrained network).  Model selection: the
self-supervised real loss on the held-out 'val' frames (labels=False) is the declared unlabeled
criterion (`best.pt`); `latest.pt` is the final-epoch model.  The test split is never touched.

Teacher: with cfg.finetune_teacher=average the real batch is also run, without gradient and in eval
mode, through the moving average of the weights (the network that is saved and evaluated); its last
stage gives the targets (`losses.finetune.real_losses(teacher_outputs=...)`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from config import Config
from datasets.synthetic import SyntheticHands
from losses.finetune import real_losses, synthetic_losses
from render.camera import crop_frame_mask, crop_intrinsics
from stages import engine
from stages.averaging import WeightAverage
from stages.common import (build_network, finish, load_transfer, make_optimizer, network_input, real_splits,
                           schedule)
from stages.images import ImageLog
from stages.loaders import BatchStream

REAL_KEYS = ("depth", "center", "cube", "M", "K")  # the only entries of a real sample the loop reads


def finetune_rotation(cfg: Config) -> str:
    """View rotation of the synthetic stream: 'auto' means the original's rotation in fine-tuning."""
    return "original" if cfg.synth_rotation == "auto" else cfg.synth_rotation


def real_inputs(batch: dict, device: torch.device, frame_hw: tuple[int, int]) -> dict[str, Tensor]:
    """Move the label-free entries of a real batch to `device`; add K_crop and the frame mask."""
    x = {k: batch[k].to(device, non_blocking=True) for k in REAL_KEYS}
    x["K_crop"] = crop_intrinsics(x["K"], x["M"])
    x["frame_mask"] = crop_frame_mask(x["M"], frame_hw, x["depth"].shape[-1])
    return x


def real_loss_total(model, x: dict[str, Tensor], renderer, hand_model, cfg: Config, run: engine.Run,
                    generator: torch.Generator, teacher=None) -> tuple[Tensor, dict[str, Tensor], dict[str, float], list]:
    """Forward an unlabeled real batch (and, without gradient, through `teacher` when given) and return
    (sum, terms, statistics, stage outputs)."""
    args = (x["depth"], x["center"], x["cube"], x["K_crop"])
    teacher_outs = None
    if teacher is not None:
        with torch.no_grad(), run.autocast():
            teacher_outs = teacher(*args)
    with run.autocast():
        outs = model(*args)
    terms, stats = real_losses(outs, *args, renderer, hand_model, cfg, frame_mask=x["frame_mask"],
                               generator=generator, teacher_outputs=teacher_outs)
    return sum(terms.values()), terms, stats, outs


@torch.no_grad()
def validate(model, loader, renderer, hand_model, cfg: Config, run: engine.Run) -> dict[str, float]:
    """Unlabeled criterion: mean self-supervised real loss over the held-out real crops."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7919)  # the same point samples at every validation
    total, count = 0.0, 0
    for batch in loader:
        x = real_inputs(batch, run.device, (cfg.image_height, cfg.image_width))
        loss, _, _, _ = real_loss_total(model, x, renderer, hand_model, cfg, run, gen)
        total += float(loss) * x["depth"].shape[0]
        count += x["depth"].shape[0]
    model.train()
    return {"selfsup_loss": total / max(count, 1)}


def run(cfg: Config) -> dict:
    """Fine-tune cfg.load_model on synthetic + unlabeled real data; returns the engine's summary."""
    r = engine.setup(cfg)
    dev, B = r.device, cfg.batch_size
    hand_model, renderer, model = build_network(cfg, r, "finetune")
    translator = load_transfer(cfg, r)
    rotation = finetune_rotation(cfg)
    synth = SyntheticHands(cfg, hand_model, renderer, rotation)
    train_set, val_set, spe = real_splits(cfg, r, "finetune", labels=False)
    total = schedule(cfg, spe)
    r.print(f"finetune: net={cfg.net}, {cfg.stage_num} stage(s), {len(train_set)} unlabeled real training frames, "
            f"{len(val_set)} held out, {spe} steps per epoch, {total} steps, synthetic view rotation {rotation}")
    opt, sched = make_optimizer(model, cfg)
    synth_gen = torch.Generator().manual_seed(r.seed)
    point_gen = torch.Generator().manual_seed(r.seed + 1)
    stream = BatchStream(train_set, r, B, spe)
    frame_hw = (cfg.image_height, cfg.image_width)
    images = ImageLog("finetune", cfg, renderer)
    mean_teacher = cfg.finetune_teacher == "average"
    average = (WeightAverage(engine.unwrap(model), cfg.finetune_average_decay, keep_module=mean_teacher)
               if cfg.finetune_average_decay > 0 or mean_teacher else None)
    teacher = average.module if average is not None else None

    def step_fn(step: int) -> dict[str, Tensor]:
        s = synth.batch(B, synth_gen, dev)
        with r.autocast():
            outs_s = model(network_input(s, translator, cfg), s["center"], s["cube"],
                           crop_intrinsics(s["K"], s["M"]))
        synth_terms = synthetic_losses(outs_s, s, hand_model, cfg)
        x = real_inputs(stream.batch(step), dev, frame_hw)
        real_sum, real_terms, stats, outs_r = real_loss_total(model, x, renderer, hand_model, cfg, r, point_gen,
                                                              teacher)
        images.keep(outs_r, x["depth"], x["depth"], x["center"], x["cube"], x["K_crop"])
        out = {"loss": sum(synth_terms.values()) + real_sum, **synth_terms, **real_terms}
        out.update({f"stat/{k}": torch.tensor(v) for k, v in stats.items()})
        return out

    validate_fn, best_key = None, ""
    if r.is_main and len(val_set) > 0:
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=B, shuffle=False, num_workers=cfg.num_workers)
        validate_fn = lambda step: validate(engine.unwrap(model), val_loader, renderer, hand_model, cfg, r)  # noqa: E731
        best_key = "selfsup_loss"
    result = engine.train(r, model, opt, sched, step_fn, total, spe, validate_fn=validate_fn, best_key=best_key,
                          generators=[synth_gen, point_gen], image_fn=images,
                          average=average)
    return finish(r, result)
