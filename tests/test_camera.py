"""Camera convention tests (spec 1.1-1.4, 13 T1, T2): projection round trips, crop transform,
normalized uvd <-> xyz, crop resampling and frame mask, for the intrinsics of every dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from config import DATASET_PRESETS
from render import camera

F64 = torch.float64
# NYU, ICVL, MSRA (config presets) and the Kinect v2 frames of datasets.md 1.1
INTRINSICS = {name: (p.fx, p.fy, p.cx, p.cy, p.image_width, p.image_height)
              for name, p in DATASET_PRESETS.items() if name != "simreal"}
INTRINSICS["kinect2"] = (363.9, 363.9, 255.4, 206.3, 512, 424)


def _random_points(n, g):
    z = 100 + 1900 * torch.rand(n, generator=g, dtype=F64)
    xy = (torch.rand(n, 2, generator=g, dtype=F64) - 0.5) * z[:, None]
    return torch.cat([xy, z[:, None]], -1)


@pytest.mark.parametrize("name", sorted(INTRINSICS))
def test_projection_round_trip(name):
    fx, fy, cx, cy, W, H = INTRINSICS[name]
    K = camera.make_intrinsics(fx, fy, cx, cy, dtype=F64)
    g = torch.Generator().manual_seed(0)
    p = _random_points(1000, g)
    torch.testing.assert_close(camera.backproject(camera.project(p, K), K), p, rtol=0, atol=1e-9)
    uvz = camera.project(p, K)
    torch.testing.assert_close(uvz[:, 0], fx * p[:, 0] / p[:, 2] + cx, rtol=1e-14, atol=1e-10)
    torch.testing.assert_close(uvz[:, 1], fy * p[:, 1] / p[:, 2] + cy, rtol=1e-14, atol=1e-10)
    # pixel (r, c) back-projected at depth z and re-projected gives (c, r); x = (c - cx) z / fx
    r, c = torch.meshgrid(torch.arange(0, H, 37, dtype=F64), torch.arange(0, W, 41, dtype=F64), indexing="ij")
    z = torch.full_like(r, 733.0)
    pts = camera.backproject(torch.stack([c, r, z], -1).reshape(-1, 3), K)
    torch.testing.assert_close(pts[:, 0], (c.reshape(-1) - cx) * 733.0 / fx, rtol=1e-14, atol=1e-10)
    torch.testing.assert_close(pts[:, 1], (r.reshape(-1) - cy) * 733.0 / fy, rtol=1e-14, atol=1e-10)
    back = camera.project(pts, K)
    torch.testing.assert_close(back[:, 0], c.reshape(-1), rtol=0, atol=1e-9)
    torch.testing.assert_close(back[:, 1], r.reshape(-1), rtol=0, atol=1e-9)
    # y down: a point below the optical axis (y > 0) has v > cy
    assert camera.project(torch.tensor([[0.0, 10.0, 500.0]], dtype=F64), K)[0, 1] > cy


def _random_crops(K, n, g, W, H):
    uv = torch.rand(n, 2, generator=g, dtype=F64) * torch.tensor([W, H], dtype=F64)
    z = 250 + 900 * torch.rand(n, 1, generator=g, dtype=F64)
    center = camera.backproject(torch.cat([uv, z], -1), K)
    cube = (150 + 150 * torch.rand(n, 1, generator=g, dtype=F64)) * torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    cube = cube * (1 + 0.2 * torch.rand(n, 3, generator=g, dtype=F64))  # non-cubic too
    return center, cube


@pytest.mark.parametrize("name", sorted(INTRINSICS))
def test_crop_transform_and_normalization(name):
    fx, fy, cx, cy, W, H = INTRINSICS[name]
    S = camera.CROP_SIZE
    g = torch.Generator().manual_seed(1)
    Kb = camera.make_intrinsics(fx, fy, cx, cy, dtype=F64).expand(64, 3, 3)
    center, cube = _random_crops(Kb[0], 64, g, W, H)
    A = camera.crop_transform(center, cube, Kb, S)
    eye = torch.eye(3, dtype=F64).expand(64, 3, 3)
    torch.testing.assert_close(A @ torch.linalg.inv(A), eye, rtol=0, atol=1e-12)
    # window: w = max((bx/2) fx, (by/2) fy)/Cz; pi(C) -> crop centre (S-1)/2 and u_n = 0
    cu = fx * center[:, 0] / center[:, 2] + cx
    cv = fy * center[:, 1] / center[:, 2] + cy
    w = torch.maximum(cube[:, 0] / 2 * fx, cube[:, 1] / 2 * fy) / center[:, 2]
    cc = (A @ torch.stack([cu, cv, torch.ones_like(cu)], -1)[..., None])[..., 0]
    torch.testing.assert_close(cc[:, :2], torch.full_like(cc[:, :2], (S - 1) / 2), rtol=0, atol=1e-9)
    # the long side's edges c_u -/+ w map to the crop's outer pixel edges and to u_n = -/+1
    for sgn, edge in ((-1, -0.5), (1, S - 0.5)):
        e = (A @ torch.stack([cu + sgn * w, cv + sgn * w, torch.ones_like(cu)], -1)[..., None])[..., 0]
        longx = cube[:, 0] * fx >= cube[:, 1] * fy
        long_coord = torch.where(longx, e[:, 0], e[:, 1])
        torch.testing.assert_close(long_coord, torch.full_like(long_coord, edge), rtol=0, atol=1e-9)
        torch.testing.assert_close(camera.crop_px_to_norm(long_coord, S), torch.full_like(long_coord, float(sgn)),
                                   rtol=0, atol=1e-12)
    # crop intrinsics: projecting with A K equals projecting with K then applying A
    p = center[:, None] + (torch.rand(64, 50, 3, generator=g, dtype=F64) - 0.5) * cube[:, None]
    Kc = camera.crop_intrinsics(Kb, A)
    uv_frame = camera.project(p, Kb)
    via_A = (A[:, None] @ torch.cat([uv_frame[..., :2], torch.ones_like(uv_frame[..., :1])], -1)[..., None])[..., 0]
    torch.testing.assert_close(camera.project(p, Kc)[..., :2], via_A[..., :2], rtol=0, atol=1e-9)
    # normalized uvd: u_n = (u - c_u)/w and d_n = (z - Cz)/(bz/2)
    uvd = camera.xyz_to_uvd_norm(p, center, cube, Kc, S)
    torch.testing.assert_close(uvd[..., 0], (uv_frame[..., 0] - cu[:, None]) / w[:, None], rtol=0, atol=1e-12)
    torch.testing.assert_close(uvd[..., 1], (uv_frame[..., 1] - cv[:, None]) / w[:, None], rtol=0, atol=1e-12)
    torch.testing.assert_close(uvd[..., 2], (p[..., 2] - center[:, None, 2]) / (cube[:, None, 2] / 2),
                               rtol=0, atol=1e-12)
    # round trips uvd <-> xyz (mm and nu)
    torch.testing.assert_close(camera.uvd_norm_to_xyz(uvd, center, cube, Kc, S), p, rtol=0, atol=1e-9)
    xn = camera.xyz_to_norm(p, center, cube)
    torch.testing.assert_close(camera.uvd_norm_to_xyz_norm(uvd, center, cube, Kc, S), xn, rtol=0, atol=1e-9)
    torch.testing.assert_close(camera.xyz_norm_to_uvd_norm(xn, center, cube, Kc, S), uvd, rtol=0, atol=1e-9)
    torch.testing.assert_close(camera.norm_to_xyz(xn, center, cube), p, rtol=0, atol=1e-9)
    # the crop centre's normalized xyz is 0 and its uvd is 0
    torch.testing.assert_close(camera.xyz_to_uvd_norm(center[:, None], center, cube, Kc, S),
                               torch.zeros(64, 1, 3, dtype=F64), rtol=0, atol=1e-9)


def test_pixel_grid_and_px_norm_inverse():
    for size in (128, 64, 7):
        grid = camera.pixel_grid_norm(size, dtype=F64)
        j = torch.arange(size, dtype=F64)
        torch.testing.assert_close(grid[0, :, 0], (2 * j + 1) / size - 1)
        torch.testing.assert_close(grid[:, 0, 1], (2 * j + 1) / size - 1)
        torch.testing.assert_close(camera.norm_to_crop_px(camera.crop_px_to_norm(j, size), size), j)
        torch.testing.assert_close(camera.crop_px_to_norm(j, size), grid[0, :, 0])


def test_normalize_depth_rules():
    d = torch.tensor([[0.0, 500.0, 624.99, 625.01, 300.0, 450.0]])
    n = camera.normalize_depth(d, torch.tensor([500.0]), torch.tensor([250.0]))
    torch.testing.assert_close(n, torch.tensor([[1.0, 0.0, 124.99 / 125, 1.0, -1.0, -0.4]]))
    mm = camera.denormalize_depth(n, torch.tensor([500.0]), torch.tensor([250.0]), 0.99)
    torch.testing.assert_close(mm[0, [1, 5]], d[0, [1, 5]])
    assert mm[0, 0] == 0 and mm[0, 3] == 0 and mm[0, 2] == 0  # 0.99992 >= fg threshold 0.99


def test_crop_frame_nearest_and_mask():
    """Crop pixel (r, c) takes the frame pixel nearest to A^-1 (c, r) (round half up), 0 outside."""
    H, W, S = 48, 64, 16
    frame = np.arange(H * W, dtype=np.float64).reshape(H, W) + 1  # every pixel unique, no 0
    for s, tu, tv in ((0.5, -3.0, 2.0), (1.0, 5.0, -7.0), (2.5, -150.0, -100.0), (0.37, 9.2, -4.1),
                      (1.0, -20.5, -10.5)):
        A = np.array([[s, 0, tu], [0, s, tv], [0, 0, 1.0]])
        crop = camera.crop_frame_nearest(frame, A, size=S)
        Ainv = np.linalg.inv(A)
        mask = camera.crop_frame_mask(torch.tensor(A), (H, W), S).numpy()
        for r in range(S):
            for c in range(S):
                u, v, _ = Ainv @ np.array([c, r, 1.0])
                cc, rr = int(np.floor(u + 0.5)), int(np.floor(v + 0.5))
                inside = 0 <= cc < W and 0 <= rr < H
                assert crop[r, c] == (frame[rr, cc] if inside else 0.0)
                # mask: frame position within [-0.5, W-0.5] x [-0.5, H-0.5]
                assert mask[r, c] == (-0.5 <= u <= W - 0.5 and -0.5 <= v <= H - 0.5)
