"""train_stage=transfer: the Consis-CycleGAN sim-to-real translator (spec 9.2).

gan_arch=original (this module) is the spec's method; gan_arch=sensor swaps in the one-sided sensor
translator of stages/transfer_sensor.py inside the same loop (data, validation, selection, images).

Domain A: clean synthetic crops rendered on the fly for the target dataset (spec 8.2, occlusion on);
domain B: real training crops of the target dataset (labels never loaded).  G_A: synthetic -> real
(the translator that pretraining / finetuning load with `models.translator.load_translator`),
G_B: real -> synthetic; D_A judges the real domain, D_B the synthetic domain.

One engine step = one CycleGAN iteration.  The generator terms see the discriminators through
detached parameters and the discriminator terms see detached (pooled) fakes, so a single backward of
L_G + L_D and one Adam over all parameters give exactly the gradients and updates of the usual
alternating G-step / D-step (both use the networks and fakes of the start of the iteration); this lets
the engine's loop (checkpoints, resume, NaN guard, DDP, TensorBoard) run the GAN unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from config import Config
from datasets import build_dataset
from datasets.synthetic import SyntheticHands
from losses.translation import (cycle_loss, foreground_consistency, foreground_fidelity, identity_loss,
                                lsgan_discriminator_loss, lsgan_generator_loss, pose_consistency,
                                symmetric_foreground_consistency)
from models.dual_branch import DualBranchNet, NetConfig
from models.mano import build_hand_model
from models.translator import ImagePool, PatchDiscriminator, ResnetGenerator
from render.camera import CROP_SIZE
from render.hand_renderer import HandRenderer
from stages import engine
from stages.checkpoints import architecture_config, load_checkpoint
from stages.common import ensure_real_data, finish
from stages.loaders import BatchStream
from stages.transfer_sensor import SensorGAN, make_sensor_optimizer, sensor_losses

ACCEPT_FG_ABS_NU = 0.03     # spec 9.2 acceptance: mean |G_A(x)-x| over the hand mask (nu)
ACCEPT_LOST_FRAC = 0.05     # spec 9.2 acceptance: fraction of hand pixels turned into background
PoseTerm = Callable[[Tensor], Tensor]  # translated synthetic crops (B,1,S,S) -> unweighted L_pose


class ConsisCycleGAN(nn.Module):
    """The four networks; `forward` runs one iteration's generators and discriminators.

    Its state_dict (keys 'G_A.*', 'G_B.*', 'D_A.*', 'D_B.*') is the engine checkpoint's 'model'.
    """

    def __init__(self, ngf: int, n_blocks: int, ndf: int, residual: bool = False):
        super().__init__()
        self.G_A = ResnetGenerator(ngf=ngf, n_blocks=n_blocks, residual=residual)
        self.G_B = ResnetGenerator(ngf=ngf, n_blocks=n_blocks, residual=residual)
        self.D_A, self.D_B = PatchDiscriminator(ndf=ndf), PatchDiscriminator(ndf=ndf)

    @staticmethod
    def _frozen(D: nn.Module, x: Tensor) -> Tensor:
        """D(x) with detached parameters: gradients reach x (the generator) but not D."""
        return functional_call(D, {n: p.detach() for n, p in D.named_parameters()}, (x,))

    def forward(self, x_s: Tensor, x_r: Tensor, pool_A: ImagePool | None = None,
                pool_B: ImagePool | None = None, identity: bool = True) -> dict[str, Tensor]:
        """x_s synthetic, x_r real (B, 1, S, S) -> images and discriminator scores of one iteration."""
        out = {"translated": self.G_A(x_s), "real_to_synthetic": self.G_B(x_r)}
        out["reconstructed"] = self.G_B(out["translated"])
        out["real_reconstructed"] = self.G_A(out["real_to_synthetic"])
        if identity:
            out["idt_A"], out["idt_B"] = self.G_A(x_r), self.G_B(x_s)
        out["g_D_A"] = self._frozen(self.D_A, out["translated"])
        out["g_D_B"] = self._frozen(self.D_B, out["real_to_synthetic"])
        fake_r, fake_s = out["translated"].detach(), out["real_to_synthetic"].detach()
        out["d_A_real"] = self.D_A(x_r)
        out["d_A_fake"] = self.D_A(pool_A.query(fake_r) if pool_A is not None else fake_r)
        out["d_B_real"] = self.D_B(x_s)
        out["d_B_fake"] = self.D_B(pool_B.query(fake_s) if pool_B is not None else fake_s)
        return out


def fg_tolerance_nu(cfg: Config, cube: Tensor) -> Tensor:
    """cfg.gan_fg_tolerance_mm in normalized depth units per sample (1 nu = half the cube's z edge):
    cube (B, 3) mm -> (B, 1, 1, 1)."""
    return (cfg.gan_fg_tolerance_mm / (0.5 * cube[:, 2])).reshape(-1, 1, 1, 1)


def cyclegan_losses(out: dict[str, Tensor], x_s: Tensor, x_r: Tensor, cfg: Config,
                    pose_term: PoseTerm | None = None, fg_tol_nu: Tensor | float = 0.0) -> dict[str, Tensor]:
    """Spec 9.2 objective: 'loss' = L_G + L_D (weights from cfg) plus every unweighted term;
    fg_tol_nu = the hand-consistency tolerance (fg_tolerance_nu of the synthetic batch)."""
    t = {"adv_A": lsgan_generator_loss(out["g_D_A"]), "adv_B": lsgan_generator_loss(out["g_D_B"]),
         "cyc": cycle_loss(out["reconstructed"], x_s) + cycle_loss(out["real_reconstructed"], x_r),
         "fg": foreground_consistency(out["translated"], x_s, cfg.fg_threshold_nu, cfg.gan_mask_erode_px,
                                      fg_tol_nu)}
    g = cfg.w_gan_adv * (t["adv_A"] + t["adv_B"]) + cfg.w_gan_cyc * t["cyc"] + cfg.w_gan_fg * t["fg"]
    if "idt_A" in out:
        t["idt"] = identity_loss(out["idt_A"], x_r) + identity_loss(out["idt_B"], x_s)
        g = g + cfg.w_gan_idt * t["idt"]
    if cfg.w_gan_fg_sym > 0:
        t["fg_sym"] = symmetric_foreground_consistency(out["real_to_synthetic"], x_r, cfg.fg_threshold_nu)
        g = g + cfg.w_gan_fg_sym * t["fg_sym"]
    if cfg.w_gan_pose > 0 and pose_term is not None:
        t["pose"] = pose_term(out["translated"])
        g = g + cfg.w_gan_pose * t["pose"]
    t["D_A"] = lsgan_discriminator_loss(out["d_A_real"], out["d_A_fake"])
    t["D_B"] = lsgan_discriminator_loss(out["d_B_real"], out["d_B_fake"])
    t["G"], t["D"] = g, t["D_A"] + t["D_B"]
    t["loss"] = t["G"] + t["D"]
    return t


def lr_factor(epoch: int, constant_epochs: int, decay_epochs: int) -> float:
    """LR multiplier after `epoch` completed epochs: 1 for `constant_epochs`, then linear toward 0
    (1 - k/(decay_epochs+1) in the k-th decay epoch; 0 afterwards)."""
    if epoch < constant_epochs:
        return 1.0
    return max(0.0, 1.0 - (epoch - constant_epochs + 1) / (decay_epochs + 1))


def make_optimizer(model: nn.Module, cfg: Config) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam (gan_lr, (gan_beta1, gan_beta2)) over all four networks and its per-epoch schedule.

    Adam is per-parameter, so one optimizer over G and D equals the usual two optimizers."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.gan_lr, betas=(cfg.gan_beta1, cfg.gan_beta2))
    return opt, lr_schedule(opt, cfg)


def lr_schedule(opt: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch schedule of a translator optimizer: lr_factor(gan_epochs_constant, gan_epochs_decay)."""
    c, d = cfg.gan_epochs_constant, cfg.gan_epochs_decay
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(e, c, d))


