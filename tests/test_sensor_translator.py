"""The sensor translator (gan_arch=sensor): composition, hand constraint, SN, DiffAugment, losses, training."""
from __future__ import annotations

import pytest
import torch

from config import make_config
from losses.translation import hinge_discriminator_loss, hinge_generator_loss, hole_budget_loss
from models.sensor_translator import (MultiScaleDiscriminator, SensorGenerator, SNConv2d, bernoulli_select,
                                      diff_augment)

FG = 0.99


def hand_crops(b: int = 4, s: int = 32, seed: int = 0) -> torch.Tensor:
    """(b, 1, s, s): a square 'hand' of depth in (-0.3, 0.3) on background +1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.ones(b, 1, s, s)
    x[:, :, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 0.3 * (2 * torch.rand(b, 1, s // 2, s // 2, generator=g) - 1)
    return x


def test_bernoulli_select_draws_with_p_exactly_and_passes_the_straight_through_gradient():
    torch.manual_seed(0)
    p = torch.full((200_000,), 0.3, requires_grad=True)
    a, b = torch.full_like(p, 1.0), torch.full_like(p, -0.5)
    m = bernoulli_select(p, a, b)
    v = m.detach()
    assert bool(((v == 1.0) | (v == -0.5)).all())                           # exact values, no rounding
    assert abs(float((v == 1.0).float().mean()) - 0.3) < 0.005             # 7 binomial standard deviations
    m.sum().backward()
    assert torch.equal(p.grad, a - b)                                       # d/dp of p a + (1 - p) b


def test_generator_keeps_the_hand_within_the_offset_bound_and_paints_only_background():
    """Whatever the weights: a hand pixel is x + offset (|offset| <= bound) or a hole (+1); a
    background pixel is +1 or painted; at initialisation the output is x up to rare holes/paint."""
    torch.manual_seed(1)
    x = hand_crops(4, 64)
    G = SensorGenerator(ngf=4, n_blocks=1, offset_max_nu=0.02, fg_threshold=FG, paint_margin_px=6)
    y0 = G(x)
    hand = x < FG
    assert float((y0 - x).abs()[hand & (y0 < FG)].max()) == 0.0            # offset head starts at 0
    assert float((y0 != x).float().mean()) < 0.03                          # holes / paint start rare
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.5 * torch.randn_like(p))
    m = G.maps(x)
    y = m["out"]
    kept = hand & (y < FG)
    dev = (y - x).abs()[kept]
    assert float(dev.max()) <= 0.02 + 1e-6
    holes = y[hand & ~kept]
    assert holes.numel() > 0 and bool((holes == 1).all())                  # the rest of the hand: holes (+1)
    assert float(y[~hand].min()) >= -1.0 and float(y[~hand].max()) <= 1.0
    painted = ~hand & (y < FG)
    assert int(painted.sum()) > 0
    near = torch.nn.functional.max_pool2d(hand.float(), 2 * 6 + 1, 1, 6) > 0        # default margin 6 px
    assert not bool((painted & near).any())


def test_spectral_normalisation_converges_to_unit_spectral_norm():
    torch.manual_seed(2)
    conv = SNConv2d(3, 8, 3, 1, 1)
    for _ in range(50):
        w = conv.normalized_weight()
    sigma = torch.linalg.matrix_norm(w.detach().flatten(1), ord=2)
    assert abs(float(sigma) - 1.0) < 1e-3


@pytest.mark.parametrize("norm", ["instance", "spectral"])
def test_frozen_discriminator_passes_gradient_to_the_input_not_the_weights(norm):
    torch.manual_seed(3)
    D = MultiScaleDiscriminator(ndf=4, norm=norm)
    x = hand_crops().requires_grad_(True)
    sum(s.sum() for s in D(x, frozen=True)).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in D.parameters())
    sum(s.sum() for s in D(x)).backward()
    assert all(p.grad is not None for p in D.parameters())


def test_diff_augment_translates_with_background_fill():
    """One foreground pixel moves by the drawn shift (<= shift_frac * S); nothing else appears."""
    x = torch.ones(6, 1, 32, 32)
    x[:, 0, 16, 16] = -0.5
    y = diff_augment(x, torch.Generator().manual_seed(4), shift_frac=0.125, cutout_frac=0.0)
    for b in range(6):
        fg = (y[b, 0] < 1).nonzero()
        assert fg.shape[0] == 1 and float(y[b, 0][tuple(fg[0])]) == -0.5
        assert (fg[0] - 16).abs().max() <= 4
    z = diff_augment(torch.zeros(2, 1, 32, 32), torch.Generator().manual_seed(5), shift_frac=0.0, cutout_frac=0.25)
    assert all(int((z[b] == 1).sum()) == 64 for b in range(2))                # one 8 x 8 cut-out each


def test_hinge_and_hole_budget_values():
    ones, minus = [torch.ones(2, 1, 4, 4)], [-torch.ones(2, 1, 4, 4)]
    assert float(hinge_discriminator_loss(ones, minus)) == 0.0
    assert float(hinge_discriminator_loss(minus, ones)) == 4.0
    assert float(hinge_generator_loss([torch.full((2, 1, 4, 4), 0.25)] * 2)) == -0.5
    hand = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    hand[..., :2, :] = True
    p = torch.where(hand, torch.tensor(0.1), torch.tensor(0.9))              # background holes do not count
    assert float(hole_budget_loss(p, hand, 0.2)) == 0.0
    assert float(hole_budget_loss(p, hand, 0.04)) == pytest.approx(0.06)


def toy_real(b: int, s: int, g: torch.Generator) -> torch.Tensor:
    """Real-like toy crops: the square hand plus a 'forearm' bar down to the bottom border."""
    x = hand_crops(b, s, int(torch.randint(1 << 30, (), generator=g)))
    x[:, :, 3 * s // 4:, 3 * s // 8: 5 * s // 8] = 0.4
    return x


def test_sensor_gan_learns_to_paint_the_missing_forearm_and_keeps_the_hand():
    """A few hundred steps on toy domains: the generator paints background where real crops have
    the forearm (foreground fraction moves toward real) while the hand stays within the bound."""
    from stages.transfer_sensor import SensorGAN, make_sensor_optimizer, sensor_losses
    torch.manual_seed(6)
    cfg = make_config(["gan_arch=sensor", "gan_ngf=8", "gan_blocks=1", "gan_ndf=8", "gan_lr=1e-3", "gan_lr_d=2e-3",
                       "gan_diff_augment=false", "gan_paint_margin_px=0"])     # the toy forearm touches the hand
    model = SensorGAN(cfg)
    opt = make_sensor_optimizer(model, cfg)
    g = torch.Generator().manual_seed(7)
    for _ in range(150):
        x_s, x_r = hand_crops(8, 32, int(torch.randint(1 << 30, (), generator=g))), toy_real(8, 32, g)
        t = sensor_losses(model(x_s, x_r), cfg)
        opt.zero_grad()
        t["loss"].backward()
        opt.step()
    x = hand_crops(16, 32, 99)
    with torch.no_grad():
        y = model.G_A(x)
    arm = torch.zeros_like(x, dtype=torch.bool)
    arm[:, :, 3 * 32 // 4:, 3 * 32 // 8: 5 * 32 // 8] = True
    painted_arm = float((y[arm] < FG).float().mean())
    painted_elsewhere = float((y[(x >= FG) & ~arm] < FG).float().mean())
    assert painted_arm > 0.5 and painted_elsewhere < 0.2, (painted_arm, painted_elsewhere)
    hand = x < FG
    kept = hand & (y < FG)
    assert float((y - x).abs()[kept].max()) <= cfg.gan_offset_max_nu + 1e-6


def test_sensor_checkpoint_round_trip_through_load_translator(tmp_path):
    """load_translator rebuilds the SensorGenerator of a gan_arch=sensor checkpoint: same weights,
    same output for the same random draws, frozen and in eval mode."""
    from models.translator import load_translator, translate
    from stages.transfer_sensor import SensorGAN
    cfg = make_config(["gan_arch=sensor", "gan_ngf=4", "gan_blocks=1", "gan_ndf=4", "gan_offset_max_nu=0.02"])
    torch.manual_seed(8)
    model = SensorGAN(cfg)
    with torch.no_grad():
        model.G_A.head.weight.normal_(0, 0.5)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "step": 1}, tmp_path / "best.pt")
    G = load_translator(str(tmp_path / "best.pt"), "cpu")
    assert isinstance(G, SensorGenerator) and G.offset_max_nu == 0.02
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    x = hand_crops(2, 32, 9)
    model.eval()
    torch.manual_seed(10)
    with torch.no_grad():
        ref = model.G_A(x)
    torch.manual_seed(10)
    assert torch.equal(translate(G, x), ref)
