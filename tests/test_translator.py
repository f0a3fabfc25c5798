"""Consis-CycleGAN: networks, losses, image pool, training steps, checkpoint round trip (T17)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from config import make_config
from losses.translation import (cycle_loss, erode_mask, foreground_consistency, foreground_fidelity,
                                hand_mask, lsgan_discriminator_loss, lsgan_generator_loss,
                                symmetric_foreground_consistency)
from models.translator import (ImagePool, PatchDiscriminator, ResnetGenerator, load_translator,
                               snap_background, translate)

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


def test_fg_consistency_tolerance_is_a_hinge_per_sample():
    """gan_fg_tolerance_mm: deviations up to the tolerance cost nothing, beyond it the excess counts;
    the per-sample tolerance in nu is tol_mm / (cube_z / 2)."""
    from stages.transfer import fg_tolerance_nu
    x = blob_crops(2, 32)
    mask = hand_mask(x, FG)
    noisy = torch.where(mask, x + 0.02 * torch.sign(torch.randn_like(x)), x)
    assert foreground_consistency(noisy, x, FG, tolerance_nu=0.03).item() == 0.0
    assert foreground_consistency(noisy, x, FG, tolerance_nu=0.015).item() == pytest.approx(0.005, abs=1e-6)
    cfg = tiny_cfg(gan_fg_tolerance_mm=3.0)
    tol = fg_tolerance_nu(cfg, torch.tensor([[250.0, 250.0, 300.0], [150.0, 150.0, 200.0]]))
    assert tol.shape == (2, 1, 1, 1) and torch.allclose(tol.flatten(), torch.tensor([0.02, 0.03]))
    # sample 0 (tol 0.02) keeps its 0.02 deviations free, sample 1 (tol 0.03) too; 0.025 only costs in sample 0
    dev = torch.where(mask, x + 0.025, x)
    per = foreground_consistency(dev, x, FG, tolerance_nu=tol).item()
    n0, n = mask[0].sum().item(), mask.sum().item()
    assert per == pytest.approx(0.005 * n0 / n, rel=1e-4)


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
    maps = encode(joints, x, 16, 0.8, FG)
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


def test_single_backward_equals_alternating_updates():
    """Generator terms give D no gradient; discriminator terms give G no gradient."""
    from stages.transfer import ConsisCycleGAN, cyclegan_losses
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = ConsisCycleGAN(4, 1, 4)
    x_s, x_r = blob_crops(2, 32, 1), blob_crops(2, 32, 2)
    t = cyclegan_losses(model(x_s, x_r), x_s, x_r, cfg)
    g_grads = torch.autograd.grad(t["G"], list(model.parameters()), allow_unused=True)
    names = [n for n, _ in model.named_parameters()]
    assert all(g is None for n, g in zip(names, g_grads) if n.startswith("D_"))
    assert all(g is not None for n, g in zip(names, g_grads) if n.startswith("G_"))
    t = cyclegan_losses(model(x_s, x_r), x_s, x_r, cfg)
    d_grads = torch.autograd.grad(t["D"], list(model.parameters()), allow_unused=True)
    assert all(g is None for n, g in zip(names, d_grads) if n.startswith("G_"))
    assert all(g is not None for n, g in zip(names, d_grads) if n.startswith("D_"))


def train_tiny(steps: int, lr: float = 2e-3, **kw):
    from stages.transfer import ConsisCycleGAN, cyclegan_losses, make_optimizer
    torch.manual_seed(0)
    cfg = tiny_cfg(gan_lr=lr, **kw)
    model = ConsisCycleGAN(cfg.gan_ngf, cfg.gan_blocks, cfg.gan_ndf)
    opt, _ = make_optimizer(model, cfg)
    pool = ImagePool(4, torch.Generator().manual_seed(0)), ImagePool(4, torch.Generator().manual_seed(1))
    x_s, x_r = blob_crops(4, 32, seed=1), blob_crops(4, 32, seed=2).clamp(max=0.995) * 0.9
    hist = []
    for _ in range(steps):
        t = cyclegan_losses(model(x_s, x_r, *pool), x_s, x_r, cfg)
        opt.zero_grad()
        t["loss"].backward()
        opt.step()
        hist.append({k: float(v.detach()) for k, v in t.items()})
    return model, cfg, hist


def _mean(hist, key, rows):
    return sum(h[key] for h in hist[rows]) / len(hist[rows])


def test_steps_reduce_losses_and_hand_term_keeps_the_hand():
    """60 steps: the reconstruction terms fall far (measured ~11x, asserted 3x) and so does L_G; the
    hand consistency is a constraint, not a falling curve: it is judged against the same run without
    it (measured 0.072 vs 0.151 nu, asserted a 0.7x margin)."""
    _, _, hist = train_tiny(60)
    for key, factor in (("cyc", 0.3), ("idt", 0.3), ("G", 0.5)):
        first, last = _mean(hist, key, slice(0, 3)), _mean(hist, key, slice(-10, None))
        assert last < factor * first, (key, first, last)
    assert all(torch.isfinite(torch.tensor(h["D"])) for h in hist)
    _, _, free = train_tiny(60, w_gan_fg=0.0)
    kept, drift = _mean(hist, "fg", slice(-10, None)), _mean(free, "fg", slice(-10, None))
    assert kept < 0.7 * drift, (kept, drift)


def test_lr_schedule():
    from stages.transfer import lr_factor
    assert [lr_factor(e, 2, 3) for e in range(6)] == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]


def test_checkpoint_round_trip(tmp_path):
    model, cfg, _ = train_tiny(2)
    path = tmp_path / "latest.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "step": 2}, path)
    G = load_translator(str(path), "cpu")
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    x = blob_crops(2, 32, 5)
    model.eval()
    with torch.no_grad():
        ref = model.G_A(x)
    assert torch.equal(translate(G, x), ref)
    assert load_translator("", "cpu") is None and load_translator(None) is None
    with pytest.raises(FileNotFoundError):
        load_translator(str(tmp_path / "missing.pt"), "cpu")
    torch.save({"model": {"conv.weight": torch.zeros(1)}, "config": cfg.to_dict()}, tmp_path / "other.pt")
    with pytest.raises(KeyError):
        load_translator(str(tmp_path / "other.pt"), "cpu")


def test_validation_and_selection():
    from stages.transfer import selection_key, translation_grid, validate_translator
    cfg = tiny_cfg()
    x = blob_crops(3, 32)
    st = validate_translator(nn.Identity(), x, torch.full((3,), 250.0), cfg)
    assert st["fg_abs_nu"] == 0.0 and st["fg_lost_frac"] == 0.0 and st["out_of_range"] == 0.0
    assert selection_key(st, 200) < selection_key(st, 100) < selection_key({"fg_abs_nu": 0.05, "fg_lost_frac": 0}, 300)
    imgs = {k: x for k in ("synthetic", "translated", "reconstructed", "real", "real_to_synthetic")}
    g = translation_grid(imgs, n=2)
    assert g.shape == (3, 64, 160) and g.min() >= 0 and g.max() <= 1


# ---- the stage end to end (engine loop, checkpoints, resume) on stand-in data --------------------
class _FakeHands:
    """Stands in for datasets.synthetic.SyntheticHands: 32x32 blob crops drawn from the generator."""

    def __init__(self, cfg, hand_model, renderer, rotation):
        self.rotation = rotation

    def batch(self, batch_size, generator, device):
        seed = int(torch.randint(0, 2 ** 31 - 1, (), generator=generator))
        return {"clean": blob_crops(batch_size, 32, seed).to(device), "cube": torch.full((batch_size, 3), 250.0)}


class _FakeHandModel(nn.Identity):
    def identity(self):
        return {"kind": "standin", "fingerprint": "0" * 16}


def test_stage_runs_checkpoints_and_resumes(tmp_path, monkeypatch):
    from stages import engine, transfer
    monkeypatch.setattr(transfer, "build_hand_model", lambda cfg: _FakeHandModel())
    monkeypatch.setattr(engine, "resolved_hand_model", lambda cfg: "standin")
    monkeypatch.setattr(transfer, "HandRenderer", lambda hand, size: None)
    monkeypatch.setattr(transfer, "SyntheticHands", _FakeHands)
    real = [{"depth": blob_crops(1, 32, 100 + i)[0].clamp(max=0.995)} for i in range(4)]
    monkeypatch.setattr(transfer, "build_dataset", lambda cfg, split, labels: real)
    args = dict(train_stage="transfer", dataset="nyu", out_dir=str(tmp_path / "run"), device="cpu", num_workers=0, progress=False,
                gan_batch_size=2, gan_epochs_constant=1, gan_epochs_decay=2, val_size=4, log_interval=1,
                image_log_interval=2)
    res = transfer.run(tiny_cfg(**args))
    assert res["step"] == 6 and all(torch.isfinite(torch.tensor(v)) for v in res["last_losses"].values())
    assert {"fg_abs_nu", "fg_lost_frac", "select"} <= set(res["val"])
    for name in ("latest.pt", "best.pt"):
        G = load_translator(str(tmp_path / "run" / name))
        assert translate(G, blob_crops(1, 32)).shape == (1, 1, 32, 32)
    ck = torch.load(tmp_path / "run" / "latest.pt", weights_only=False)
    assert ck["step"] == 6 and len(ck["extra"]["pool_A"]["images"]) == 4
    assert ck["optimizer"]["param_groups"][0]["lr"] == 0.0  # after 1 constant + 2 decay epochs
    res2 = transfer.run(tiny_cfg(**{**args, "gan_epochs_decay": 3}, resume=True))
    assert res2["step"] == 8


def test_residual_option_round_trip(tmp_path):
    """Design option gan_residual: clamp(x + net(x)) starts near identity, stays in range, and is
    rebuilt as such by load_translator."""
    from stages.transfer import ConsisCycleGAN
    torch.manual_seed(0)
    model = ConsisCycleGAN(4, 1, 4, residual=True)
    x = blob_crops(2, 32)
    y = model.G_A(x * 3.0)
    assert y.min() >= -1 and y.max() <= 1
    assert foreground_consistency(model.G_A(x), x, FG).item() < 0.05
    cfg = tiny_cfg(gan_residual=True)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, tmp_path / "r.pt")
    G = load_translator(str(tmp_path / "r.pt"))
    assert G.residual and torch.equal(translate(G, x), model.G_A(x).detach())


def test_restoring_clamp_gradient_only_toward_the_range():
    """restoring_clamp: forward = clamp; backward passes inside the range, and outside only the
    gradients whose descent step moves the value back in (checked against the definition)."""
    from models.translator import restoring_clamp
    z = torch.tensor([-1.5, -0.5, 0.0, 0.9, 1.2, 1.2, -1.5], requires_grad=True)
    up = torch.tensor([1.0, 1.0, -1.0, 2.0, 1.0, -1.0, -1.0])    # d loss / d output
    y = restoring_clamp(z)
    assert torch.equal(y.detach(), z.detach().clamp(-1, 1))
    (y * up).sum().backward()
    # descent moves z by -grad: at 1.2 a positive grad lowers it (passes), a negative one would raise it
    assert z.grad.tolist() == [0.0, 1.0, -1.0, 2.0, 1.0, 0.0, -1.0]


def test_residual_generator_can_draw_on_the_background():
    """A loss that wants the +1 background nearer reaches the generator's last layer (a plain clamp
    or tanh would give ~0 there), and one that wants it farther does not (nothing would change)."""
    from models.translator import ResnetGenerator
    torch.manual_seed(0)
    G = ResnetGenerator(ngf=4, n_blocks=1, residual=True)
    with torch.no_grad():
        G.model[-1].bias.fill_(0.1)                        # every background pixel clamped at +1
    x = blob_crops(2, 32)
    bg = (x >= FG).float()
    (G(x) * bg).sum().backward()                           # wants background nearer (lower)
    assert G.model[-1].bias.grad.item() > 0                # descent lowers the bias: drawing is possible
    G.zero_grad()
    (-G(x) * bg).sum().backward()                          # wants it farther: already at +1
    assert G.model[-1].bias.grad.item() == 0.0