def build_translator(cfg: Config, device: torch.device | str
                     ) -> tuple[nn.Module, torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """The networks of cfg.gan_arch on `device` (ConsisCycleGAN or SensorGAN), their Adam and schedule."""
    if cfg.gan_arch == "sensor":
        model = SensorGAN(cfg).to(device)
        opt = make_sensor_optimizer(model, cfg)
        return model, opt, lr_schedule(opt, cfg)
    model = ConsisCycleGAN(cfg.gan_ngf, cfg.gan_blocks, cfg.gan_ndf, cfg.gan_residual).to(device)
    return (model, *make_optimizer(model, cfg))


CYCLE_COLUMNS = ("synthetic", "translated", "reconstructed", "real", "real_to_synthetic")
SENSOR_COLUMNS = ("synthetic", "translated", "real")


def translation_grid(images: dict[str, Tensor], n: int = 4, cols: tuple[str, ...] = CYCLE_COLUMNS) -> Tensor:
    """Columns `cols` (default synthetic | translated | reconstructed | real | real->synthetic) for n
    samples: RGB (3, n*S, len(cols)*S) in [0, 1] (near = bright, background black) for add_image."""
    n = min(n, *(images[c].shape[0] for c in cols))
    rows = [torch.cat([images[c][b, 0].detach().float().cpu() for c in cols], dim=1) for b in range(n)]
    g = ((1.0 - torch.cat(rows, dim=0).clamp(-1, 1)) / 2.0)
    return g[None].expand(3, -1, -1).clone()


@torch.no_grad()
def validate_translator(G_A: nn.Module, clean: Tensor, cube_z: Tensor, cfg: Config,
                        chunk: int = 32) -> dict[str, float]:
    """Spec 9.2 acceptance numbers on held-out synthetic crops clean (N, 1, S, S), cube_z (N,) mm:
    fg_abs_nu, fg_abs_mm, fg_lost_frac (over the uneroded hand mask) and out_of_range (fraction of
    outputs outside [-1, 1]).  The generator runs in eval mode without snapping."""
    was = G_A.training
    G_A.eval()
    outs = torch.cat([G_A(clean[i:i + chunk]) for i in range(0, clean.shape[0], chunk)])
    G_A.train(was)
    st = foreground_fidelity(outs, clean, cfg.fg_threshold_nu, 0.5 * cube_z)
    st["out_of_range"] = float(((outs < -1) | (outs > 1)).float().mean())
    return st


def selection_key(stats: dict[str, float], step: int) -> float:
    """best.pt ordering (lower wins): the latest step that meets the spec 9.2 acceptance
    (fg_abs_nu <= ACCEPT_FG_ABS_NU and fg_lost_frac <= ACCEPT_LOST_FRAC) ranks first (-step);
    a failing step ranks after every accepted one, by its foreground deviation."""
    if stats["fg_abs_nu"] <= ACCEPT_FG_ABS_NU and stats["fg_lost_frac"] <= ACCEPT_LOST_FRAC:
        return -float(step)
    return 1e6 * (1.0 + stats["fg_abs_nu"] + stats["fg_lost_frac"])


def build_pose_term(cfg: Config, renderer, device: torch.device) -> Callable[[dict], PoseTerm] | None:
    """Pose consistency (spec 9.2) through the frozen pose network cfg.gan_pose_net, or None when
    w_gan_pose = 0.  Returns batch -> (translated -> unweighted L_pose); gradients reach G_A only."""
    if cfg.w_gan_pose <= 0:
        return None
    if not cfg.gan_pose_net:
        raise ValueError("w_gan_pose > 0 needs gan_pose_net=<checkpoint of a pose network pretrained "
                         "on untranslated synthetic crops>")
    ck = load_checkpoint(cfg.gan_pose_net)
    net_cfg = NetConfig.from_config(architecture_config(cfg, ck.get("config")))
    net = DualBranchNet(net_cfg, renderer).to(device)
    net.load_state_dict(ck["model"])
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)

    def for_batch(batch: dict) -> PoseTerm:
        K_crop = batch["M"] @ batch["K"]
        return lambda fake: pose_consistency(
            net(fake, batch["center"], batch["cube"], K_crop)[-1].maps, batch["clean"], batch["joints_uvd"],
            net_cfg.kernel_radius_nu, net_cfg.softmax_temperature, cfg.huber_delta_nu, net_cfg.fg_threshold_nu)
    return for_batch


