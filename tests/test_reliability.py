"""Reliability selection of the model -> pixel joints (spec 10.4, T15)."""
from __future__ import annotations

import torch

from losses.fitting import intersection_residual
from losses.reliability import select_reliable

DEPTH_MM, FIT_MM = 5.0, 3.953  # Config defaults (0.04 nu, ~1e-3 nu^2 at cube 250)


def case(B: int = 1, cube: float = 250.0):
    return dict(depth_residual=torch.zeros(B), fit_residual=torch.zeros(B), bone_residual=torch.zeros(B, 15),
                bone_counts=torch.full((B, 15), 50), valid=torch.ones(B, dtype=torch.bool),
                cube=torch.full((B, 3), cube))


def select(c, min_points: int = 0):
    return select_reliable(**c, depth_mm=DEPTH_MM, fit_rms_mm=FIT_MM, min_bone_points=min_points)


def test_perfect_fit_selects_all_joints():
    assert select(case(2)).all() and select(case(2)).shape == (2, 21)


def test_depth_residual_above_threshold_selects_none():
    c = case(2)
    c["depth_residual"][1] = 0.05  # 6.25 mm at cube 250
    sel = select(c)
    assert sel[0].all() and not sel[1].any()
    # the same 0.05 nu is 5.0 mm at cube 200: not strictly below 5 mm -> rejected; 0.049 nu passes
    c = case(1, cube=200.0)
    c["depth_residual"][0] = 0.0499
    assert select(c).all()
    c["depth_residual"][0] = 0.0501
    assert not select(c).any()


def test_fit_residual_threshold_in_mm():
    c = case(1)
    c["fit_residual"][0] = (3.9 / 125) ** 2
    assert select(c).all()
    c["fit_residual"][0] = (4.0 / 125) ** 2
    assert not select(c).any()


def test_bad_bone_deselects_its_joint_and_distal_tip():
    for bone, expect_off in [(3, {3, 16}), (2, {2}), (13, {13}), (15, {15, 20}), (9, {9, 18})]:
        c = case(1)
        c["bone_residual"][0, bone - 1] = 2e-3
        sel = select(c)[0]
        off = {int(i) for i in (~sel).nonzero()[:, 0]}
        assert off == expect_off, (bone, off)
        assert sel[0]  # wrist always reliable


def test_empty_bone_original_and_minimum_count_option():
    c = case(1)
    c["bone_counts"][0, 5] = 0  # bone 6 (middle DIP) empty, residual 0
    assert select(c).all()
    sel = select(c, min_points=1)[0]
    assert {int(i) for i in (~sel).nonzero()[:, 0]} == {6, 17}
    c["bone_counts"][0, 5] = 4
    assert {int(i) for i in (~select(c, min_points=5)[0]).nonzero()[:, 0]} == {6, 17}
    assert select(c, min_points=4).all()


def test_samples_without_foreground_are_excluded():
    c = case(2)
    c["valid"][0] = False
    sel = select(c)
    assert not sel[0].any() and sel[1].all()


def test_intersection_residual_counts_shared_pixels_over_union():
    obs = torch.ones(1, 1, 4, 4)
    ren = torch.ones(1, 1, 4, 4)
    obs[0, 0, 0, :3] = torch.tensor([0.1, 0.2, 0.3])  # three observed pixels
    ren[0, 0, 0, 1:4] = torch.tensor([0.0, 0.0, 0.5])  # three rendered pixels, two shared
    # I = pixels 1, 2: |0.2| + |0.3| = 0.5; U = 4 pixels
    torch.testing.assert_close(intersection_residual(obs, ren, 0.99), torch.tensor([0.5 / 4]))


def relative(c, q=0.5, ceiling=3.0, min_points=0):
    from losses.reliability import select_reliable_relative
    return select_reliable_relative(**c, depth_mm=DEPTH_MM, fit_rms_mm=FIT_MM, quantile=q, ceiling=ceiling,
                                    min_bone_points=min_points)


def test_relative_gate_selects_the_batch_best_fits_under_the_ceiling():
    """Residuals twice the absolute thresholds (a hand that is not the model): the absolute gate
    selects nothing, the relative one the better half; all beyond the ceiling selects nothing."""
    c = case(4)
    nu = 1 / 125.0                                              # 1 mm at cube 250
    c["depth_residual"][:] = torch.tensor([8.0, 9.0, 10.0, 11.0]) * nu
    c["fit_residual"][:] = (torch.tensor([7.0, 8.5, 8.0, 9.0]) * nu) ** 2
    assert not select(c).any()
    sel, samples = relative(c)
    # median of [8, 9, 10, 11] = 9.5 -> samples 0, 1; median fit 8.25 -> samples 0, 2: both -> sample 0
    assert samples.tolist() == [True, False, False, False] and sel[0].all() and not sel[1:].any()
    sel, samples = relative(c, q=1.0)
    assert samples.all() and sel.all()
    sel, samples = relative(c, q=1.0, ceiling=1.5)               # 1.5 x 5 mm = 7.5 mm < every depth residual
    assert not samples.any() and not sel.any()


def test_relative_gate_keeps_what_the_absolute_gate_passes():
    """A batch of perfect fits passes whole (the absolute test), not only its better half."""
    sel, samples = relative(case(4))
    assert samples.all() and sel.all()


def test_relative_gate_judges_each_bone_against_its_batch():
    c = case(4)
    c["bone_residual"][:, 4] = torch.tensor([1.5, 2.0, 3.0, 4.0]) * 1e-3   # bone 5, all above the absolute 1e-3
    sel, samples = relative(c)
    assert samples.all()
    assert sel[:, 5].tolist() == [True, True, False, False]    # joint 5 follows bone 5: the better half
    assert sel[:, [k for k in range(21) if k != 5]].all()
    c["bone_counts"][0, 4] = 0                                   # an empty bone: original rule keeps it,
    assert relative(c)[0][0, 5] and not relative(c, min_points=1)[0][0, 5]   # a minimum count drops it
