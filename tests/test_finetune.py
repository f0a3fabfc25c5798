"""Fine-tuning losses and stage (spec 10.3-10.7, T21): a self-consistent real batch costs ~nothing,
a perturbed one costs and has finite gradients; the stage trains on CPU without touching labels."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from config import make_config
from render.camera import crop_intrinsics, crop_transform, make_intrinsics

B = 2


@pytest.fixture(scope="module")
def scene(hand_model):
    """Two hands in network space, their renderings used as the 'real' crops."""
    from render.hand_renderer import HandRenderer
    renderer = HandRenderer(hand_model)
    params = torch.zeros(B, 62)
    params[:, 0] = math.pi  # palm towards the camera (any fixed view will do)
    params[1, 1] = 0.4
    params[:, 58] = 1.0
    _, joints_mm = hand_model.mano_mm(params)
    params[:, 59:62] = -joints_mm.mean(dim=1) / 125.0  # centre the hand on the crop centre
    K = make_intrinsics(588.03, 587.07, 320.0, 240.0).expand(B, 3, 3)
    center = torch.tensor([[0.0, 0.0, 600.0], [10.0, -5.0, 700.0]])
    cube = torch.full((B, 3), 250.0)
    K_crop = crop_intrinsics(K, crop_transform(center, cube, K))
    with torch.no_grad():
        r = renderer.render_params(params, center, cube, K_crop)
    return SimpleNamespace(hand_model=hand_model, renderer=renderer, params=params, center=center, cube=cube, K_crop=K_crop,
                           depth=r.depth.clone(), cfg=make_config(["hand_model=standin"]))


def stage_outputs(scene, params_per_stage: list[torch.Tensor]):
    """StageOutput-like records whose maps encode the true joints of the observed crop."""
    from models.densemap import encode
    cfg, outs = scene.cfg, []
    with torch.no_grad():
        true = scene.renderer.render_params(scene.params, scene.center, scene.cube, scene.K_crop)
    maps = encode(true.joints_uvd, scene.depth, cfg.map_size, cfg.kernel_radius_nu, cfg.fg_threshold_nu)
    for p in params_per_stage:
        p = p.clone().requires_grad_(True)
        render = scene.renderer.render_params(p, scene.center, scene.cube, scene.K_crop)
        outs.append(SimpleNamespace(maps=maps.clone().requires_grad_(True), params=p, render=render))
    return outs


def losses_of(scene, outs, seed: int = 0):
    from losses.finetune import real_losses
    return real_losses(outs, scene.depth, scene.center, scene.cube, scene.K_crop, scene.renderer,
                       scene.hand_model, scene.cfg, generator=torch.Generator().manual_seed(seed))


def test_self_consistent_two_stage_batch_costs_nothing(scene):
    s = scene
    terms, stats = losses_of(s, stage_outputs(s, [s.params, s.params]))
    assert stats["valid_fraction"] == 1.0
    for name in ("render", "data_mesh"):
        for st in (1, 2):
            assert float(terms[f"real/s{st}_{name}"]) < 1e-6, name
    assert float(terms["real/s1_distill_maps"]) == 0.0
    assert float(terms["real/s1_distill_mpe_verts"]) == 0.0
    assert float(terms["real/s1_distill_pwe_joints"]) < 1e-6
    assert float(terms["real/s2_pixel_to_model"]) < 1e-3  # decode(encode(J)) ~ J
    # part-aware residual: points on the mesh, labelled by the spheres: small (< (2 mm)^2)
    assert float(terms["real/s2_part_mesh"]) < (2.0 / 125) ** 2
    assert stats["reliable_joint_fraction"] > 0.5
    assert "real/s2_distill_maps" not in terms and "real/s1_pixel_to_model" not in terms


def test_perturbed_stage_one_costs_with_finite_gradients(scene):
    s = scene
    p1 = s.params.clone()
    p1[:, 61] += 0.03  # stage 1 puts the hand 3.75 mm farther away
    outs = stage_outputs(s, [p1, s.params])
    terms, _ = losses_of(s, outs)
    assert float(terms["real/s1_render"]) > 1e-4 and float(terms["real/s1_data_mesh"]) > 1e-6
    assert float(terms["real/s1_distill_mpe_verts"]) > 0
    assert float(terms["real/s2_render"]) < 1e-6
    total = sum(terms.values())
    g1, g2 = torch.autograd.grad(total, [outs[0].params, outs[1].params], allow_unused=True)
    assert torch.isfinite(g1).all() and g1[:, 61].gt(0).all()  # descent pulls the hand nearer
    assert g2 is None or torch.isfinite(g2).all()


def test_one_stage_variant_and_unreliable_fit(scene):
    s = scene
    p = s.params.clone()
    p[:, 61] += 0.08  # 10 mm too far: the fit is unreliable, nothing taught model -> pixel
    terms, stats = losses_of(s, stage_outputs(s, [p]))
    assert set(k.split("_", 1)[1] for k in terms) >= {"render", "data_mesh", "part_mesh", "collision",
                                                      "pixel_to_model", "model_to_pixel"}
    assert not any("distill" in k for k in terms) and all(k.startswith("real/s1_") for k in terms)
    assert stats["reliable_joint_fraction"] == 0.0 and float(terms["real/s1_model_to_pixel"]) == 0.0
    assert float(terms["real/s1_render"]) > 0


def test_empty_crop_is_excluded(scene):
    s = scene
    depth = s.depth.clone()
    depth[1] = 1.0  # no foreground in the second crop
    from losses.finetune import real_losses
    terms, stats = real_losses(stage_outputs(s, [s.params, s.params]), depth, s.center, s.cube, s.K_crop,
                               s.renderer, s.hand_model, s.cfg, generator=torch.Generator().manual_seed(0))
    assert stats["valid_fraction"] == 0.5
    assert all(torch.isfinite(v) for v in terms.values())
    assert float(terms["real/s2_data_mesh"]) < 1e-6  # the valid sample fits; the empty one is excluded


# ---- the stage -----------------------------------------------------------------------------
LABEL_KEYS = ("joints_uvd", "joints_xyz", "verts_xyz", "params")


class GuardDict(dict):
    """A sample that refuses any label access."""

    def __getitem__(self, k):
        if k in LABEL_KEYS:
            raise AssertionError(f"label '{k}' accessed by the fine-tuning loop")
        return super().__getitem__(k)

    def get(self, k, default=None):
        return self[k] if k in self else default


class GuardDataset(torch.utils.data.Dataset):
    """Real-like crops (rendered stand-in hands) served without labels."""

    def __init__(self, samples: dict, n: int):
        self.samples, self.n = samples, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return GuardDict({k: self.samples[k][i].clone() for k in ("depth", "center", "cube", "M", "K")},
                         index=torch.tensor(i))

    def __getattr__(self, name):
        if "label" in name or "joint" in name:
            raise AssertionError(f"label attribute '{name}' accessed")
        raise AttributeError(name)


def test_finetune_step_runs_changes_weights_and_never_reads_labels(tmp_path, monkeypatch, hand_model):
    import stages.finetune as ft
    from datasets.synthetic import SyntheticHands
    from models.dual_branch import DualBranchNet
    from render.hand_renderer import HandRenderer
    from stages.engine import load_checkpoint, save_checkpoint

    args = ["train_stage=finetune", "dataset=nyu", "net=tiny", "batch_size=2", "max_steps=1", "num_workers=0",
            "device=cpu", "hand_model=standin", "progress=false", "log_interval=1", "image_log_interval=0",
            f"out_dir={tmp_path / 'ft'}", f"load_model={tmp_path / 'init.pt'}"]
    cfg = make_config(args)
    renderer = HandRenderer(hand_model)
    torch.manual_seed(0)
    net = DualBranchNet(cfg, renderer)
    save_checkpoint(tmp_path / "init.pt", {"model": net.state_dict()})
    real = SyntheticHands(cfg, hand_model, renderer, "original").batch(4, torch.Generator().manual_seed(5), "cpu")
    calls = []

    def fake_build_dataset(c, split, labels):
        calls.append((split, labels))
        assert labels is False and split in ("train", "val")
        return GuardDataset(real, 2)

    monkeypatch.setattr(ft, "build_dataset", fake_build_dataset)
    result = ft.run(cfg)
    assert sorted(calls) == [("train", False), ("val", False)]
    assert result["step"] == 1 and math.isfinite(result["last_losses"]["loss"])
    assert any(k.startswith("real/s1_") for k in result["last_losses"])
    after = load_checkpoint(tmp_path / "ft" / "latest.pt")["model"]
    params = dict(net.named_parameters())
    changed = [k for k, v in params.items() if not torch.equal(v.detach(), after[k])]
    assert any(k.startswith("stage1.") for k in changed) and any(k.startswith("stage2.") for k in changed)
    assert (tmp_path / "ft" / "best.pt").is_file()
