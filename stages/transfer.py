"""train_stage=transfer: the Consis-CycleGAN sim-to-real translator (spec 9.2).

Domain A: clean synthetic crops rendered on the fly for the target dataset (spec 8.2, occlusion on);
domain B: real training crops of the target dataset (labels never loaded).  G_A: synthetic -> real
(the translator used by pretraining / finetuning through `models.translator.load_translator`),
G_B: real -> synthetic; D_A judges the real domain, D_B the synthetic domain.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from config import Config
from losses.translation import (cycle_loss, foreground_consistency, identity_loss,
                                lsgan_discriminator_loss, lsgan_generator_loss,
                                symmetric_foreground_consistency)
from models.translator import TRANSLATOR_KEY, ImagePool, build_networks, translator_state

PoseTerm = Callable[[Tensor], Tensor]  # translated synthetic crops (B,1,S,S) -> unweighted L_pose


def lr_factor(step: int, constant_steps: int, decay_steps: int) -> float:
    """Learning-rate multiplier: 1 for `constant_steps`, then linear to 0 over `decay_steps`."""
    if step < constant_steps:
        return 1.0
    if decay_steps <= 0:
        return 0.0
    return max(0.0, 1.0 - (step - constant_steps) / decay_steps)


def _set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


class CycleGAN:
    """The four networks, their two Adam optimizers, LR schedules and history pools.

    `step(x_s, x_r)` runs one generator update and one discriminator update on a synthetic batch
    x_s and a real batch x_r (B, 1, S, S) and returns (scalar losses, images for logging).
    """

    def __init__(self, cfg: Config, device: torch.device, steps_per_epoch: int = 1,
                 generator: torch.Generator | None = None):
        self.cfg = cfg
        self.nets = {k: v.to(device) for k, v in build_networks(cfg.gan_ngf, cfg.gan_blocks, cfg.gan_ndf).items()}
        betas = (cfg.gan_beta1, cfg.gan_beta2)
        g_params = list(self.nets["G_A"].parameters()) + list(self.nets["G_B"].parameters())
        d_params = list(self.nets["D_A"].parameters()) + list(self.nets["D_B"].parameters())
        self.opt_G = torch.optim.Adam(g_params, lr=cfg.gan_lr, betas=betas)
        self.opt_D = torch.optim.Adam(d_params, lr=cfg.gan_lr, betas=betas)
        const, decay = cfg.gan_epochs_constant * steps_per_epoch, cfg.gan_epochs_decay * steps_per_epoch
        self.scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, const, decay))
                       for o in (self.opt_G, self.opt_D)]
        self.pool_A = ImagePool(cfg.gan_pool_size, generator)  # fakes of the real domain (for D_A)
        self.pool_B = ImagePool(cfg.gan_pool_size, generator)  # fakes of the synthetic domain (for D_B)
        self.device = device

    # ---- losses -------------------------------------------------------------------------------
    def generator_losses(self, x_s: Tensor, x_r: Tensor, pose_term: PoseTerm | None = None
                         ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weighted generator objective (key 'G') with its unweighted parts, and the images."""
        c, n = self.cfg, self.nets
        fake_r = n["G_A"](x_s)              # synthetic -> real
        rec_s = n["G_B"](fake_r)
        fake_s = n["G_B"](x_r)              # real -> synthetic
        rec_r = n["G_A"](fake_s)
        parts = {"adv_A": lsgan_generator_loss(n["D_A"](fake_r)),
                 "adv_B": lsgan_generator_loss(n["D_B"](fake_s)),
                 "cyc": cycle_loss(rec_s, x_s) + cycle_loss(rec_r, x_r),
                 "fg": foreground_consistency(fake_r, x_s, c.fg_threshold_nu, c.gan_mask_erode_px)}
        total = c.w_gan_adv * (parts["adv_A"] + parts["adv_B"]) + c.w_gan_cyc * parts["cyc"] + c.w_gan_fg * parts["fg"]
        if c.w_gan_idt > 0:
            parts["idt"] = identity_loss(n["G_A"](x_r), x_r) + identity_loss(n["G_B"](x_s), x_s)
            total = total + c.w_gan_idt * parts["idt"]
        if c.w_gan_fg_sym > 0:
            parts["fg_sym"] = symmetric_foreground_consistency(fake_s, x_r, c.fg_threshold_nu)
            total = total + c.w_gan_fg_sym * parts["fg_sym"]
        if c.w_gan_pose > 0 and pose_term is not None:
            parts["pose"] = pose_term(fake_r)
            total = total + c.w_gan_pose * parts["pose"]
        parts["G"] = total
        images = {"synthetic": x_s, "translated": fake_r, "real": x_r, "reconstructed": rec_s,
                  "real_to_synthetic": fake_s}
        return parts, images

    def discriminator_losses(self, x_s: Tensor, x_r: Tensor, fake_r: Tensor, fake_s: Tensor) -> dict[str, Tensor]:
        """LSGAN discriminator objectives; fakes are drawn through the history pools (detached)."""
        n = self.nets
        d_a = lsgan_discriminator_loss(n["D_A"](x_r), n["D_A"](self.pool_A.query(fake_r)))
        d_b = lsgan_discriminator_loss(n["D_B"](x_s), n["D_B"](self.pool_B.query(fake_s)))
        return {"D_A": d_a, "D_B": d_b, "D": d_a + d_b}

    # ---- one iteration ------------------------------------------------------------------------
    def step(self, x_s: Tensor, x_r: Tensor, pose_term: PoseTerm | None = None
             ) -> tuple[dict[str, float], dict[str, Tensor]]:
        """One G update then one D update; LR schedules advance by one step."""
        for k in ("G_A", "G_B", "D_A", "D_B"):
            self.nets[k].train()
        discs = [self.nets["D_A"], self.nets["D_B"]]
        _set_requires_grad(discs, False)
        parts, images = self.generator_losses(x_s, x_r, pose_term)
        self.opt_G.zero_grad(set_to_none=True)
        parts["G"].backward()
        self.opt_G.step()
        _set_requires_grad(discs, True)
        d_parts = self.discriminator_losses(x_s, x_r, images["translated"].detach(),
                                            images["real_to_synthetic"].detach())
        self.opt_D.zero_grad(set_to_none=True)
        d_parts["D"].backward()
        self.opt_D.step()
        for s in self.scheds:
            s.step()
        scalars = {k: float(v.detach()) for k, v in {**parts, **d_parts}.items()}
        scalars["lr"] = self.opt_G.param_groups[0]["lr"]
        return scalars, {k: v.detach() for k, v in images.items()}

    # ---- checkpoint state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume; `load_translator` reads G_A from the TRANSLATOR_KEY entry."""
        n = self.nets
        return {TRANSLATOR_KEY: translator_state(n["G_A"], n["G_B"], n["D_A"], n["D_B"]),
                "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                "sched": [s.state_dict() for s in self.scheds],
                "pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        entry = state[TRANSLATOR_KEY]
        for k in ("G_A", "G_B", "D_A", "D_B"):
            self.nets[k].load_state_dict(entry[k])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        for s, st in zip(self.scheds, state["sched"]):
            s.load_state_dict(st)
        self.pool_A.load_state_dict(state["pool_A"], self.device)
        self.pool_B.load_state_dict(state["pool_B"], self.device)
