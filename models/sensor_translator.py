"""The `sensor` translator (gan_arch=sensor): what a depth camera does to a clean synthetic hand.

Design (issue 14), instead of regressing every pixel of the crop as the spec's ResNet generator does:

* `SensorGenerator` reads the clean crop x (and a noise channel) and predicts four maps, composed as
      hand pixels (x < fg):        y = x + a * tanh(offset)      unless a HOLE is drawn -> +1
      background pixels (x >= fg): y = tanh(value)               where PAINT is drawn, else +1
  The depth offset is bounded by a = gan_offset_max_nu, so the hand keeps its depth by construction;
  holes (missing pixels) are Bernoulli draws (the sensor's randomness) and paint (forearm, clutter)
  is where the paint logit is > 0 (coherent regions; random speckle is what a first version drew),
  both with a straight-through gradient.  Paint never covers a hand pixel nor one within
  gan_paint_margin_px of it, so the hand, its silhouette and its labels stay (without the margin the generator drew a halo that made the hand
  look bigger, the largest gap to the real crops it could reach).
  At initialisation the offset is 0 and holes / paint are rare: training starts at the identity and
  the adversarial gradient acts on each head directly (no L1 term has to be overcome).
* `MultiScaleDiscriminator`: two small patch discriminators (receptive field 38 px at full and at
  half resolution; InstanceNorm, or spectral normalisation with gan_d_norm=spectral), trained with
  the hinge loss on DiffAugment-style translated / cut-out crops (`diff_augment`).  Measured: the
  spectrally normalised one stayed near chance (hinge loss 3.9 of 4.0 after 2,800 steps) and let the
  generator paint a halo around the hand; see README "The translator".
* The objective is one-sided (no G_B, no cycle): the hand constraint is structural (offset bound) and
  the hole budget is a hinge on the expected fraction of hand pixels lost (losses.translation).

Conventions: crops (B, 1, S, S) normalized depth in [-1, 1], background +1, S divisible by 8.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def threshold_select(logit: Tensor, chosen: Tensor, otherwise: Tensor) -> Tensor:
    """`chosen` where logit > 0, else `otherwise`, with the straight-through gradient of
    s * chosen + (1 - s) * otherwise, s = sigmoid(logit), with respect to the logit (exact forward)."""
    s = torch.sigmoid(logit)
    return torch.where(logit > 0, chosen, otherwise) + (s - s.detach()) * (chosen - otherwise)


def bernoulli_select(p: Tensor, drawn: Tensor, otherwise: Tensor) -> Tensor:
    """`drawn` where a Bernoulli(p) draw is 1, else `otherwise` (broadcast shapes), with the
    straight-through gradient of p * drawn + (1 - p) * otherwise with respect to p.

    The forward value is exact (the gradient term p - p.detach() is exactly 0), so a hole is +1, not
    1 - 1e-7."""
    draw = torch.rand_like(p) < p
    return torch.where(draw, drawn, otherwise) + (p - p.detach()) * (drawn - otherwise)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.InstanceNorm2d(cout), nn.LeakyReLU(0.2, True))


class SensorGenerator(nn.Module):
    """Clean crop (B, 1, S, S) -> sensor-like crop (B, 1, S, S); see the module docstring.

    U-Net of width ngf with three stride-2 levels and `n_blocks` 3x3 convs at 1/8 resolution (the
    receptive field reaches the crop border from the wrist, so a forearm can be drawn).
    """

    def __init__(self, ngf: int = 16, n_blocks: int = 2, offset_max_nu: float = 0.015, fg_threshold: float = 0.99,
                 paint_margin_px: int = 6):
        super().__init__()
        self.offset_max_nu, self.fg_threshold, self.paint_margin_px = offset_max_nu, fg_threshold, paint_margin_px
        w = [ngf, 2 * ngf, 4 * ngf, 8 * ngf]
        self.enc = nn.ModuleList([_conv(2, w[0]), _conv(w[0], w[1], 2), _conv(w[1], w[2], 2), _conv(w[2], w[3], 2)])
        self.mid = nn.Sequential(*[_conv(w[3], w[3]) for _ in range(n_blocks)])
        self.dec = nn.ModuleList([_conv(w[3] + w[2], w[2]), _conv(w[2] + w[1], w[1]), _conv(w[1] + w[0], w[0])])
        self.head = nn.Conv2d(w[0], 4, 1)      # offset, hole logit, paint logit, paint value
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([0.0, -5.0, -3.0, 0.0]))   # holes rare, nothing painted

    def maps(self, x: Tensor) -> dict[str, Tensor]:
        """The composed crop 'out' and its parts 'offset' (nu), 'hole_prob', 'paint_prob' (sigmoid of
        the paint logit), 'paint' (each (B, 1, S, S)) and the hand mask 'hand' (bool)."""
        feats = [self.enc[0](torch.cat([x, torch.randn_like(x)], dim=1))]
        for layer in self.enc[1:]:
            feats.append(layer(feats[-1]))
        h = self.mid(feats[-1])
        for layer, skip in zip(self.dec, reversed(feats[:-1])):
            h = layer(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        raw = self.head(h)
        offset = self.offset_max_nu * torch.tanh(raw[:, 0:1])
        hole_prob, paint_prob = torch.sigmoid(raw[:, 1:2]), torch.sigmoid(raw[:, 2:3])
        paint = torch.tanh(raw[:, 3:4])
        hand = x < self.fg_threshold
        one = torch.ones_like(x)
        on_hand = bernoulli_select(hole_prob, one, (x + offset).clamp(-1.0, 1.0))
        off_hand = threshold_select(raw[:, 2:3], paint, one)
        if self.paint_margin_px > 0:      # no paint next to the hand: its silhouette stays the clean one
            m = self.paint_margin_px
            near = F.max_pool2d(hand.to(x.dtype), 2 * m + 1, 1, m) > 0
            off_hand = torch.where(near, one, off_hand)
        return {"out": torch.where(hand, on_hand, off_hand), "offset": offset, "hole_prob": hole_prob,
                "paint_prob": paint_prob, "paint": paint, "hand": hand}

    def forward(self, x: Tensor) -> Tensor:
        return self.maps(x)["out"]


class SNConv2d(nn.Conv2d):
    """Conv2d, optionally with spectral normalisation (one power iteration per training forward).

    forward(x, frozen=True) uses the (normalised) weight detached: gradients reach x, not the weights
    (how the generator's term sees the discriminator in the single-backward GAN step)."""

    def __init__(self, *args, spectral: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.spectral = spectral
        self.register_buffer("u", F.normalize(torch.randn(self.out_channels), dim=0))

    def normalized_weight(self) -> Tensor:
        if not self.spectral:
            return self.weight
        w = self.weight.flatten(1)
        if self.training:
            with torch.no_grad():
                v = F.normalize(w.t() @ self.u, dim=0)
                self.u.copy_(F.normalize(w @ v, dim=0))
        with torch.no_grad():
            u = self.u.clone()          # later forwards update self.u in place; this graph keeps its own
            v = F.normalize(w.t() @ u, dim=0)
        sigma = u @ (w @ v)
        return self.weight / sigma

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        w = self.normalized_weight()
        b = self.bias
        if frozen:
            w, b = w.detach(), (b.detach() if b is not None else None)
        return F.conv2d(x, w, b, self.stride, self.padding)


class PatchDiscriminatorSN(nn.Module):
    """(B, 1, S, S) -> (B, 1, S/8, S/8) scores: three 4x4 stride-2 convs (ndf, 2ndf, 4ndf, LeakyReLU
    0.2) and a 3x3 conv to one channel; receptive field 38 px.  norm='instance': InstanceNorm after
    the second and third conv (PatchGAN style); norm='spectral': spectrally normalised weights."""

    def __init__(self, ndf: int = 16, norm: str = "instance"):
        super().__init__()
        if norm not in ("instance", "spectral"):
            raise ValueError(f"norm must be 'instance' or 'spectral', not {norm!r}")
        sn = norm == "spectral"
        self.convs = nn.ModuleList([SNConv2d(1, ndf, 4, 2, 1, spectral=sn), SNConv2d(ndf, 2 * ndf, 4, 2, 1, spectral=sn),
                                    SNConv2d(2 * ndf, 4 * ndf, 4, 2, 1, spectral=sn), SNConv2d(4 * ndf, 1, 3, 1, 1, spectral=sn)])
        self.instance_norm = not sn

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        for k, conv in enumerate(self.convs[:-1]):
            x = conv(x, frozen)
            if self.instance_norm and k > 0:
                x = F.instance_norm(x)
            x = F.leaky_relu(x, 0.2)
        return self.convs[-1](x, frozen)


class MultiScaleDiscriminator(nn.Module):
    """Patch discriminators at full and half resolution: (B, 1, S, S) -> list of score maps."""

    def __init__(self, ndf: int = 16, scales: int = 2, norm: str = "instance"):
        super().__init__()
        self.ds = nn.ModuleList([PatchDiscriminatorSN(ndf, norm) for _ in range(scales)])

    def forward(self, x: Tensor, frozen: bool = False) -> list[Tensor]:
        out = []
        for k, d in enumerate(self.ds):
            out.append(d(F.avg_pool2d(x, 2 ** k) if k else x, frozen))
        return out


def diff_augment(x: Tensor, generator: torch.Generator | None = None, shift_frac: float = 0.125,
                 cutout_frac: float = 0.25) -> Tensor:
    """DiffAugment for depth crops (B, 1, S, S): a random integer translation of up to shift_frac * S
    (uncovered pixels become background +1) and one random square cut-out of cutout_frac * S set to
    background.  Differentiable in x; the same function is applied to real and generated crops."""
    B, _, S, _ = x.shape
    dev = x.device
    m = int(round(shift_frac * S))
    shift = torch.randint(-m, m + 1, (B, 2), generator=generator, device=dev)
    idx = torch.arange(S, device=dev)
    rows = (idx[None, :] - shift[:, :1])            # (B, S) source row of each output row
    cols = (idx[None, :] - shift[:, 1:])
    valid = ((rows >= 0) & (rows < S))[:, :, None] & ((cols >= 0) & (cols < S))[:, None, :]
    g = x[torch.arange(B, device=dev)[:, None, None], 0, rows.clamp(0, S - 1)[:, :, None],
          cols.clamp(0, S - 1)[:, None, :]]
    out = torch.where(valid, g, torch.ones_like(g))
    if cutout_frac <= 0:
        return out[:, None]
    c = max(1, int(round(cutout_frac * S)))
    corner = torch.randint(0, S - c + 1, (B, 2), generator=generator, device=dev)
    cut = (((idx[None, :] >= corner[:, :1]) & (idx[None, :] < corner[:, :1] + c))[:, :, None]
           & ((idx[None, :] >= corner[:, 1:]) & (idx[None, :] < corner[:, 1:] + c))[:, None, :])
    return torch.where(cut, torch.ones_like(out), out)[:, None]
