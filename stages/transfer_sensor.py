"""train_stage=transfer with gan_arch=sensor: the one-sided sensor translator (models.sensor_translator).

One engine step = one GAN iteration, as for the Consis-CycleGAN (stages/transfer.py): the generator
term sees the discriminators through detached weights and the discriminator term sees detached
fakes, so one backward of L_G + L_D and one Adam (two parameter groups: gan_lr for G, gan_lr_d for D,
a two-time-scale update) equal the alternating G-step / D-step.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from config import Config
from losses.translation import hinge_discriminator_loss, hinge_generator_loss, hole_budget_loss, masked_mean
from models.sensor_translator import MultiScaleDiscriminator, SensorGenerator, diff_augment


class SensorGAN(nn.Module):
    """G_A (clean synthetic -> sensor-like) and D (multi-scale patch discriminators).

    Its state_dict (keys 'G_A.*', 'D.*') is the engine checkpoint's 'model'; `load_translator`
    rebuilds G_A from it."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.G_A = sensor_generator(cfg)
        self.D = MultiScaleDiscriminator(ndf=cfg.gan_ndf, scales=cfg.gan_d_scales, norm=cfg.gan_d_norm)
        self.augment = cfg.gan_diff_augment

    def forward(self, x_s: Tensor, x_r: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """x_s clean synthetic, x_r real (B, 1, S, S) -> translated crop, its parts and the scores."""
        out = self.G_A.maps(x_s)
        fake = out["out"]
        aug = (lambda x: diff_augment(x, generator)) if self.augment else (lambda x: x)
        out["translated"] = fake
        out["g_scores"] = self.D(aug(fake), frozen=True)
        out["d_real"] = self.D(aug(x_r))
        out["d_fake"] = self.D(aug(fake.detach()))
        return out


def sensor_generator(cfg: Config) -> SensorGenerator:
    """The G_A of a gan_arch=sensor run, from its settings (plain dict or Config)."""
    c = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return SensorGenerator(ngf=int(c["gan_ngf"]), n_blocks=int(c["gan_blocks"]),
                           offset_max_nu=float(c["gan_offset_max_nu"]), fg_threshold=float(c["fg_threshold_nu"]),
                           paint_margin_px=int(c.get("gan_paint_margin_px", 0)))


def sensor_losses(out: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
    """'loss' = L_G + L_D and the unweighted terms: adv (hinge, G side), hole (budget hinge), D, and
    the logged shares hole_frac (expected hand pixels lost) and paint_frac (background painted)."""
    hand = out["hand"]
    t = {"adv": hinge_generator_loss(out["g_scores"]),
         "hole": hole_budget_loss(out["hole_prob"], hand, cfg.gan_hole_budget),
         "D": hinge_discriminator_loss(out["d_real"], out["d_fake"])}
    t["G"] = cfg.w_gan_adv * t["adv"] + cfg.w_gan_hole * t["hole"]
    t["loss"] = t["G"] + t["D"]
    with torch.no_grad():
        t["hole_frac"] = masked_mean(out["hole_prob"], hand)
        t["paint_frac"] = masked_mean(out["paint_prob"], ~hand)
    return t


def make_sensor_optimizer(model: SensorGAN, cfg: Config) -> torch.optim.Adam:
    """Adam with G at gan_lr and D at gan_lr_d (0 = gan_lr), betas (gan_beta1, gan_beta2)."""
    lr_d = cfg.gan_lr_d if cfg.gan_lr_d > 0 else cfg.gan_lr
    return torch.optim.Adam([{"params": model.G_A.parameters(), "lr": cfg.gan_lr},
                             {"params": model.D.parameters(), "lr": lr_d}], betas=(cfg.gan_beta1, cfg.gan_beta2))
