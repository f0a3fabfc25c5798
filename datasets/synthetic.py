"""On-the-fly synthetic hands (spec 8.2, 3.2): drawn and rendered a whole batch at a time.

One batch = (1) random draws, all made from the caller's `torch.Generator` on its device (the
`SyntheticDraws`; tiny tensors), then (2) a deterministic, vectorized build on the compute device:
MANO forward pass, placement, crop, rendering directly into the crop, targets and occlusion.

Placement (spec 8.2 steps 1-7): a 62-value source-space row (pose sampler or `synth_pose_file`),
beta += synth_shape_noise * N(0, I); the view rotation R is folded into the global rotation
(omega' = log(R exp(omega))), which equals rotating the built mesh about its joint mean because MANO's
global rotation is a rigid motion of the whole mesh.  The mesh is re-centred on its 21-joint mean m
and put at P = (0, 0, z0) (or at a random image position with `synth_off_axis`, keeping the hand's
bounding sphere inside the frame); crop centre C = P + U(+-jitter), cube b = cube_mm * U(range).

Network-space parameters reproducing the placed mesh (isotropic cube b):
    X_n = (s*M(omega') + t - m + P - C) / (b/2) = (s_n/125)*M(omega') + t_n
    =>  s_n = 250*s/b,  t_n = (t - m + P - C)/(b/2),  omega_n = omega', theta, beta unchanged.

Occlusion (8.2 step 8, one pixel convention R10): per sample (or per batch) n ~ U{min..max}
distinct joints; occluder centre = joint uvd + U(+-jitter_nu), radius U(0, radius_nu); every crop
pixel whose (u_n, v_n, d_n) lies strictly inside an occluder becomes background (+1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from config import Config
from hand.params import NETWORK_UNIT_MM, NUM_PARAMS, NUM_SHAPE_COEFFS, ROTATION, SCALE, SHAPE, TRANSLATION
from hand.rotations import axis_angle_to_quat, compose_global_rotation
from hand.skeleton import NUM_JOINTS
from models.mano import hand_arrays
from models.pose_sampler import PoseSampler
from render import camera

VIEW_ROTATIONS = ("none", "original", "so3")


# ---- view rotations --------------------------------------------------------------------------
def random_view_quats(n: int, mode: str, generator: torch.Generator) -> Tensor:
    """View rotations (n, 4): 'none' identity, 'original' axis-angle ~ U([0, 2pi)^3) (not uniform),
    'so3' uniform on SO(3) (normalized Gaussian quaternion)."""
    dev = generator.device
    if mode == "none":
        return torch.tensor([1.0, 0.0, 0.0, 0.0], device=dev).expand(n, 4).clone()
    if mode == "original":
        return axis_angle_to_quat(2.0 * math.pi * torch.rand(n, 3, generator=generator, device=dev))
    if mode == "so3":
        q = torch.randn(n, 4, generator=generator, device=dev)
        return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    raise ValueError(f"unknown view rotation '{mode}'; valid: {', '.join(VIEW_ROTATIONS)}")


# ---- placement, targets and occlusion ------------------------------------------------------------
def network_params(rows: Tensor, joint_mean_mm: Tensor, place_mm: Tensor, center: Tensor,
                   cube: Tensor) -> Tensor:
    """Network-space rows (B, 62) that reproduce the placed mesh (module docstring).

    rows (B, 62) source-space (rotation already folded in), joint_mean_mm m (B, 3) of the source
    mesh, place_mm P (B, 3), center C (B, 3), cube b (B, 3) isotropic.
    """
    half = 0.5 * cube[:, :1]
    out = rows.clone()
    out[:, SCALE] = rows[:, SCALE] * NETWORK_UNIT_MM / half[:, 0]
    out[:, TRANSLATION] = (rows[:, TRANSLATION] - joint_mean_mm + place_mm - center) / half
    return out


def off_axis_uv(frac: Tensor, radius_mm: Tensor, z0: Tensor, K: Tensor, frame_hw: tuple[int, int]) -> Tensor:
    """Image position (B, 2) px of a hand whose bounding sphere (radius, depth z0) stays in the frame.

    frac (B, 2) in [0, 1] picks the position uniformly in the admissible range; where the hand is
    wider than the frame the position falls back to the frame centre.
    """
    H, W = frame_hw
    r = radius_mm / (z0 - radius_mm).clamp_min(1.0)
    lo_u, lo_v = r * K[0, 0] - 0.5, r * K[1, 1] - 0.5
    hi_u, hi_v = (W - 0.5) - r * K[0, 0], (H - 0.5) - r * K[1, 1]
    u = torch.where(hi_u > lo_u, lo_u + frac[:, 0] * (hi_u - lo_u), torch.full_like(r, (W - 1) / 2))
    v = torch.where(hi_v > lo_v, lo_v + frac[:, 1] * (hi_v - lo_v), torch.full_like(r, (H - 1) / 2))
    return torch.stack([u, v], dim=-1)


def carve_occluders(depth_n: Tensor, centers: Tensor, radii: Tensor, active: Tensor) -> Tensor:
    """Spherical occluders in normalized uvd.

    depth_n (B, 1, S, S); centers (B, N, 3) nu; radii (B, N) nu; active (B, N) bool.
    Pixels whose (u_n, v_n, d_n) lies inside an active sphere become +1.
    """
    B, _, S, _ = depth_n.shape
    t = camera.pixel_grid_norm(S, depth_n.dtype, depth_n.device)[0, :, 0]  # (S,) pixel-centre coordinates
    d = depth_n[:, 0]
    hit = torch.zeros_like(d, dtype=torch.bool)
    for k in range(centers.shape[1]):  # a few occluders: loop, keeping memory at (B, S, S)
        c, r2 = centers[:, k], (radii[:, k] ** 2)[:, None, None]
        du2 = ((t[None] - c[:, :1]) ** 2)[:, None, :]
        dv2 = ((t[None] - c[:, 1:2]) ** 2)[:, :, None]
        inside = (du2 + dv2 + (d - c[:, 2, None, None]) ** 2) < r2
        hit |= inside & active[:, k, None, None]
    hit = hit[:, None]
    return torch.where(hit, torch.ones_like(depth_n), depth_n)


def load_pose_rows(path: str) -> Tensor:
    """Source-space pose rows (N, 62) float32 from .npy or text."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"synth_pose_file not found: {path}")
    arr = np.load(p) if p.suffix == ".npy" else np.loadtxt(p, ndmin=2)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != NUM_PARAMS or len(arr) == 0:
        raise ValueError(f"synth_pose_file {path}: expected rows of {NUM_PARAMS} values, got shape {arr.shape}")
    return torch.from_numpy(arr)


