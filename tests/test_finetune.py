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
    p[:, 61] += 0.08  # 10 mm too far: the original's absolute gate calls the fit unreliable
    import dataclasses
    s = SimpleNamespace(**{**vars(s), "cfg": dataclasses.replace(s.cfg, reliability_mode="absolute")})
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


def test_mean_teacher_equal_to_the_student_changes_nothing(scene):
    """A teacher whose outputs equal the student's gives exactly the self-taught losses: the teacher's
    own gate inputs (recomputed from its mesh) are the student's residuals."""
    s = scene
    p = s.params.clone()
    p[:, 61] += 0.02
    outs = stage_outputs(s, [p])
    teacher = [SimpleNamespace(maps=o.maps.detach(), params=o.params.detach(), render=None) for o in outs]
    own, own_stats = losses_of(s, outs)
    from losses.finetune import real_losses
    taught, stats = real_losses(outs, s.depth, s.center, s.cube, s.K_crop, s.renderer, s.hand_model, s.cfg,
                                generator=torch.Generator().manual_seed(0), teacher_outputs=teacher)
    assert own.keys() == taught.keys()
    for k in own:
        torch.testing.assert_close(taught[k], own[k], rtol=1e-5, atol=1e-8)
    assert stats == pytest.approx(own_stats)


def test_mean_teacher_sets_the_targets(scene):
    """With a teacher whose hand is 5 mm farther, pixel -> model pulls the student's (true) model joints
    toward the teacher's decoded joints: farther; the model -> pixel target is the teacher's model."""
    from models.densemap import encode
    s = scene
    outs = stage_outputs(s, [s.params])
    far = s.params.clone()
    far[:, 61] += 0.04                       # 5 mm at cube 250 (half-cube 125 mm per nu)
    with torch.no_grad():
        r_far = s.renderer.render_params(far, s.center, s.cube, s.K_crop)
    maps_far = encode(r_far.joints_uvd, s.depth, s.cfg.map_size, s.cfg.kernel_radius_nu, s.cfg.fg_threshold_nu)
    teacher = [SimpleNamespace(maps=maps_far, params=far, render=None)]
    from losses.finetune import real_losses
    terms, _ = real_losses(outs, s.depth, s.center, s.cube, s.K_crop, s.renderer, s.hand_model, s.cfg,
                           generator=torch.Generator().manual_seed(0), teacher_outputs=teacher)
    assert float(terms["real/s1_pixel_to_model"]) > 1e-3
    g, = torch.autograd.grad(terms["real/s1_pixel_to_model"], [outs[0].params])
    assert g[:, 61].lt(0).all()              # descent moves the student's hand farther, toward the teacher


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


@pytest.mark.parametrize("teacher", ["self", "average"])
def test_finetune_step_runs_changes_weights_and_never_reads_labels(tmp_path, monkeypatch, hand_model, teacher):
    import stages.finetune as ft
    from datasets.synthetic import SyntheticHands
    from models.dual_branch import DualBranchNet, NetConfig
    from render.hand_renderer import HandRenderer
    from stages.checkpoints import load_checkpoint, save_checkpoint

    args = ["train_stage=finetune", "dataset=nyu", "net=tiny", "batch_size=2", "max_steps=1", "num_workers=0",
            "device=cpu", "hand_model=standin", "progress=false", "log_interval=1", "image_log_interval=0",
            f"out_dir={tmp_path / 'ft'}", f"load_model={tmp_path / 'init.pt'}", f"finetune_teacher={teacher}"]
    cfg = make_config(args)
    renderer = HandRenderer(hand_model)
    torch.manual_seed(0)
    net = DualBranchNet(NetConfig.from_config(cfg), renderer)
    save_checkpoint(tmp_path / "init.pt", {"model": net.state_dict()})
    real = SyntheticHands(cfg, hand_model, renderer, "original").batch(4, torch.Generator().manual_seed(5), "cpu")
    calls = []

    def fake_build_dataset(c, split, labels):
        calls.append((split, labels))
        assert labels is False and split in ("train", "val")
        return GuardDataset(real, 2)

    import stages.common
    monkeypatch.setattr(stages.common, "build_dataset", fake_build_dataset)  # real_splits' loader
    result = ft.run(cfg)
    assert sorted(calls) == [("train", False), ("val", False)]
    assert result["step"] == 1 and math.isfinite(result["last_losses"]["loss"])
    keys = set(result["last_losses"])
    assert {"synth/s1/maps", "synth/s2/pwe_joints", "synth/s2/mpe_joints", "synth/s1/mpe_verts", "synth/s1/collision",
            "synth/s2/collision", "real/s1_distill_maps", "real/s1_render", "real/s2_part_mesh",
            "real/s2_pixel_to_model", "real/s2_model_to_pixel"} <= keys
    assert not any("shape_prior" in k or k.endswith("/scale") for k in keys)  # no priors in fine-tuning
    after = load_checkpoint(tmp_path / "ft" / "latest.pt")["model"]
    params = dict(net.named_parameters())
    changed = [k for k, v in params.items() if not torch.equal(v.detach(), after[k])]
    assert any(k.startswith("stage1.") for k in changed) and any(k.startswith("stage2.") for k in changed)
    assert (tmp_path / "ft" / "best.pt").is_file()