def held_out_synthetic(synth, n: int, seed: int, device: torch.device, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """n fixed synthetic clean crops (n, 1, S, S) and their cube_z (n,) mm, from their own seed."""
    g = torch.Generator(device).manual_seed(seed)
    parts = [synth.batch(min(chunk, n - i), g, device) for i in range(0, n, chunk)]
    return torch.cat([p["clean"] for p in parts]), torch.cat([p["cube"][:, 2] for p in parts])


def run(cfg: Config) -> dict:
    """Train the translator; checkpoints out_dir/latest.pt and best.pt (engine format, 'model' holds
    G_A, G_B, D_A, D_B; best = latest step meeting the spec 9.2 acceptance on held-out synthetic crops)."""
    run_ = engine.setup(cfg)
    ensure_real_data(cfg, run_)
    dev, B = run_.device, cfg.gan_batch_size
    real = build_dataset(cfg, "train", labels=False)
    spe = len(real) // run_.world_size // B
    if spe < 1:
        raise ValueError(f"{len(real)} real training crops are fewer than one batch of gan_batch_size={B}")
    total = spe * (cfg.gan_epochs_constant + cfg.gan_epochs_decay)
    total = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
    hand_model = build_hand_model(cfg).to(dev)
    run_.hand_model = hand_model.identity()
    renderer = HandRenderer(hand_model, size=CROP_SIZE)
    renderer = renderer.to(dev) if isinstance(renderer, nn.Module) else renderer
    synth = SyntheticHands(cfg, hand_model, renderer, cfg.gan_synth_rotation)
    sensor = cfg.gan_arch == "sensor"
    model, opt, sched = build_translator(cfg, dev)
    net = engine.wrap_model(model, run_)
    gen, pool_gen = torch.Generator(dev).manual_seed(run_.seed), torch.Generator().manual_seed(run_.seed + 1)
    pools = {} if sensor else {"pool_A": ImagePool(cfg.gan_pool_size, pool_gen),
                               "pool_B": ImagePool(cfg.gan_pool_size, pool_gen)}
    pose_for = build_pose_term(cfg, renderer, dev)
    val_clean, val_cube = held_out_synthetic(synth, cfg.val_size, cfg.seed + 104_729, dev)
    stream, last = BatchStream(real, run_, B, spe), {}
    run_.print(f"transfer: A = synthetic clean crops (rotation {cfg.gan_synth_rotation}, occlusion "
               f"{cfg.synth_occlusion}), B = {len(real)} real '{cfg.dataset}' training crops; {cfg.gan_arch} translator, G ngf={cfg.gan_ngf} "
               f"blocks={cfg.gan_blocks}{' residual' if cfg.gan_residual else ''}, D ndf={cfg.gan_ndf}; batch {B}, {spe} steps/epoch, {total} steps; "
               f"pose consistency {'on' if pose_for else 'off'}")

    def step_fn(step: int) -> dict[str, Tensor]:
        x_r = stream.batch(step)["depth"].to(run_.device, non_blocking=True)
        batch = synth.batch(B, gen, dev)
        x_s = batch["clean"]
        if sensor:
            with run_.autocast():
                out = net(x_s, x_r, gen)
            last.update(synthetic=x_s, real=x_r, translated=out["translated"])
            return sensor_losses(out, cfg)
        with run_.autocast():
            out = net(x_s, x_r, pools["pool_A"], pools["pool_B"], identity=cfg.w_gan_idt > 0)
        losses = cyclegan_losses(out, x_s, x_r, cfg, pose_for(batch) if pose_for else None,
                                 fg_tolerance_nu(cfg, batch["cube"]))
        last.update(synthetic=x_s, real=x_r, **{k: out[k] for k in ("translated", "reconstructed", "real_to_synthetic")})
        return losses

    def validate_fn(step: int) -> dict[str, float]:
        st = validate_translator(model.G_A, val_clean, val_cube, cfg)
        st["select"] = selection_key(st, step + 1)
        return st

    result = engine.train(run_, net, opt, sched, step_fn, total, spe, validate_fn=validate_fn, best_key="select",
                          generators=[gen, pool_gen], image_fn=lambda step: {"transfer/images": translation_grid(last, cols=SENSOR_COLUMNS if sensor else CYCLE_COLUMNS)},
                          state_extra=pools)
    return finish(run_, result)