@dataclass
class SyntheticDraws:
    """Every random quantity of a batch (B samples, N = synth_occluders_max)."""
    rows: Tensor          # (B, 62) source-space rows, shape noise already added
    view_q: Tensor        # (B, 4) view rotation
    z0: Tensor            # (B,) placement depth, mm
    uv_frac: Tensor       # (B, 2) off-axis image position in [0, 1]
    jitter: Tensor        # (B, 3) crop-centre jitter in [-1, 1]
    cube_factor: Tensor   # (B,)
    occ_joint: Tensor     # (B, N) long, distinct joint ids
    occ_count: Tensor     # (B,) long, active occluders (0 when occlusion is off)
    occ_offset: Tensor    # (B, N, 3) in [-1, 1]
    occ_radius: Tensor    # (B, N) in [0, 1]

    def to(self, device) -> "SyntheticDraws":
        return SyntheticDraws(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, rows) -> "SyntheticDraws":
        """The draws of the given sample rows (index, slice or LongTensor)."""
        return SyntheticDraws(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def cat(parts: list["SyntheticDraws"]) -> "SyntheticDraws":
        return SyntheticDraws(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(SyntheticDraws)})


class SyntheticHands:
    """Batched synthetic-hand generator (spec 8.2) on the device of `hand_model` / `renderer`.

    hand_model: models.mano.HandModel; renderer: render.hand_renderer.HandRenderer;
    rotation: 'none' | 'original' | 'so3'.  cfg must be resolved (intrinsics filled in).
    """

    def __init__(self, cfg: Config, hand_model, renderer, rotation: str, pose_sampler=None):
        if rotation not in VIEW_ROTATIONS:
            raise ValueError(f"unknown view rotation '{rotation}'; valid: {', '.join(VIEW_ROTATIONS)}")
        cube = [float(c) for c in cfg.cube_mm]
        if max(cube) - min(cube) > 1e-6:
            raise ValueError(f"synthetic hands need an isotropic cube (network space, spec 3.2); got {cube}")
        n_occ = cfg.synth_occluders_max
        if not 0 <= cfg.synth_occluders_min <= n_occ <= NUM_JOINTS:
            raise ValueError(f"need 0 <= synth_occluders_min <= synth_occluders_max <= {NUM_JOINTS}")
        self.cfg, self.hand_model, self.renderer, self.rotation = cfg, hand_model, renderer, rotation
        self.cube_mm = torch.tensor(cube, dtype=torch.float32)
        self.K = camera.make_intrinsics(cfg.fx, cfg.fy, cfg.cx, cfg.cy)
        self.frame_hw = (int(cfg.image_height), int(cfg.image_width))
        self.pose_rows = load_pose_rows(cfg.synth_pose_file) if cfg.synth_pose_file else None
        if self.pose_rows is None and pose_sampler is None:
            pose_sampler = PoseSampler(hand_arrays(cfg, hand_model), seed=cfg.seed)
        self.pose_sampler = pose_sampler

    # -- (1) random draws ----------------------------------------------------------------------
    def _source_rows(self, n: int, generator: torch.Generator) -> Tensor:
        dev = generator.device
        if self.pose_rows is not None:
            idx = torch.randint(0, len(self.pose_rows), (n,), generator=generator, device=dev)
            return self.pose_rows.to(dev)[idx].clone()
        return self.pose_sampler.sample(n, generator).to(device=dev, dtype=torch.float32).clone()

    def draw(self, batch_size: int, generator: torch.Generator) -> SyntheticDraws:
        """All random quantities of a batch, drawn on the CPU (tiny) so a seed gives the same batch on
        every device; a non-CPU `generator` is advanced once to seed a CPU generator."""
        cfg, B, g = self.cfg, batch_size, generator
        if g.device.type != "cpu":  # a device generator seeds a CPU one (deterministically)
            seed = torch.randint(0, 2 ** 62, (1,), generator=g, device=g.device)
            g = torch.Generator().manual_seed(int(seed))
        dev = g.device
        rows = self._source_rows(B, g)
        rows[:, SHAPE] += cfg.synth_shape_noise * torch.randn(B, NUM_SHAPE_COEFFS, generator=g, device=dev)
        view_q = random_view_quats(B, self.rotation, g)
        lo, hi = (float(v) for v in cfg.synth_depth_range_mm)
        z0 = lo + (hi - lo) * torch.rand(B, generator=g, device=dev)
        uv_frac = torch.rand(B, 2, generator=g, device=dev)
        jitter = 2.0 * torch.rand(B, 3, generator=g, device=dev) - 1.0
        c_lo, c_hi = (float(v) for v in cfg.synth_cube_scale_range)
        cube_factor = c_lo + (c_hi - c_lo) * torch.rand(B, generator=g, device=dev)
        n_occ, n_draw = cfg.synth_occluders_max, B if cfg.synth_occlusion_per_sample else 1
        occ_joint = torch.rand(n_draw, NUM_JOINTS, generator=g, device=dev).argsort(dim=1)[:, :n_occ]
        occ_count = torch.randint(cfg.synth_occluders_min, n_occ + 1, (n_draw,), generator=g, device=dev)
        occ_offset = 2.0 * torch.rand(B, n_occ, 3, generator=g, device=dev) - 1.0
        occ_radius = torch.rand(B, n_occ, generator=g, device=dev)
        if not cfg.synth_occlusion:
            occ_count = torch.zeros_like(occ_count)
        return SyntheticDraws(rows, view_q, z0, uv_frac, jitter, cube_factor, occ_joint.expand(B, -1).clone(),
                              occ_count.expand(B).clone(), occ_offset, occ_radius)

    # -- (2) deterministic build ---------------------------------------------------------------
    def build(self, d: SyntheticDraws, device) -> dict:
        """Render the drawn batch on `device`; returns the batched sample dict (ARCHITECTURE.md)."""
        cfg = self.cfg
        d = d.to(device)
        B = d.rows.shape[0]
        rows = d.rows.to(torch.float32).clone()
        if self.rotation != "none":
            rows[:, ROTATION] = compose_global_rotation(rows[:, ROTATION], d.view_q)
        verts_src, joints_src = self.hand_model.source_space(rows)
        m = joints_src.mean(dim=1)
        K = self.K.to(device)
        if cfg.synth_off_axis:
            radius = (verts_src - m[:, None]).norm(dim=-1).amax(dim=1)
            uv = off_axis_uv(d.uv_frac, radius, d.z0, K, self.frame_hw)
            place = camera.backproject(torch.cat([uv, d.z0[:, None]], dim=-1)[:, None], K)[:, 0]
        else:
            place = torch.stack([torch.zeros_like(d.z0), torch.zeros_like(d.z0), d.z0], dim=-1)
        shift = (place - m)[:, None]
        verts_mm, joints_mm = verts_src + shift, joints_src + shift
        center = place + cfg.synth_center_jitter_mm * d.jitter
        cube = self.cube_mm.to(device)[None] * d.cube_factor[:, None]
        Kb = K.expand(B, 3, 3)
        A = camera.crop_transform(center, cube, Kb)
        K_crop = camera.crop_intrinsics(Kb, A)
        clean = self.renderer.render_mesh_mm(verts_mm, center, cube, K_crop)
        inside = camera.crop_frame_mask(A, self.frame_hw, clean.shape[-1])[:, None]
        clean = torch.where(inside, clean, torch.ones_like(clean))
        joints_uvd = camera.xyz_to_uvd_norm(joints_mm, center, cube, K_crop, clean.shape[-1])
        occ_uvd = torch.gather(joints_uvd, 1, d.occ_joint[..., None].expand(-1, -1, 3))
        occ_centers = occ_uvd + cfg.synth_occluder_jitter_nu * d.occ_offset
        active = torch.arange(d.occ_joint.shape[1], device=device)[None] < d.occ_count[:, None]
        clean = carve_occluders(clean, occ_centers, cfg.synth_occluder_radius_nu * d.occ_radius, active)
        return {
            "depth": clean.clone(), "clean": clean, "center": center, "cube": cube, "M": A,
            "K": Kb.clone(), "index": torch.arange(B, device=device),
            "joints_uvd": joints_uvd, "joints_xyz": camera.xyz_to_norm(joints_mm, center, cube),
            "verts_xyz": camera.xyz_to_norm(verts_mm, center, cube),
            "params": network_params(rows, m, place, center, cube),
        }

    @torch.no_grad()
    def batch(self, batch_size: int, generator: torch.Generator, device) -> dict:
        """Draw (from `generator`) and render `batch_size` samples on `device`; reproducible."""
        return self.build(self.draw(batch_size, generator), device)


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample `index` of a stream seeded with `seed`."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
