"""HandRenderer tests (spec 4, 13 T4c): rendered pixels back-project onto the mesh at NYU and ICVL
distances, analytic joint projection, normalization, frame mask, gradients to the parameters."""
from __future__ import annotations

import pytest
import torch

from config import DATASET_PRESETS
from render import camera
from render.geometry import point_mesh_sqdist
from render.hand_renderer import HandRenderer
from render.rasterizer import rasterize_depth

S = 128


def _params(hand_model, B, seed):
    """Random moderate poses, s = 1, t centring the joints at the crop centre (nu, cube 250)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.zeros(B, 62)
    p[:, :3] = (torch.rand(B, 3, generator=g) - 0.5) * 1.5
    p[:, 3:48] = torch.randn(B, 45, generator=g) * 0.5
    p[:, 58] = 1.0
    _, joints = hand_model.network_space(p)
    p[:, 59:62] = -joints.mean(1)
    return p


def _scene(preset: str, z: float, B: int = 2):
    pr = DATASET_PRESETS[preset]
    K = camera.make_intrinsics(pr.fx, pr.fy, pr.cx, pr.cy).expand(B, 3, 3)
    center = torch.tensor([[15.0, -10.0, z], [-30.0, 20.0, z + 40]])[:B]
    cube = torch.full((B, 3), 250.0)
    A = camera.crop_transform(center, cube, K)
    return K, center, cube, A, camera.crop_intrinsics(K, A)


@pytest.mark.parametrize("preset,z", [("nyu", 700.0), ("icvl", 350.0)])
def test_covered_pixels_back_project_onto_the_mesh(hand_model, preset, z):
    """T4(c): projection, pixel centres and axis orientation checked together."""
    K, center, cube, A, Kc = _scene(preset, z)
    params = _params(hand_model, 2, seed=1)
    verts_n, _ = hand_model.network_space(params)
    verts = camera.norm_to_xyz(verts_n.double(), center.double(), cube.double())
    depth, face = rasterize_depth(verts, hand_model.faces, Kc.double(), S, S)
    r, c = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64),
                          indexing="ij")
    for b in range(2):
        cov = face[b] >= 0
        assert cov.sum() > 1000
        uvz = torch.stack([c[cov], r[cov], depth[b][cov]], -1)
        pts = camera.backproject(uvz, Kc[b].double())
        d2 = point_mesh_sqdist(pts[None], verts[b:b + 1], hand_model.faces)
        assert d2.max() < 0.01 ** 2
    # the float32 renderer output, through the normalized crop and camera.crop_points_norm
    out = HandRenderer(hand_model).render_params(params, center, cube, Kc)
    pts, fg = camera.crop_points_norm(out.depth, center, cube, Kc, 0.99)
    for b in range(2):
        d2 = point_mesh_sqdist(pts[b:b + 1, fg[b]].double(), out.verts_xyz[b:b + 1].double(),
                               hand_model.faces)
        assert fg[b].sum() > 1000 and d2.max() * 125.0 ** 2 < 0.02 ** 2


def test_render_params_outputs(hand_model):
    K, center, cube, A, Kc = _scene("nyu", 600.0)
    params = _params(hand_model, 2, seed=2)
    rend = HandRenderer(hand_model)
    out = rend.render_params(params, center, cube, Kc)
    assert out.depth.shape == (2, 1, S, S) and out.verts_xyz.shape == (2, 779, 3)
    assert out.joints_xyz.shape == (2, 21, 3) and out.joints_uvd.shape == (2, 21, 3)
    verts_n, joints_n = hand_model.network_space(params)
    torch.testing.assert_close(out.verts_xyz, verts_n)
    torch.testing.assert_close(out.joints_xyz, joints_n)
    # joints: u_n = (u - c_u)/w with frame projection (spec 1.3), d_n = (z - Cz)/(bz/2)
    jm = camera.norm_to_xyz(joints_n, center, cube)
    u = K[:, None, 0, 0] * jm[..., 0] / jm[..., 2] + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * jm[..., 1] / jm[..., 2] + K[:, None, 1, 2]
    cu = K[:, 0, 0] * center[:, 0] / center[:, 2] + K[:, 0, 2]
    cv = K[:, 1, 1] * center[:, 1] / center[:, 2] + K[:, 1, 2]
    w = torch.maximum(125.0 * K[:, 0, 0], 125.0 * K[:, 1, 1]) / center[:, 2]
    expect = torch.stack([(u - cu[:, None]) / w[:, None], (v - cv[:, None]) / w[:, None],
                          (jm[..., 2] - center[:, None, 2]) / 125.0], -1)
    torch.testing.assert_close(out.joints_uvd, expect, rtol=1e-5, atol=1e-5)
    # depth = normalized rasterization, background +1, mask = coverage
    vm = camera.norm_to_xyz(verts_n, center, cube)
    d_mm, face = rasterize_depth(vm, hand_model.faces, Kc, S, S)
    torch.testing.assert_close(out.depth[:, 0], camera.normalize_depth(d_mm, center[:, 2], cube[:, 2]))
    assert torch.equal(out.mask[:, 0], face >= 0)
    assert (out.depth[:, 0][face < 0] == 1).all() and (out.depth[:, 0][face >= 0] < 1).all()
    torch.testing.assert_close(rend.render_mesh_mm(vm, center, cube, Kc), out.depth)


def test_frame_mask_blanks_pixels_outside_the_sensor(hand_model):
    pr = DATASET_PRESETS["nyu"]
    K = camera.make_intrinsics(pr.fx, pr.fy, pr.cx, pr.cy).expand(1, 3, 3)
    center = camera.backproject(torch.tensor([[[8.0, 230.0, 500.0]]]), K)[:, 0]  # at the left edge
    cube = torch.full((1, 3), 250.0)
    A = camera.crop_transform(center, cube, K)
    Kc = camera.crop_intrinsics(K, A)
    params = _params(hand_model, 1, seed=3)
    fm = camera.crop_frame_mask(A, (pr.image_height, pr.image_width))
    rend = HandRenderer(hand_model)
    full = rend.render_params(params, center, cube, Kc)
    masked = rend.render_params(params, center, cube, Kc, frame_mask=fm)
    assert (~fm).sum() > 1000 and (full.mask[:, 0] & ~fm).sum() > 100
    assert (masked.depth[:, 0][~fm] == 1).all() and not masked.mask[:, 0][~fm].any()
    torch.testing.assert_close(masked.depth[:, 0][fm], full.depth[:, 0][fm])
    torch.testing.assert_close(rend.render_mesh_mm(camera.norm_to_xyz(full.verts_xyz, center, cube),
                                                   center, cube, Kc, frame_mask=fm), masked.depth)


def test_gradients_reach_the_parameters(hand_model):
    K, center, cube, A, Kc = _scene("nyu", 600.0)
    params = _params(hand_model, 2, seed=4).requires_grad_(True)
    out = HandRenderer(hand_model).render_params(params, center, cube, Kc)
    fg = out.depth < 0.99
    (out.depth * fg).sum().backward()
    g = params.grad
    assert torch.isfinite(g).all()
    assert g[:, 59:62].abs().sum() > 0 and g[:, 3:48].abs().sum() > 0
    # depth is homogeneous of degree 1 in the vertices (scaling about the camera centre scales
    # every covered pixel's z): sum_v grad_v . v = sum over covered pixels of z / (bz/2)
    vm = camera.norm_to_xyz(out.verts_xyz.detach(), center, cube).double().requires_grad_(True)
    rend = HandRenderer(hand_model)
    dn = rend.render_mesh_mm(vm, center.double(), cube.double(), Kc.double())
    fg = dn < 0.99
    (dn * fg).sum().backward()
    z = (dn.detach() * 125.0 + center[:, 2, None, None, None].double())
    torch.testing.assert_close((vm.grad * vm.detach()).sum(), (z * fg).sum() / 125.0, rtol=1e-9, atol=0)
