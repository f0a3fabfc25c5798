"""Consis-CycleGAN networks (spec 9.1-9.2): ResNet generator, PatchGAN discriminator, loading.

The generator maps one-channel normalized depth crops (values in [-1, 1], background +1) to crops of
the same size and range (tanh output).  `load_translator` is how the pretraining and finetuning
stages obtain the frozen synthetic -> real generator G_A from a `train_stage=transfer` checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


def init_weights(net: nn.Module, gain: float = 0.02) -> None:
    """Xavier-normal init (gain 0.02) for conv weights, zero biases; spec 9.1 (inferred)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _norm(ch: int) -> nn.Module:
    """InstanceNorm without affine parameters or running statistics."""
    return nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)


class _RestoringClamp(torch.autograd.Function):
    """clamp(z, lo, hi); backward passes the gradient inside [lo, hi] and, outside, only where a
    descent step moves z back toward the range (never further out, where nothing would change)."""

    @staticmethod
    def forward(ctx, z: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(z)
        ctx.lo, ctx.hi = lo, hi
        return z.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (z,) = ctx.saved_tensors
        passes = ((z >= ctx.lo) & (z <= ctx.hi)) | ((z > ctx.hi) & (grad > 0)) | ((z < ctx.lo) & (grad < 0))
        return grad * passes, None, None


def restoring_clamp(z: Tensor, lo: float = -1.0, hi: float = 1.0) -> Tensor:
    """clamp(z, lo, hi) whose gradient can pull clamped values back into the range: (any) -> same shape.

    A plain clamp has zero gradient on the +1 background of a residual generator (x + r with r > 0),
    so nothing could draw there; a straight-through clamp lets losses push r without bound while the
    output stays +1 (measured: the CPU translator collapsed to all-background within 200 steps).
    """
    return _RestoringClamp.apply(z, lo, hi)


class ResnetBlock(nn.Module):
    """reflect-pad 1, 3x3 conv, IN, ReLU, reflect-pad 1, 3x3 conv, IN, identity skip."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm(ch), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm(ch))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """ResNet generator of spec 9.1: (B, 1, S, S) in [-1, 1] -> (B, 1, S, S) in [-1, 1].

    ngf=64, n_blocks=9, residual=False is the original; S must be divisible by 4.  Smaller `ngf` /
    `n_blocks` give the CPU-trainable variant with the same structure.  residual=True (design option,
    not the original) outputs clamp(x + net(x), -1, 1) without tanh, so the generator starts at the
    identity and a small CPU-trained generator need not relearn the hand.  The clamp is
    `restoring_clamp`: a tanh or a plain clamp would flatten the gradient exactly on the +1
    background, where the real-domain artefacts (forearm, flying pixels, clutter) have to be drawn.
    """

    def __init__(self, in_ch: int = 1, out_ch: int = 1, ngf: int = 64, n_blocks: int = 9, residual: bool = False):
        super().__init__()
        self.residual = residual
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7), _norm(ngf), nn.ReLU(True)]
        ch = ngf
        for _ in range(2):  # two stride-2 down-samplings
            layers += [nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), _norm(2 * ch), nn.ReLU(True)]
            ch *= 2
        layers += [ResnetBlock(ch) for _ in range(n_blocks)]
        for _ in range(2):  # two stride-2 up-samplings
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                       _norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_ch, 7)] + ([] if residual else [nn.Tanh()])
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        if self.residual:
            return restoring_clamp(x + self.model(x))
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN of spec 9.2: (B, 1, 128, 128) -> (B, 1, 14, 14) real/fake scores (no sigmoid).

    4x4 convs ndf (stride 2, no norm) -> 2ndf, 4ndf (stride 2, IN) -> 8ndf (stride 1, IN) -> 1 (stride 1);
    LeakyReLU 0.2 after every hidden layer.
    """

    def __init__(self, in_ch: int = 1, ndf: int = 64):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.2, True)  # noqa: E731
        self.model = nn.Sequential(
            nn.Conv2d(in_ch, ndf, 4, 2, 1), lrelu(),
            nn.Conv2d(ndf, 2 * ndf, 4, 2, 1), _norm(2 * ndf), lrelu(),
            nn.Conv2d(2 * ndf, 4 * ndf, 4, 2, 1), _norm(4 * ndf), lrelu(),
            nn.Conv2d(4 * ndf, 8 * ndf, 4, 1, 1), _norm(8 * ndf), lrelu(),
            nn.Conv2d(8 * ndf, 1, 4, 1, 1))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def snap_background(x: Tensor, fg_threshold: float) -> Tensor:
    """Values >= fg_threshold become exactly +1 (the background convention); shape kept."""
    return torch.where(x >= fg_threshold, torch.ones_like(x), x)


