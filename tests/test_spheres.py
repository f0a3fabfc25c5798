"""Sphere proxy, collision prior and point segmentation (spec 6, T11, T14)."""
from __future__ import annotations

import pytest
import torch

from hand.skeleton import BONE_CHILD
from losses.spheres import (NUM_SPHERES, build_spheres, collision_loss, collision_pair_mask, joint_radii,
                            palm_radius, penetration_sums, segment_points)

CUBE250 = torch.tensor([[250.0, 250.0, 250.0]], dtype=torch.float64)


def clear_configuration(B: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """66 spheres of radius 0.1 on a line, 1 nu apart: no sphere touches another."""
    c = torch.zeros(B, NUM_SPHERES, 3, dtype=torch.float64)
    c[..., 0] = torch.arange(NUM_SPHERES, dtype=torch.float64)
    return c, torch.full((B, NUM_SPHERES), 0.1, dtype=torch.float64)


def test_mask_counts_and_symmetry():
    m = collision_pair_mask()
    assert m.shape == (66, 66) and m.dtype == torch.bool
    assert torch.equal(m, m.T) and not m.diagonal().any()
    assert int(m.sum()) == 3408


def test_mask_rules_individually():
    m = collision_pair_mask()
    assert not m[:21, :21].any()  # palm-palm
    for f in range(5):
        first, second, third = (list(range(21 + 9 * f + 3 * k, 21 + 9 * f + 3 * k + 3)) for k in range(3))
        for a in first + second:
            assert not m[a, first + second].any()  # same or adjacent bones
        for a in third:
            assert not m[a, second + third].any()
            assert m[a, first].all()  # first vs third bone stays active
        assert not m[first, 4 * (f + 1)].any()  # first bone vs its own palm-line end sphere
        other = 4 * ((f + 1) % 5 + 1)
        if f != 4:
            assert m[first, other].all()  # another line's end sphere stays active
    assert not m[[57, 58, 59, 60]][:, :21].any()  # thumb root vs every palm sphere
    assert m[61, :21].all() and m[21:24, 1:4].all()
    assert m[21, 30] and m[30, 39]  # different fingers


def test_joint_radii_from_nearest_support_vertices():
    B = 2
    joints = torch.randn(B, 21, 3, dtype=torch.float64, requires_grad=True)
    support, verts = [], []
    for j in range(16):
        # 12 support vertices at distances 0.01*(1..12)*(j+1) from joint j along random directions
        d = 0.01 * (j + 1) * torch.arange(1, 13, dtype=torch.float64)
        u = torch.nn.functional.normalize(torch.randn(12, 3, dtype=torch.float64), dim=-1)
        verts.append(joints.detach()[:, j, None] + d[None, :, None] * u)
        support.append(torch.arange(12 * j, 12 * j + 12))
    r = joint_radii(joints, torch.cat(verts, dim=1), support)
    expected = torch.tensor([0.055 * (j + 1) for j in range(16)], dtype=torch.float64)
    expected = torch.cat([expected, expected[[3, 6, 9, 12, 15]] / 1.5])
    assert r.shape == (B, 21) and (r > 0).all()
    torch.testing.assert_close(r, expected.expand(B, -1))
    r.sum().backward()
    assert torch.isfinite(joints.grad).all() and joints.grad.abs().sum() > 0


def test_palm_radius_offset_and_clamps_in_mm():
    cube = CUBE250.expand(3, -1)
    r0 = torch.tensor([20.0, 5.0, 80.0], dtype=torch.float64) / 125
    r = palm_radius(r0, cube, offset_mm=6.25, min_mm=1.25, max_mm=50.0) * 125
    torch.testing.assert_close(r, torch.tensor([13.75, 1.25, 50.0], dtype=torch.float64))
    # the same mm radius in a 200 mm cube is 100 mm per nu
    r200 = palm_radius(torch.tensor([0.2], dtype=torch.float64), torch.full((1, 3), 200.0, dtype=torch.float64),
                       6.25, 1.25, 50.0)
    torch.testing.assert_close(r200, torch.tensor([(20.0 - 6.25) / 100], dtype=torch.float64))


def test_sphere_layout():
    J = torch.randn(1, 21, 3, dtype=torch.float64)
    r = torch.rand(1, 21, dtype=torch.float64) + 0.1
    r_w = torch.tensor([0.05], dtype=torch.float64)
    c, rad = build_spheres(J, r, r_w)
    assert c.shape == (1, 66, 3) and rad.shape == (1, 66)
    torch.testing.assert_close(c[0, 0], J[0, 0])
    # palm line f=2 (pinky MCP, joint 7), i=1 -> t=0.4
    torch.testing.assert_close(c[0, 1 + 4 * 2 + 1], J[0, 0] + 0.4 * (J[0, 7] - J[0, 0]))
    torch.testing.assert_close(rad[0, 1 + 4 * 2 + 1], r_w[0] + 0.4 * (r[0, 7] - r_w[0]))
    # bone b=2 (joint 3 -> tip 16), i=2 -> t=2/3
    torch.testing.assert_close(c[0, 21 + 3 * 2 + 2], J[0, 3] + (2 / 3) * (J[0, 16] - J[0, 3]))
    torch.testing.assert_close(rad[0, 21 + 3 * 2 + 2], r[0, 3] + (2 / 3) * (r[0, 16] - r[0, 3]))
    for b, child in enumerate(BONE_CHILD):
        torch.testing.assert_close(c[0, 21 + 3 * b], J[0, b + 1])


@pytest.mark.parametrize("B", [1, 3])
def test_single_overlap_gives_two_delta(B):
    c, r = clear_configuration(B)
    delta = 0.01
    c[:, 40] = c[:, 22] + torch.tensor([0.2 - delta, 0.0, 0.0], dtype=torch.float64)  # 22 vs 40 active
    assert collision_pair_mask()[22, 40]
    sums = penetration_sums(c, r, collision_pair_mask())
    torch.testing.assert_close(sums, torch.full((B,), 2 * delta, dtype=torch.float64))
    gate = torch.full((B,), 0.1, dtype=torch.float64)
    loss, _ = collision_loss(c, r, gate, "gated")
    torch.testing.assert_close(loss, torch.tensor(2 * delta / 66, dtype=torch.float64))
    # a penetration of a masked pair (palm-palm) costs nothing
    c2, r2 = clear_configuration(B)
    c2[:, 5] = c2[:, 3]
    assert float(penetration_sums(c2, r2, collision_pair_mask()).abs().max()) == 0.0


def test_gate_and_clipped_variant():
    c, r = clear_configuration(2)
    c[1, 40] = c[1, 22] + torch.tensor([0.2 - 0.06, 0.0, 0.0], dtype=torch.float64)  # sum 0.12 >= gate
    c[0, 40] = c[0, 22] + torch.tensor([0.2 - 0.01, 0.0, 0.0], dtype=torch.float64)  # sum 0.02
    c.requires_grad_(True)
    gate = torch.full((2,), 0.1, dtype=torch.float64)
    gated, sums = collision_loss(c, r, gate, "gated")
    torch.testing.assert_close(sums.detach(), torch.tensor([0.02, 0.12], dtype=torch.float64))
    torch.testing.assert_close(gated, torch.tensor(0.02 / 132, dtype=torch.float64))
    (g,) = torch.autograd.grad(gated, c)
    assert g[1].abs().sum() == 0 and g[0].abs().sum() > 0  # the gated sample has no gradient
    clipped, _ = collision_loss(c, r, gate, "clipped")
    torch.testing.assert_close(clipped, torch.tensor((0.02 + 0.1) / 132, dtype=torch.float64))
    (g,) = torch.autograd.grad(clipped, c)
    assert g[1].abs().sum() > 0  # clipped keeps pushing the spheres apart
    assert g[1, 40, 0] < 0 and g[1, 22, 0] > 0  # descent moves 40 to +x, 22 to -x: apart
    # exactly at the gate: gated contributes 0
    c3, r3 = clear_configuration(1)
    c3[0, 40] = c3[0, 22] + torch.tensor([0.15, 0.0, 0.0], dtype=torch.float64)
    g3, s3 = collision_loss(c3, r3, torch.tensor([float(penetration_sums(c3, r3, collision_pair_mask()))],
                                                  dtype=torch.float64), "gated")
    assert float(g3) == 0.0 and float(s3) > 0


def test_collision_gradient_matches_finite_differences():
    c, r = clear_configuration(1)
    c[0, 40] = c[0, 22] + torch.tensor([0.15, 0.03, -0.02], dtype=torch.float64)
    c.requires_grad_(True)
    gate = torch.tensor([1.0], dtype=torch.float64)
    (g,) = torch.autograd.grad(collision_loss(c, r, gate)[0], c)
    eps = 1e-6
    for idx in [(0, 40, 0), (0, 40, 1), (0, 22, 2)]:
        cp, cm = c.detach().clone(), c.detach().clone()
        cp[idx] += eps
        cm[idx] -= eps
        fd = (collision_loss(cp, r, gate)[0] - collision_loss(cm, r, gate)[0]) / (2 * eps)
        torch.testing.assert_close(g[idx], fd, rtol=1e-5, atol=1e-9)
    assert torch.isfinite(g).all()


def test_segmentation_labels_points_on_sphere_surfaces():
    c, r = clear_configuration(1)
    pts, want = [], []
    for s in range(NUM_SPHERES):
        d = torch.nn.functional.normalize(torch.tensor([0.0, 1.0, 0.3], dtype=torch.float64), dim=0)
        pts.append(c[0, s] + r[0, s] * d)
        want.append(0 if s < 21 else (s - 21) // 3 + 1)
    labels = segment_points(torch.stack(pts)[None], c, r)
    assert labels.tolist() == [want]


def test_segmentation_palm_wins_only_when_strictly_closer():
    c = torch.zeros(1, NUM_SPHERES, 3, dtype=torch.float64)
    c[..., 0] = 100.0 + torch.arange(NUM_SPHERES, dtype=torch.float64)  # all far away
    r = torch.full((1, NUM_SPHERES), 0.1, dtype=torch.float64)
    c[0, 7] = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64)  # palm sphere
    c[0, 33] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # finger sphere of bone 5
    pts = torch.tensor([[[0.0, 0.0, 0.0], [-1e-3, 0.0, 0.0], [1e-3, 0.0, 0.0]]], dtype=torch.float64)
    assert segment_points(pts, c, r).tolist() == [[5, 0, 5]]  # tie -> finger


def test_masked_segmentation_labels_the_masked_points_as_the_full_one():
    g = torch.Generator().manual_seed(4)
    pts = torch.randn(3, 400, 3, generator=g)
    c, r = torch.randn(3, NUM_SPHERES, 3, generator=g), 0.2 * torch.rand(3, NUM_SPHERES, generator=g)
    mask = torch.rand(3, 400, generator=g) < 0.3
    mask[2] = False                                           # a sample without foreground
    full, masked = segment_points(pts, c, r), segment_points(pts, c, r, mask=mask)
    assert torch.equal(masked[mask], full[mask]) and (masked[~mask] == 0).all()
    assert len(set(full[mask].tolist())) > 5                  # the check sees many labels


def test_mean_pose_penetration(hand_model):
    """T11: penetration sum of the mean pose (theta = 0, beta = 0, s = 1, cube 250).

    MANO: must stay below the 0.1 nu gate (else the gated prior is off for natural poses).  The
    generated stand-in hand is still being tuned: its value is only reported (a warning when it
    reaches the gate); measured 0.058 nu (first stand-in) and 0.256 nu (revision of 23:45 UTC).
    """
    import warnings
    from losses.spheres import hand_spheres
    p = torch.zeros(1, 62)
    p[:, 58] = 1.0
    verts, joints = hand_model.network_space(p)
    c, r = hand_spheres(joints, verts, hand_model.regressor_support, torch.full((1, 3), 250.0), 6.25, 1.25, 50.0)
    assert (r > 0).all() and r.shape == (1, 66) and c.shape == (1, 66, 3)
    total = float(penetration_sums(c, r, collision_pair_mask()))
    assert total >= 0.0 and total == total
    if hand_model.is_standin:
        if total >= 0.1:
            warnings.warn(f"stand-in mean pose penetration {total:.4f} nu >= gate 0.1: gated collision is off for it")
    else:
        assert total < 0.1, f"MANO mean pose penetration {total:.4f} nu reaches the gate"


def _joint_radii_per_joint(joints, verts, regressor_support):
    """The per-joint loop that `joint_radii` replaced (slow reference)."""
    radii = []
    for j, support in enumerate(regressor_support):
        dist = (joints[:, j, None, :] - verts.detach()[:, support, :]).norm(dim=-1)
        radii.append(dist.topk(min(10, dist.shape[1]), dim=1, largest=False).values.mean(dim=1))
    radii += [radii[j] / 1.5 for j in (3, 6, 9, 12, 15)]
    return torch.stack(radii, dim=1)


def _build_spheres_per_sphere(J, radii, r_w):
    """The per-sphere loop that `build_spheres` replaced (slow reference, spec 6.2 word for word)."""
    centres, rad = [J[:, 0]], [r_w]
    for e in (1, 4, 7, 10, 13):
        for t in (0.2, 0.4, 0.6, 0.8):
            centres.append(J[:, 0] + t * (J[:, e] - J[:, 0]))
            rad.append(r_w + t * (radii[:, e] - r_w))
    for b, child in enumerate(BONE_CHILD):
        for t in (0.0, 1.0 / 3.0, 2.0 / 3.0):
            centres.append(J[:, b + 1] + t * (J[:, child] - J[:, b + 1]))
            rad.append(radii[:, b + 1] + t * (radii[:, child] - radii[:, b + 1]))
    return torch.stack(centres, dim=1), torch.stack(rad, dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_spheres_match_the_per_joint_reference(hand_model, dtype):
    """Radii, centres, sphere radii and their gradients equal the loop versions (uneven supports,
    one shorter than 10 vertices so the neighbour count differs per joint)."""
    g = torch.Generator().manual_seed(3)
    verts = torch.randn(3, 780, 3, generator=g, dtype=dtype) * 0.5
    support = [t.clone() for t in hand_model.regressor_support]
    support[5] = support[5][:7]
    outs = []
    for radii_fn, spheres_fn in ((joint_radii, build_spheres), (_joint_radii_per_joint, _build_spheres_per_sphere)):
        joints = (torch.randn(3, 21, 3, generator=torch.Generator().manual_seed(4), dtype=dtype) * 0.5).requires_grad_()
        r = radii_fn(joints, verts, support)
        c, rad = spheres_fn(joints, r, r[:, 0] * 0.8)
        (c.square().sum() + (rad * torch.linspace(0, 1, 66, dtype=dtype)).sum()).backward()
        outs.append((r.detach(), c.detach(), rad.detach(), joints.grad))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for new, ref in zip(*outs):
        torch.testing.assert_close(new, ref, **tol)


def test_pair_mask_is_cached_per_device_and_unchanged():
    assert collision_pair_mask() is collision_pair_mask("cpu")
    from losses.spheres import _pair_mask
    assert torch.equal(collision_pair_mask(), _pair_mask()) and int(_pair_mask().sum()) == 3408