def test_t21_real_frames_smoke(shared_data, hand_model):
    """T21: one real batch from NYU test frame 1 and a mirrored Kinect v2 frame (own intrinsics):
    every loss finite, gradients reach both stages, and the stage-1 MPE head through the rendering."""
    import numpy as np
    from datasets.common import crop_sample, mirror_frame
    from datasets.depth_io import read_nyu_depth, read_png16
    from losses.finetune import real_losses
    from models.dual_branch import DualBranchNet, NetConfig
    from render.camera import backproject, crop_frame_mask
    from render.hand_renderer import HandRenderer

    K_nyu = np.array([[588.03, 0, 320.0], [0, 587.07, 240.0], [0, 0, 1]])
    K_k2 = np.array([[363.9, 0, 255.4], [0, 363.9, 206.3], [0, 0, 1]])
    nyu = read_nyu_depth(shared_data / "nyu_real" / "depth_1_0000001.png")
    c_nyu = np.loadtxt(shared_data / "centers" / "nyu" / "center_test_refined.txt", max_rows=1) * [1, -1, 1]
    k2 = mirror_frame(read_png16(shared_data / "kinect2" / "00000001.png"), 255.4)
    near = (k2 > 0) & (k2 < k2[k2 > 0].min() + 100.0)  # the nearest blob: the hand
    rows, cols = np.nonzero(near)
    uvz = torch.tensor(np.stack([cols, rows, k2[rows, cols]], -1), dtype=torch.float64)
    c_k2 = backproject(uvz, torch.tensor(K_k2)).mean(0).numpy()
    cube = np.array([250.0, 250.0, 250.0])
    crops = [crop_sample(f, c, cube, K) for f, c, K in ((nyu, c_nyu, K_nyu), (k2, c_k2, K_k2))]
    depth = torch.stack([d for d, _ in crops])
    M = torch.tensor(np.stack([A for _, A in crops]), dtype=torch.float32)
    K = torch.tensor(np.stack([K_nyu, K_k2]), dtype=torch.float32)
    center = torch.tensor(np.stack([c_nyu, c_k2]), dtype=torch.float32)
    cubes = torch.full((2, 3), 250.0)
    K_crop = M @ K
    frame_mask = torch.cat([crop_frame_mask(M[:1], (480, 640)), crop_frame_mask(M[1:], (424, 512))])
    assert ((depth < 0.99).flatten(1).sum(1) > 200).all()  # both crops hold a hand

    cfg = make_config(["net=tiny", "stage_num=2", "hand_model=standin"])
    renderer = HandRenderer(hand_model)
    torch.manual_seed(0)
    net = DualBranchNet(NetConfig.from_config(cfg), renderer)
    start = torch.zeros(62)
    start[0], start[58] = math.pi, 1.0
    start[59:62] = -hand_model.mano_mm(start[None])[1].mean(dim=1)[0] / 125.0
    with torch.no_grad():  # both MPE heads start at a plausible hand at the crop centre
        net.stage1.heads.params.bias.copy_(start)
        net.stage2.heads.params.bias.copy_(start)
    batch = GuardDict(depth=depth, center=center, cube=cubes, K_crop=K_crop)
    outs = net(batch["depth"], batch["center"], batch["cube"], batch["K_crop"])
    terms, stats = real_losses(outs, batch["depth"], batch["center"], batch["cube"], batch["K_crop"], renderer,
                               hand_model, cfg, frame_mask=frame_mask, generator=torch.Generator().manual_seed(0))
    assert stats["valid_fraction"] == 1.0
    assert all(bool(torch.isfinite(v)) for v in terms.values()), terms
    assert float(terms["real/s1_render"]) > 0 and float(terms["real/s2_data_mesh"]) > 0
    p1, p2 = net.stage1.heads.params.weight, net.stage2.heads.params.weight
    g1, g2 = torch.autograd.grad(sum(terms.values()), [p1, p2], retain_graph=True)
    assert torch.isfinite(g1).all() and torch.isfinite(g2).all() and g1.abs().sum() > 0 and g2.abs().sum() > 0
    (g_render,) = torch.autograd.grad(terms["real/s1_render"], [net.stage1.heads.params.bias])
    assert torch.isfinite(g_render).all() and g_render.abs().sum() > 0  # through the rendered depth
