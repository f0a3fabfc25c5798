"""Huber (T12), pretraining loss terms, and the pretraining stage: overfit (T20, small) and determinism
(T22, small) on the stand-in hand."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from config import make_config
from losses.huber import huber
from losses.pretrain import map_channels, pretrain_losses
from models import densemap
from models.dual_branch import StageOutput

S = 128


@pytest.mark.parametrize("z,value", [(0.005, 0.5 * 0.005 ** 2), (0.01, 0.01 * 0.005), (0.02, 0.01 * 0.015),
                                     (1.0, 0.01 * 0.995)])
def test_huber_values_t12(z, value):
    got = huber(torch.tensor([z], dtype=torch.float64), torch.zeros(1), 0.01)
    assert abs(got.item() - value) < 1e-9
    if z >= 0.01:
        assert abs(100 * got.item() - (z - 0.005)) < 1e-7
    assert abs(huber(torch.tensor([-z]), torch.zeros(1), 0.01).item() - value) < 1e-9


class LineHand:
    """Stub hand model: joints / vertices = fixed base shapes shifted by the translation t = params[59:62]."""

    def __init__(self, gen):
        self.joints = 0.3 * torch.rand(21, 3, generator=gen) - 0.15
        self.verts = 0.3 * torch.rand(50, 3, generator=gen) - 0.15

    def network_space(self, params):
        t = params[:, None, 59:62]
        return self.verts + t, self.joints + t


def _crop():
    t = (2.0 * torch.arange(S) + 1.0) / S - 1.0
    v, u = torch.meshgrid(t, t, indexing="ij")
    return torch.where(u ** 2 + v ** 2 < 0.5, 0.1 * u, torch.ones_like(u))[None, None]


def _perfect(cfg, gen):
    hand = LineHand(gen)
    ref = _crop()
    params = torch.zeros(1, 62)
    params[0, 58] = 1.0
    verts, joints = hand.network_space(params)
    uvd = joints.clone()
    uvd[..., 2] = 0.1 * uvd[..., 0]          # on the crop's surface: every joint near a foreground cell
    targets = {"joints_uvd": uvd, "joints_xyz": joints, "verts_xyz": verts}
    maps = densemap.encode(uvd, ref, cfg.map_size, cfg.kernel_radius_nu, cfg.fg_threshold_nu)
    return hand, ref, params, maps, targets


def test_perfect_prediction_has_zero_terms_and_priors_follow_definitions():
    cfg = make_config([], net="tiny")
    hand, ref, params, maps, targets = _perfect(cfg, torch.Generator().manual_seed(0))
    params[0, 48:58] = 0.2
    params[0, 58] = -0.5
    terms = pretrain_losses([StageOutput(maps, params)], targets, ref, hand, cfg)
    assert set(terms) == {f"s1/{k}" for k in ("maps", "pwe_joints", "mpe_joints", "mpe_verts", "shape_prior", "scale")}
    for k in ("maps", "pwe_joints", "mpe_joints", "mpe_verts"):
        assert terms[f"s1/{k}"].item() < 1e-9, k
    assert abs(terms["s1/shape_prior"].item() - cfg.w_shape_prior * 0.04) < 1e-6
    assert abs(terms["s1/scale"].item() - cfg.w_scale * 0.5) < 1e-7


def test_joint_offset_gives_l1_value_and_render_is_used_when_present():
    cfg = make_config([], net="tiny")
    hand, ref, params, maps, targets = _perfect(cfg, torch.Generator().manual_seed(1))
    shifted = params.clone()
    shifted[0, 59] += 0.1                                   # MANO joints and vertices 0.1 nu off in x
    terms = pretrain_losses([StageOutput(maps, shifted)], targets, ref, hand, cfg)
    expect = cfg.w_mpe_joints * 0.01 * (0.1 - 0.005) / 3   # L1 branch of H, averaged over x, y, z
    assert abs(terms["s1/mpe_joints"].item() - expect) < 1e-6
    render = SimpleNamespace(verts_xyz=targets["verts_xyz"], joints_xyz=targets["joints_xyz"])
    terms = pretrain_losses([StageOutput(maps, shifted, render)], targets, ref, hand, cfg)
    assert terms["s1/mpe_joints"].item() < 1e-9              # the stage's rendering is reused (R11)


def test_subset_of_joints_compares_only_their_channels():
    cfg = make_config([], net="tiny")
    hand, ref, params, maps, targets = _perfect(cfg, torch.Generator().manual_seed(2))
    ids = (0, 5, 17)
    sub = {"joints_uvd": targets["joints_uvd"][:, ids], "joints_xyz": targets["joints_xyz"][:, ids]}
    noisy = maps.clone()
    others = [c for c in range(84) if c not in map_channels(ids)]
    noisy[:, others] += 0.3
    terms = pretrain_losses([StageOutput(noisy, params)], sub, ref, hand, cfg, joint_ids=ids, priors=False)
    assert set(terms) == {"s1/maps", "s1/pwe_joints", "s1/mpe_joints"}
    assert all(v.item() < 1e-9 for v in terms.values())
    noisy[:, map_channels(ids)[0]] += 0.3
    assert pretrain_losses([StageOutput(noisy, params)], sub, ref, hand, cfg, joint_ids=ids)["s1/maps"] > 1e-4


# ---- the stage on the stand-in hand ---------------------------------------------------------------
def _stage_cfg(tmp_path, **kw):
    base = dict(net="tiny", hand_model="standin", device="cpu", batch_size=2, max_steps=2, synth_epoch_size=2,
                val_size=2, num_workers=0, progress=False, log_interval=1, image_log_interval=2, seed=5,
                out_dir=str(tmp_path))
    base.update(kw)
    return make_config([], **base)


def test_overfit_few_fixed_samples_t20_small():
    """T20 in small form: tiny net, 2 fixed synthetic samples, 25 steps -> loss and PWE term fall >= 5x."""
    from datasets.synthetic import SyntheticHands
    from render import camera
    from stages.common import build_parts

    torch.manual_seed(0)
    cfg = make_config([], net="tiny", stage_num=1, hand_model="standin", device="cpu")
    hand, rend, net = build_parts(cfg, torch.device("cpu"))
    s = SyntheticHands(cfg, hand, rend, "none").batch(2, torch.Generator().manual_seed(0), "cpu")
    K = camera.crop_intrinsics(s["K"], s["M"])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.0)
    history = []
    for _ in range(25):
        terms = pretrain_losses(net(s["clean"], s["center"], s["cube"], K), s, s["clean"], hand, cfg)
        loss = sum(terms.values())
        history.append((loss.item(), terms["s1/pwe_joints"].item()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert history[-1][0] < history[0][0] / 5
    assert history[-1][1] < history[0][1] / 5


def test_pretrain_stage_is_deterministic_t22_and_writes_outputs(tmp_path):
    from stages import pretrain
    a = pretrain.run(_stage_cfg(tmp_path / "a"))
    b = pretrain.run(_stage_cfg(tmp_path / "b"))
    assert a["last_losses"] == b["last_losses"] and a["val"] == b["val"]
    assert set(a["val"]) == {"s1_pwe_mm", "s1_mpe_mm", "s2_pwe_mm", "s2_mpe_mm"}
    assert all(0 < v < 1000 for v in a["val"].values())
    for name in ("latest.pt", "best.pt", "config.yaml"):
        assert (tmp_path / "a" / name).is_file()
    ck = torch.load(tmp_path / "a" / "latest.pt", weights_only=False)
    assert ck["step"] == 2 and any(k.startswith("stage2.") for k in ck["model"])


class _LabelledNyuLike(torch.utils.data.Dataset):
    """Real-format items (NYU joint order, 14 joints, PALM_2/3 without a network twin) made of
    synthetic samples; the labels are the synthetic targets in NYU order, PALM_2/3 by the palm map
    (as the evaluator predicts them), NaN (absent) in the first `missing` items."""

    def __init__(self, cfg, n, seed, missing=0):
        from datasets.synthetic import SyntheticHands
        from stages.common import build_parts
        hand, rend, _ = build_parts(cfg, torch.device("cpu"))
        s = SyntheticHands(cfg, hand, rend, "none").batch(n, torch.Generator().manual_seed(seed), "cpu")
        from datasets.nyu import nyu14_from_network
        from models.palm_landmarks import build_palm_landmarks
        palm_map = build_palm_landmarks(hand).palm_map
        uvd, xyz = (nyu14_from_network(s[k], palm_map) for k in ("joints_uvd", "joints_xyz"))
        self.items = [{"depth": s["clean"][i], "center": s["center"][i], "cube": s["cube"][i], "M": s["M"][i],
                       "K": s["K"][i], "index": torch.tensor(i), "joints_uvd": uvd[i], "joints_xyz": xyz[i]}
                      for i in range(n)]
        for it in self.items[:missing]:    # PALM_2/3 unlabelled in the first `missing` items
            it["joints_uvd"][12:] = float("nan")
            it["joints_xyz"][12:] = float("nan")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_supervised_stage_uses_mapped_real_labels(tmp_path, monkeypatch):
    from stages import common, supervised
    cfg = _stage_cfg(tmp_path, dataset="nyu", train_stage="supervised", stage_num=1, max_steps=2)
    sets = {"train": _LabelledNyuLike(cfg, 4, 1, missing=2), "val": _LabelledNyuLike(cfg, 2, 2)}
    calls = []

    def fake_build(c, split, labels):
        calls.append((split, labels))
        return sets[split]

    monkeypatch.setattr(common, "build_dataset", fake_build)
    out = supervised.run(cfg)
    assert calls == [("train", True), ("val", True)]
    assert set(out["last_losses"]) == {"loss", "s1/maps", "s1/pwe_joints", "s1/mpe_joints", "s1/shape_prior",
                                       "s1/scale", "s1/pwe_mapped", "s1/mpe_mapped"}   # no vertex term on real data
    assert set(out["val"]) == {"s1_pwe_mm", "s1_mpe_mm"}
    assert all(0 < v < 1000 for v in out["val"].values())
    assert all(math.isfinite(v) for v in out["last_losses"].values())  # absent PALM_2/3 labels were left out
    assert (tmp_path / "best.pt").is_file()


def test_mapped_palm_terms_vanish_at_the_evaluators_landmarks_and_train_the_mcp_joints():
    """PALM_2/3 labels equal to what the evaluator (datasets.nyu.nyu14_from_network) predicts from the
    network's joints give zero; moved labels give a gradient that reaches the unlabelled MCP joints."""
    from datasets.joints import NYU14
    from datasets.nyu import nyu14_from_network
    from models.dual_branch import NetConfig, decode_joints, encode_joints
    from stages.common import build_parts
    from stages.supervised import mapped_joint_terms, mapped_joints
    cfg = make_config(["net=tiny", "stage_num=1", "hand_model=standin"])
    hand, _, _ = build_parts(cfg, torch.device("cpu"))
    ids, palm_map = mapped_joints(cfg, NYU14, hand)
    assert ids == [12, 13] and torch.allclose(torch.as_tensor(palm_map).sum(1), torch.ones(3, dtype=torch.float64), atol=1e-6)
    gen = torch.Generator().manual_seed(3)
    params = torch.zeros(2, 62)
    params[:, 3:48] = 0.3 * torch.randn(2, 45, generator=gen)
    verts, joints = hand.network_space(params)
    ref = torch.ones(2, 1, S, S)
    ref[:, :, 32:96, 32:96] = 0.0
    net_cfg = NetConfig.from_config(cfg)
    maps = encode_joints(0.4 * torch.rand(2, 21, 3, generator=gen) - 0.2, ref, net_cfg).requires_grad_(True)
    jv = joints.detach().clone().requires_grad_(True)
    out = StageOutput(maps, params, SimpleNamespace(joints_xyz=jv, verts_xyz=verts.detach()))
    x = {"ref": ref, "all_joints_uvd": nyu14_from_network(decode_joints(maps.detach(), ref, net_cfg), palm_map),
         "all_joints_xyz": nyu14_from_network(jv.detach(), palm_map)}
    terms = mapped_joint_terms([out], x, palm_map, ids, hand, cfg)
    assert set(terms) == {"s1/pwe_mapped", "s1/mpe_mapped"}
    assert all(float(v) < 1e-9 for v in terms.values())
    x["all_joints_xyz"] = x["all_joints_xyz"] + 0.05
    x["all_joints_xyz"][0, 12] = float("nan")            # an absent label is left out, not NaN
    mpe = mapped_joint_terms([out], x, palm_map, ids, hand, cfg)["s1/mpe_mapped"]
    assert torch.isfinite(mpe) and float(mpe) > 0
    mpe.backward()
    labelled = {k for k in NYU14.to_network if k is not None}
    moved = {j for j in range(21) if float(jv.grad[:, j].abs().sum()) > 0}
    assert {1, 4, 7, 10} & (moved - labelled), "the palm map should reach the MCP joints"