@torch.no_grad()
def translate(G: nn.Module, x: Tensor, snap_threshold: float | None = None) -> Tensor:
    """Apply a frozen generator: clean crops (B, 1, S, S) -> translated crops (B, 1, S, S).

    No gradients.  With `snap_threshold` (e.g. cfg.fg_threshold_nu) translated values at or above it
    are set to +1 so that the background convention of the clean crops holds exactly.
    """
    y = G(x.to(next(G.parameters()).dtype))
    return snap_background(y, snap_threshold) if snap_threshold is not None else y


def generator_from_checkpoint(ckpt: dict, name: str = "G_A") -> nn.Module:
    """Rebuild generator `name` ('G_A' or 'G_B') from a transfer checkpoint dict (engine format:
    'model' = state dict of the four networks with keys '<name>.*', 'config' = the run's Config dict
    with gan_ngf and gan_blocks; gan_arch=sensor rebuilds a models.sensor_translator.SensorGenerator).
    KeyError when the checkpoint is not a transfer checkpoint."""
    model, cfg = ckpt.get("model"), ckpt.get("config") or {}
    prefix = f"{name}."
    if not isinstance(model, dict) or not any(k.startswith(prefix) for k in model):
        raise KeyError(f"no '{prefix}*' weights in the checkpoint: not a train_stage=transfer checkpoint")
    if "gan_ngf" not in cfg or "gan_blocks" not in cfg:
        raise KeyError("the checkpoint's config lacks gan_ngf / gan_blocks")
    if cfg.get("gan_arch", "original") == "sensor":
        from stages.transfer_sensor import sensor_generator
        G = sensor_generator(cfg)
    else:
        G = ResnetGenerator(ngf=int(cfg["gan_ngf"]), n_blocks=int(cfg["gan_blocks"]),
                            residual=bool(cfg.get("gan_residual", False)))
    G.load_state_dict({k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)})
    return G


def load_translator(path: str | Path | None, device: torch.device | str = "cpu") -> nn.Module | None:
    """The frozen synthetic -> real generator G_A of a `train_stage=transfer` checkpoint, or None.

    Contract for the pretraining / finetuning stages:
      * `path` empty or None -> returns None; the caller must then run WITHOUT translation and say so
        (e.g. log "transfer_net not set: synthetic crops are used untranslated").
      * otherwise the file must exist and be a transfer checkpoint in the engine's format (`best.pt`
        = the latest step meeting the spec 9.2 acceptance, or `latest.pt`, of a train_stage=transfer
        run); a missing or wrong file raises FileNotFoundError / KeyError (never a silent fallback).
      * the returned generator is on `device`, in eval mode, with requires_grad False on every
        parameter.  Apply it to each synthetic batch of clean crops (B, 1, 128, 128) in [-1, 1] with
        `translate(G, batch["clean"], cfg.fg_threshold_nu if cfg.gan_snap_background else None)` and
        feed the result to the network as `depth`; keep the clean crop as the reference crop for
        target encoding / decoding (spec 5.3).
    """
    if path is None or str(path) == "":
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"transfer_net checkpoint not found: {p}")
    ckpt = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict):
        raise KeyError(f"{p} is not a train_stage=transfer checkpoint")
    G = generator_from_checkpoint(ckpt, "G_A")
    G.to(device).eval()
    for q in G.parameters():
        q.requires_grad_(False)
    return G


class ImagePool:
    """History buffer of generated images for the discriminators (spec 9.2, size 50).

    `query(images (B, C, H, W)) -> (B, C, H, W)`: while the pool is not full each image is stored and
    returned; afterwards each image is, with probability 1/2, swapped for a random stored one (which
    is returned) or returned as is.  Images are stored detached.  size 0 disables the pool.
    """

    def __init__(self, size: int, generator: torch.Generator | None = None):
        self.size = size
        self.images: list[Tensor] = []
        self.generator = generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def query(self, images: Tensor) -> Tensor:
        if self.size <= 0:
            return images.detach()
        out = []
        for img in images.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif self._rand() < 0.5:
                k = int(torch.randint(len(self.images), (), generator=self.generator))
                out.append(self.images[k].to(img.device))
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"size": self.size, "images": [t.cpu() for t in self.images]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the stored images (kept on the CPU until returned; moved to the query's device)."""
        self.images = list(state["images"])[: self.size]
