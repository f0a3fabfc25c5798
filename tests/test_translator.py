"""Consis-CycleGAN: networks, losses, image pool, training steps, checkpoint round trip (T17)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from config import make_config
from losses.translation import (cycle_loss, erode_mask, foreground_consistency, foreground_fidelity,
                                hand_mask, lsgan_discriminator_loss, lsgan_generator_loss,
                                symmetric_foreground_consistency)
from models.translator import (ImagePool, PatchDiscriminator, ResnetGenerator, build_networks,
                               load_translator, snap_background, translate, translator_state)

FG = 0.99


def blob_crops(b: int = 2, s: int = 32, seed: int = 0) -> torch.Tensor:
    """Synthetic-like crops (b, 1, s, s): a disc of depth in (-0.3, 0.3) on background +1."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(s, dtype=torch.float32)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    out = torch.ones(b, 1, s, s)
    for i in range(b):
        cy, cx = (s / 2 + torch.randn((), generator=g) * 2).item(), (s / 2 + torch.randn((), generator=g) * 2).item()
        r = s / 4 + torch.rand((), generator=g).item() * 2
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        depth = 0.3 * torch.tanh((xx - cx) / s) + 0.05 * torch.randn((s, s), generator=g)
        out[i, 0] = torch.where(disc, depth, out[i, 0])
    return out


# ---- networks ------------------------------------------------------------------------------------
def test_generator_shape_and_range():
    torch.manual_seed(0)
    G = ResnetGenerator(ngf=4, n_blocks=2)
    x = blob_crops(2, 64)
    y = G(x * 50.0)  # even extreme inputs stay in the tanh range
    assert y.shape == x.shape
    assert y.min() >= -1.0 and y.max() <= 1.0


def test_original_sizes():
    """ngf=64, 9 blocks: the CycleGAN ResNet-9 generator (~11.37 M params); 70x70 PatchGAN -> 14x14."""
    G = ResnetGenerator()
    assert abs(sum(p.numel() for p in G.parameters()) - 11_365_633) == 0
    assert sum(isinstance(m, nn.InstanceNorm2d) and not m.affine for m in G.modules()) == 5 + 2 * 9
    D = PatchDiscriminator(ndf=8)
    assert D(torch.zeros(1, 1, 128, 128)).shape == (1, 1, 14, 14)


def test_translate_snaps_and_has_no_grad():
    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return x + self.w - 0.005

    x = torch.tensor([[[[1.0, 0.996, 0.5, -0.2]]]])
    y = translate(Shift(), x, snap_threshold=FG)
    assert not y.requires_grad
    assert torch.allclose(y, torch.tensor([[[[1.0, 1.0, 0.495, -0.205]]]]))
    assert torch.allclose(translate(Shift(), x), x - 0.005)
    assert torch.equal(snap_background(x, FG), torch.tensor([[[[1.0, 1.0, 0.5, -0.2]]]]))


# ---- consistency terms ---------------------------------------------------------------------------
def test_fg_consistency_zero_for_identity_and_off_mask_changes():
    x = blob_crops(3, 32)
    mask = hand_mask(x, FG)
    assert mask.sum() > 100
    assert foreground_consistency(x.clone(), x, FG).item() == 0.0
    off = torch.where(mask, x, torch.rand_like(x) * 2 - 1)  # background rewritten entirely
    assert not torch.equal(off, x)
    assert foreground_consistency(off, x, FG).item() == 0.0


def test_fg_consistency_positive_for_hand_change():
    x = blob_crops(3, 32)
    mask = hand_mask(x, FG)
    changed = torch.where(mask, x - 0.1, x)
    assert foreground_consistency(changed, x, FG).item() == pytest.approx(0.1, abs=1e-6)
    one_px = x.clone()
    idx = mask.flatten().nonzero()[0, 0]
    one_px.view(-1)[idx] += 0.5
    assert foreground_consistency(one_px, x, FG).item() == pytest.approx(0.5 / mask.sum().item(), rel=1e-5)


def test_erosion_frees_edge_pixels():
    x = blob_crops(2, 32)
    full, inner = hand_mask(x, FG), hand_mask(x, FG, erode_px=1)
    edge = full & ~inner
    assert inner.sum() > 0 and edge.sum() > 0 and not (inner & ~full).any()
    holes = torch.where(edge, torch.ones_like(x), x)  # edge pixels dropped to background
    assert foreground_consistency(holes, x, FG, erode_px=1).item() == 0.0
    assert foreground_consistency(holes, x, FG, erode_px=0).item() > 0.0
    m = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    m[..., 1:4, 1:4] = True
    assert erode_mask(m, 1).sum() == 1 and erode_mask(m, 1)[0, 0, 2, 2]
    assert torch.equal(erode_mask(m, 0), m)


def test_symmetric_consistency_allows_clutter_removal_only():
    x_r = blob_crops(2, 32, seed=3)
    fg = x_r < FG
    removed = x_r.clone()
    removed[..., :, :16] = 1.0  # clutter removal: foreground turned into background
    assert symmetric_foreground_consistency(removed, x_r, FG).item() == 0.0
    reshaped = torch.where(fg, x_r + 0.2, x_r)
    assert symmetric_foreground_consistency(reshaped, x_r, FG).item() == pytest.approx(0.2, abs=1e-5)


