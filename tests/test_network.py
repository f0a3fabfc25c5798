"""Dual-branch network: sizes (spec 5.2), shapes, initialisation, stage-2 wiring through the renderer."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from config import make_config
from models import densemap
from models.dual_branch import DualBranchNet, NetConfig, decode_joints

S = 128


class StubRenderer:
    """Stands in for HandRenderer: a differentiable 'rendering' whose depth and joints depend on params."""

    def __init__(self):
        self.calls = 0
        self.scale = 1.0

    def render_params(self, params, center, cube, K_crop, frame_mask=None):
        self.calls += 1
        B = params.shape[0]
        t = (2.0 * torch.arange(S, dtype=torch.float32) + 1.0) / S - 1.0
        v, u = torch.meshgrid(t, t, indexing="ij")
        disc = (u ** 2 + v ** 2 < 0.25).float()
        plate = (0.1 * torch.tanh(params[:, :1, None, None]) * u + self.scale * 0.2 * torch.tanh(params[:, 1:2, None, None]))
        depth = disc * plate + (1 - disc)                       # (B, 1, S, S)
        joints_uvd = 0.3 * torch.tanh(torch.cat([params, params[:, :1]], dim=1).reshape(B, 21, 3))
        return SimpleNamespace(depth=depth, joints_uvd=joints_uvd, verts_xyz=None, joints_xyz=None)


def _inputs(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(B, 1, S, S, generator=g) * 2 - 1
    center = torch.tensor([[0.0, 0.0, 700.0]]).expand(B, 3)
    cube = torch.full((B, 3), 250.0)
    K = torch.eye(3).expand(B, 3, 3)
    return depth, center, cube, K


@pytest.mark.parametrize("stages,expected_m", [(1, 15.4), (2, 32.1)])
def test_resnet18_parameter_count(stages, expected_m):
    net = DualBranchNet(NetConfig.from_config(make_config([], net="resnet18", stage_num=stages)), StubRenderer())
    n = sum(p.numel() for p in net.parameters()) / 1e6
    assert abs(n - expected_m) < 0.1
    if stages == 2:
        s2 = sum(p.numel() for k, p in net.named_parameters() if k.startswith(("stage2", "fuse"))) / 1e6
        assert abs(s2 - 16.7) < 0.1
        assert net.fuse[0].in_channels == 488 and net.fuse[0].out_channels == 256


def test_initialisation_follows_spec():
    net = DualBranchNet(NetConfig.from_config(make_config([], net="resnet18", stage_num=1)))
    w = net.stem.conv.weight
    assert abs(w.std().item() - (2.0 / (25 * 64)) ** 0.5) < 0.1 * (2.0 / (25 * 64)) ** 0.5
    heads = net.stage1.heads
    assert heads.offset.weight.std().item() < 2e-3 and heads.offset.bias.abs().max() == 0
    assert heads.params.weight.std().item() < 2e-3 and heads.params.bias.abs().max() > 0   # default bias
    deconv = net.stage1.decoder.layers[0]
    assert deconv.weight.std().item() < 2e-3 and deconv.bias is None


def test_shapes_and_single_rendering_per_forward():
    cfg = make_config([], net="tiny", stage_num=2)
    rend = StubRenderer()
    net = DualBranchNet(NetConfig.from_config(cfg), rend)
    outs = net(*_inputs())
    assert len(outs) == 2 and rend.calls == 1
    for o in outs:
        assert o.maps.shape == (2, 84, 64, 64) and o.params.shape == (2, 62)
    assert outs[0].render is not None and outs[1].render is None
    assert outs[0].render.depth.shape == (2, 1, S, S)
    joints = decode_joints(outs[1].maps, _inputs()[0], NetConfig.from_config(cfg))
    assert joints.shape == (2, 21, 3) and torch.isfinite(joints).all()
    assert "renderer" not in dict(net.named_modules())          # not part of the state_dict


def test_stage2_depends_on_rendering_and_gradients_reach_stage1_through_it():
    torch.manual_seed(0)
    cfg = make_config([], net="tiny", stage_num=2)
    rend = StubRenderer()
    net = DualBranchNet(NetConfig.from_config(cfg), rend).eval()
    x = _inputs()
    a = net(*x)
    rend.scale = 3.0                                            # change only the rendering
    b = net(*x)
    assert torch.equal(a[0].maps, b[0].maps) and (a[1].maps - b[1].maps).abs().max() > 0
    # a loss on stage-2 maps only reaches the stage-1 MPE head through the rendered-pose encoding
    net.zero_grad()
    b[1].maps.square().sum().backward()
    g = net.stage1.heads.params.weight.grad
    assert g is not None and g.abs().sum() > 0


def test_one_stage_without_renderer_and_two_stages_require_it():
    cfg = make_config([], net="tiny", stage_num=1)
    outs = DualBranchNet(NetConfig.from_config(cfg))(*_inputs())
    assert len(outs) == 1 and outs[0].render is None
    with pytest.raises(ValueError, match="renderer"):
        DualBranchNet(NetConfig.from_config(make_config([], net="tiny", stage_num=2)))


def test_decode_of_encoded_targets_through_helper():
    cfg = make_config([], net="tiny")
    depth = torch.ones(1, 1, S, S)
    depth[..., 40:90, 40:90] = 0.1
    joints = torch.tensor([[[0.0, 0.0, 0.12], [0.05, -0.1, 0.1]]]).repeat(1, 1, 1)
    joints = torch.cat([joints, joints[:, :1].expand(1, 19, 3)], dim=1)
    maps = densemap.encode(joints, depth, cfg.map_size, cfg.kernel_radius_nu, cfg.fg_threshold_nu)
    assert (decode_joints(maps, depth, NetConfig.from_config(cfg)) - joints).abs().max() < 1e-5