def test_fidelity_statistics():
    x = blob_crops(2, 32)
    mask = hand_mask(x, FG)
    y = torch.where(mask, x + 0.02, x)
    flat = y.view(-1)
    lost = mask.flatten().nonzero()[:10, 0]
    flat[lost] = 1.0
    st = foreground_fidelity(y, x, FG, half_cube_mm=torch.tensor([125.0, 125.0]))
    assert st["fg_lost_frac"] == pytest.approx(10 / mask.sum().item())
    assert st["fg_abs_nu"] > 0.02 and st["fg_abs_mm"] == pytest.approx(125.0 * st["fg_abs_nu"], rel=1e-5)


def test_lsgan_values():
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert lsgan_generator_loss(ones).item() == 0.0 and lsgan_generator_loss(zeros).item() == 1.0
    assert lsgan_discriminator_loss(ones, zeros).item() == 0.0
    assert lsgan_discriminator_loss(zeros, ones).item() == 1.0
    assert cycle_loss(zeros, ones).item() == 1.0


def test_pose_consistency_exact_maps_and_gradient_to_generator_only():
    from losses.translation import pose_consistency
    from models.densemap import encode
    x = blob_crops(2, 32)
    g = torch.Generator().manual_seed(1)
    joints = torch.cat([torch.rand(2, 21, 2, generator=g) * 0.4 - 0.2, torch.zeros(2, 21, 1)], -1)
    maps = encode(joints, x, 16, 0.8)
    assert pose_consistency(maps, x, joints, 0.8, 30.0, 0.01, FG).item() < 1e-3
    G = ResnetGenerator(ngf=2, n_blocks=1)
    pose_net = nn.Conv2d(1, 84, 2, stride=2)
    for p in pose_net.parameters():
        p.requires_grad_(False)
    loss = pose_consistency(pose_net(G(x)), x, joints, 0.8, 30.0, 0.01, FG)
    loss.backward()
    assert all(p.grad is None for p in pose_net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())


# ---- image pool ----------------------------------------------------------------------------------
def test_image_pool():
    pool = ImagePool(4, torch.Generator().manual_seed(0))
    a = torch.arange(4.0).reshape(4, 1, 1, 1)
    assert torch.equal(pool.query(a), a) and len(pool.images) == 4
    out = pool.query(a + 10)
    assert out.shape == a.shape
    assert all(v.item() in set(range(4)) | set(range(10, 14)) for v in out.flatten())
    assert sorted(t.item() for t in pool.images + list(out)) == sorted(list(range(4)) + list(range(10, 14)))
    assert torch.equal(ImagePool(0).query(a), a)


# ---- training steps and checkpoints --------------------------------------------------------------
def tiny_cfg(**kw):
    return make_config([], gan_ngf=4, gan_blocks=1, gan_ndf=4, gan_pool_size=4, **kw)


def test_steps_reduce_losses():
    from stages.transfer import CycleGAN
    torch.manual_seed(0)
    cfg = tiny_cfg(gan_lr=2e-3)
    gan = CycleGAN(cfg, torch.device("cpu"))
    x_s, x_r = blob_crops(4, 32, seed=1), blob_crops(4, 32, seed=2).clamp(max=0.995) * 0.9
    hist = [gan.step(x_s, x_r)[0] for _ in range(25)]
    for key in ("fg", "cyc", "idt", "G"):
        first, last = sum(h[key] for h in hist[:3]) / 3, sum(h[key] for h in hist[-3:]) / 3
        assert last < 0.7 * first, (key, first, last)
    assert all(torch.isfinite(torch.tensor(h["D"])) for h in hist)


def test_checkpoint_round_trip(tmp_path):
    from stages.transfer import CycleGAN
    torch.manual_seed(0)
    gan = CycleGAN(tiny_cfg(), torch.device("cpu"))
    gan.step(blob_crops(2, 32, 1), blob_crops(2, 32, 2))
    path = tmp_path / "latest.pt"
    torch.save({"step": 1, "extra": gan.state_dict()}, path)
    G = load_translator(str(path), "cpu")
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    x = blob_crops(2, 32, 5)
    gan.nets["G_A"].eval()
    with torch.no_grad():
        assert torch.equal(G(x), gan.nets["G_A"](x))
    gan2 = CycleGAN(tiny_cfg(), torch.device("cpu"))
    gan2.load_state_dict(torch.load(path, weights_only=False)["extra"])
    for k in ("G_A", "G_B", "D_A", "D_B"):
        for a, b in zip(gan.nets[k].state_dict().values(), gan2.nets[k].state_dict().values()):
            assert torch.equal(a, b)
    assert load_translator("", "cpu") is None
    with pytest.raises(FileNotFoundError):
        load_translator(str(tmp_path / "missing.pt"), "cpu")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(KeyError):
        load_translator(str(tmp_path / "other.pt"), "cpu")


def test_translator_state_keys():
    nets = build_networks(2, 1, 2)
    st = translator_state(nets["G_A"], nets["G_B"], nets["D_A"], nets["D_B"])
    assert st["arch"]["G"] == {"in_ch": 1, "out_ch": 1, "ngf": 2, "n_blocks": 1}
    assert set(st) == {"arch", "G_A", "G_B", "D_A", "D_B"}
