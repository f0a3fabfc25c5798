"""'simreal': a real-like depth benchmark written in the exact NYU format (issue 4).

The real NYU reader (`datasets.nyu.build_nyu`) is what reads it back.  Each frame is a full
640 x 480 Kinect-1-like depth image at the NYU intrinsics:

* scene: a MANO / stand-in hand (own pose and shape distribution: pose-sampler seed offset, extra
  articulation noise, a fixed "subject" shape and scale, moderate view rotations) with a forearm
  swept from the wrist boundary loop, a torso plane behind the hand, sometimes a table plane below
  it, and a far wall; rasterized with `render.rasterizer.rasterize_depth` (planes analytically).
* sensor (Kinect 1, baseline 75 mm): projector shadows (a pixel is missing when a nearer surface
  to its right blocks the projector ray: max_{c'>c}(D[c'] - c') > D[c] - c with disparity
  D = f*b/z), flying pixels mixing both sides of depth edges, dropouts on grazing surfaces and at
  random, correlated + white disparity noise, 1/8-pixel disparity quantization, integer mm; missing
  or out-of-range depth is written as the NYU fill 2001 (shadows, range) or 0 (dropouts).
* labels (`joint_data.mat`, 36 joints, noise-free): the 14 evaluated NYU joints come from the
  network joints via `NYU14.to_network` at ids `NYU_EVAL_IDS_36`; PALM_2 (31, thumb-side wrist) and
  PALM_3 (32, palm centre) are the means of the fixed vertex sets of `models.palm_landmarks` (the
  definition the evaluator uses).  Others: per finger tip, DIP, mid(DIP, PIP), PIP, mid(PIP, MCP),
  MCP (thumb: tip, IP, mid, MCP, mid, CMC); PALM_4/5/6 = midpoints of PALM_3 with the index MCP, the
  pinky MCP and the wrist.
* refined centres (V2V file, y-up): mean of the 14 evaluated joints + (-2.9, 8.8, 11.0) mm (the
  offset measured on the real NYU centres, datasets.md 9.2) + N(0, 8 mm) per axis.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from config import Config
from datasets.joints import NYU14, NYU_EVAL_IDS_36
from datasets.nyu import write_nyu_split
from datasets.synthetic import sample_seed
from hand.params import NUM_POSE_COEFFS, NUM_SHAPE_COEFFS, POSE, ROTATION, SCALE, SHAPE, TRANSLATION, identity_params
from hand.rotations import axis_angle_to_quat, compose_global_rotation
from models.mano import build_hand_model, hand_arrays
from models.palm_landmarks import choose_vertex_sets
from models.pose_sampler import PoseSampler
from render import camera
from render.rasterizer import rasterize_depth

SIMREAL_SEED = 2022
NYU_FILL_MM = 2001.0
KINECT_BASELINE_MM = 75.0
DISPARITY_STEPS_PER_PX = 8.0
WRIST_CAP_VERTEX = 778
FRAME_BATCH = 8
# (first 36-id, network chain tip -> DIP/IP -> PIP/MCP -> MCP/CMC) per NYU finger F1..F4, TH.
NYU_FINGERS = ((0, (18, 9, 8, 7)), (6, (19, 12, 11, 10)), (12, (17, 6, 5, 4)), (18, (16, 3, 2, 1)),
               (24, (20, 15, 14, 13)))


@dataclass(frozen=True)
class SimrealStyle:
    """Constants of the real-like domain (differ on purpose from the pretraining distribution)."""
    pose_seed_offset: int = 7919
    articulation_noise: float = 0.15
    subject_shape_std: float = 1.5
    shape_noise: float = 0.7
    subject_scale_range: tuple = (0.92, 1.08)
    view_angle_std_deg: float = 30.0
    depth_range_mm: tuple = (650.0, 1000.0)
    u_range: tuple = (200.0, 440.0)
    v_range: tuple = (150.0, 330.0)
    arm_length_mm: tuple = (200.0, 300.0)
    arm_growth: float = 0.35
    arm_bend: float = 0.35
    arm_rings: int = 6
    body_gap_mm: tuple = (250.0, 450.0)
    body_half_width_mm: tuple = (150.0, 230.0)
    table_prob: float = 0.5
    table_below_mm: tuple = (150.0, 300.0)
    wall_mm: tuple = (2100.0, 3500.0)
    disparity_noise_px: float = 0.05
    disparity_field_px: float = 0.05
    flying_prob: float = 0.35
    edge_jump_mm: float = 25.0
    grazing_slope: float = 4.0
    grazing_drop: float = 0.3
    dropout_prob: float = 0.002
    center_bias_mm: tuple = (-2.9, 8.8, 11.0)
    center_noise_mm: float = 8.0


STYLE = SimrealStyle()


# ---- geometry of the scene -------------------------------------------------------------------------
def forearm_faces(loop: Tensor, num_verts: int, rings: int) -> Tensor:
    """Faces (F_arm, 3) of a tube whose ring 0 is `loop` (hand vertex ids) and whose rings 1..R are
    new vertices num_verts + (k-1)*L + i, closed by a fan to the last vertex."""
    L = len(loop)
    ring_ids = [loop] + [num_verts + (k - 1) * L + torch.arange(L) for k in range(1, rings + 1)]
    faces = []
    for a, b in zip(ring_ids[:-1], ring_ids[1:]):
        a2, b2 = a.roll(-1), b.roll(-1)
        faces += [torch.stack([a, a2, b2], 1), torch.stack([a, b2, b], 1)]
    end = ring_ids[-1]
    faces.append(torch.stack([end, torch.full_like(end, num_verts + rings * L), end.roll(-1)], 1))
    return torch.cat(faces)


def forearm_verts(verts: Tensor, joints: Tensor, loop: Tensor, length: Tensor, bend: Tensor,
                  rings: int, growth: float) -> Tensor:
    """New forearm vertices (B, R*L + 1, 3): rings swept from the wrist loop away from the fingers.

    verts (B, 779, 3), joints (B, 21, 3) mm; length (B,) mm; bend (B, 3) direction perturbation.
    The direction (wrist cap - middle MCP, perturbed) is kept pointing away from the camera (z >= 0.2).
    """
    cap = verts[:, WRIST_CAP_VERTEX]
    d = F.normalize(cap - joints[:, 4], dim=-1) + bend
    d = F.normalize(torch.cat([d[:, :2], d[:, 2:].clamp_min(0.2)], dim=-1), dim=-1)
    ring0 = verts[:, loop] - cap[:, None]
    out = []
    for k in range(1, rings + 1):
        t = k / rings
        out.append(cap[:, None] + ring0 * (1.0 + growth * t) + (d * length[:, None] * t)[:, None])
    out.append((cap + d * length[:, None])[:, None])
    return torch.cat(out, dim=1)


def plane_depth(K: Tensor, height: int, width: int, scene: dict) -> Tensor:
    """Analytic background depth (B, H, W) mm: far wall, tilted torso rectangle, optional table.

    scene: wall (B,), body_z, body_x, body_halfw, body_top, body_tilt, table_y, table_on (B,),
    table_near, table_far (B,).
    """
    rx = (torch.arange(width, dtype=K.dtype, device=K.device) - K[0, 2]) / K[0, 0]
    ry = (torch.arange(height, dtype=K.dtype, device=K.device) - K[1, 2]) / K[1, 1]
    rx, ry = rx[None, None, :], ry[None, :, None]
    col = lambda k: scene[k][:, None, None]  # noqa: E731
    inf = torch.full((), float("inf"), dtype=K.dtype, device=K.device)
    depth = col("wall").expand(-1, height, width)
    denom = 1.0 - col("body_tilt") * rx
    zb = (col("body_z") - col("body_tilt") * col("body_x")) / denom.clamp_min(0.1)
    ok = (denom > 0.1) & ((zb * rx - col("body_x")).abs() < col("body_halfw")) & (zb * ry > col("body_top"))
    depth = torch.minimum(depth, torch.where(ok, zb, inf))
    zt = col("table_y") / ry.clamp_min(1e-6)
    ok = (ry > 1e-6) & (zt > col("table_near")) & (zt < col("table_far")) & (col("table_on") > 0)
    return torch.minimum(depth, torch.where(ok, zt, inf))


# ---- sensor -----------------------------------------------------------------------------------------
def projector_shadow(depth: Tensor, fx: float, margin_px: float = 1.0) -> Tensor:
    """(B, H, W) bool: surface pixels the projector (to the camera's right) cannot light."""
    W = depth.shape[-1]
    disp = torch.where(depth > 0, fx * KINECT_BASELINE_MM / depth.clamp_min(1e-3), torch.zeros_like(depth))
    h = disp - torch.arange(W, dtype=depth.dtype, device=depth.device)
    suffix = h.flip(-1).cummax(-1).values.flip(-1)
    after = torch.cat([suffix[..., 1:], torch.full_like(suffix[..., :1], -float("inf"))], dim=-1)
    return (depth > 0) & (after > h + margin_px)


def _neighbour_extremes(depth: Tensor) -> tuple[Tensor, Tensor]:
    """Farthest and nearest valid depth among the 4-neighbours (missing = 0 is ignored)."""
    big = torch.full_like(depth, 1e9)
    pad_max = F.pad(depth, (1, 1, 1, 1))
    pad_min = F.pad(torch.where(depth > 0, depth, big), (1, 1, 1, 1), value=1e9)
    shifts = ((slice(1, -1), slice(2, None)), (slice(1, -1), slice(None, -2)),
              (slice(2, None), slice(1, -1)), (slice(None, -2), slice(1, -1)))
    far = torch.stack([pad_max[..., r, c] for r, c in shifts]).amax(0)
    near = torch.stack([pad_min[..., r, c] for r, c in shifts]).amin(0)
    return far, near


def flying_pixels(depth: Tensor, u: Tensor, prob: float, jump_mm: float) -> Tensor:
    """Mix depth-edge pixels toward the other side of the edge (4-neighbours), with probability `prob`:
    z + a*(z_other - z), a = u/prob ~ U(0, 1) where u < prob.

    depth (B, H, W) mm (0 = missing); u (B, H, W) uniform in [0, 1].
    """
    valid = depth > 0
    far, near = _neighbour_extremes(depth)
    fg_edge = valid & (far - depth > jump_mm)
    bg_edge = valid & (depth - near > jump_mm) & ~fg_edge
    fly = u < prob
    a = u / max(prob, 1e-12)
    out = torch.where(fg_edge & fly, depth + a * (far - depth), depth)
    return torch.where(bg_edge & fly, depth - a * (depth - near), out)


def grazing_mask(depth: Tensor, fx: float, slope: float, jump_mm: float) -> Tensor:
    """(B, H, W) bool: pixels on one surface seen at a grazing angle (|dz/dx| > slope, metric)."""
    pad = F.pad(depth[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    gx = (pad[:, 1:-1, 2:] - pad[:, 1:-1, :-2]) / 2
    gy = (pad[:, 2:, 1:-1] - pad[:, :-2, 1:-1]) / 2
    g = torch.maximum(gx.abs(), gy.abs())
    metric = g * fx / depth.clamp_min(1.0)
    return (depth > 0) & (g < jump_mm) & (metric > slope)


def disparity_quantize(depth: Tensor, fx: float, noise_px: Tensor) -> Tensor:
    """Kinect-1 depth: disparity f*b/z + noise, rounded to 1/8 px, back to z (0 stays 0)."""
    fb = fx * KINECT_BASELINE_MM
    disp = fb / depth.clamp_min(1.0) + noise_px
    q = torch.round(disp * DISPARITY_STEPS_PER_PX).clamp_min(1.0) / DISPARITY_STEPS_PER_PX
    return torch.where(depth > 0, fb / q, torch.zeros_like(depth))


def kinect_sensor(depth: Tensor, fx: float, generator: torch.Generator, style: SimrealStyle = STYLE) -> Tensor:
    """Clean scene depth (B, H, W) mm -> Kinect-1-like NYU frame (float mm, integer-valued)."""
    B, H, W = depth.shape
    g = generator
    u1, u2 = torch.rand(2, B, H, W, generator=g)
    shadow = projector_shadow(depth, fx)
    z = flying_pixels(depth, u1, style.flying_prob, style.edge_jump_mm)
    graze = grazing_mask(depth, fx, style.grazing_slope, style.edge_jump_mm)
    drop = (graze & (u2 < style.grazing_drop)) | (u2 > 1.0 - style.dropout_prob)
    field = torch.randn(B, 1, H // 16 + 1, W // 16 + 1, generator=g)
    field = F.interpolate(field, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    noise = style.disparity_noise_px * torch.randn(B, H, W, generator=g) + style.disparity_field_px * field
    z = torch.round(disparity_quantize(z, fx, noise))
    z = torch.where(shadow | (z <= 0) | (z > NYU_FILL_MM), torch.full_like(z, NYU_FILL_MM), z)
    return torch.where(drop & (z < NYU_FILL_MM), torch.zeros_like(z), z)


def sense_in_range(depth: Tensor, fx: float, generator: torch.Generator, style: SimrealStyle = STYLE,
                   margin: int = 2) -> Tensor:
    """`kinect_sensor` of one frame (H, W), run only on the bounding box (+ margin) of the surfaces
    nearer than the NYU fill; everything else (the far wall) reads the fill value, as it would."""
    near = (depth > 0) & (depth < NYU_FILL_MM)
    out = torch.full_like(depth, NYU_FILL_MM)
    if not near.any():
        return out
    rows, cols = near.any(dim=1).nonzero()[:, 0], near.any(dim=0).nonzero()[:, 0]
    H, W = depth.shape
    r0, r1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, H)
    c0, c1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, W)
    out[r0:r1, c0:c1] = kinect_sensor(depth[None, r0:r1, c0:c1], fx, generator, style)[0]
    return out


# ---- labels and centres -------------------------------------------------------------------------------
def nyu36_from_network(joints: Tensor, verts: Tensor, palm_sets: tuple) -> Tensor:
    """NYU 36 joints (B, 36, 3) from network joints (B, 21, 3) and mesh (B, 779, 3); see module doc.

    palm_sets: (PALM_2 vertex ids, PALM_3 vertex ids) of `models.palm_landmarks.choose_vertex_sets`.
    """
    out = torch.zeros(joints.shape[0], 36, 3, dtype=joints.dtype, device=joints.device)
    mid = lambda a, b: 0.5 * (a + b)  # noqa: E731
    for base, (tip, j3, j2, j1) in NYU_FINGERS:
        t, c3, c2, c1 = joints[:, tip], joints[:, j3], joints[:, j2], joints[:, j1]
        out[:, base:base + 6] = torch.stack([t, c3, mid(c3, c2), c2, mid(c2, c1), c1], dim=1)
    palm = verts[:, torch.as_tensor(palm_sets[1], dtype=torch.long)].mean(dim=1)
    out[:, 30] = joints[:, 0]
    out[:, 31] = verts[:, torch.as_tensor(palm_sets[0], dtype=torch.long)].mean(dim=1)
    out[:, 32] = palm
    out[:, 33] = mid(palm, joints[:, 1])
    out[:, 34] = mid(palm, joints[:, 7])
    out[:, 35] = mid(joints[:, 0], palm)
    for i, net in enumerate(NYU14.to_network):  # the evaluated joints, by the shared table
        if net is not None:
            out[:, NYU_EVAL_IDS_36[i]] = joints[:, net]
    return out


def refined_centers(joints36: Tensor, noise: Tensor, style: SimrealStyle = STYLE) -> Tensor:
    """V2V-like centres (B, 3) y-down mm: 14-joint mean + measured bias + noise (B, 3) ~ N(0, 1)."""
    bias = torch.tensor(style.center_bias_mm, dtype=joints36.dtype, device=joints36.device)
    return joints36[:, list(NYU_EVAL_IDS_36)].mean(dim=1) + bias + style.center_noise_mm * noise


# ---- generation ------------------------------------------------------------------------------------------
def _uniform(g: torch.Generator, n: int, rng: tuple) -> Tensor:
    return rng[0] + (rng[1] - rng[0]) * torch.rand(n, generator=g)


class SimrealScene:
    """Draws and renders simreal frames for one hand model and camera (CPU, float32)."""

    def __init__(self, cfg: Config, hand_model, seed: int, style: SimrealStyle = STYLE, pose_sampler=None):
        self.hand_model, self.style = hand_model, style
        self.K = camera.make_intrinsics(cfg.fx, cfg.fy, cfg.cx, cfg.cy)
        self.frame_hw = (int(cfg.image_height), int(cfg.image_width))
        faces = hand_model.faces.detach().cpu().long()
        self.loop = hand_model.wrist_loop.detach().cpu().long()
        self.num_verts = WRIST_CAP_VERTEX + 1
        self.faces = torch.cat([faces, forearm_faces(self.loop, self.num_verts, style.arm_rings)])
        with torch.no_grad():
            v, j = hand_model.source_space(identity_params(1))
        sets = choose_vertex_sets(v[0].numpy(), j[0].numpy(), faces.numpy())
        self.palm_sets = (np.asarray(sets[1]), np.asarray(sets[2]))
        g = torch.Generator().manual_seed(sample_seed(seed, 999_999))
        self.subject_beta = style.subject_shape_std * torch.randn(NUM_SHAPE_COEFFS, generator=g)
        self.subject_scale = float(_uniform(g, 1, style.subject_scale_range))
        if pose_sampler is None:
            pose_sampler = PoseSampler(hand_arrays(cfg, hand_model), seed=seed + style.pose_seed_offset)
        self.pose_sampler = pose_sampler

    def draw(self, n: int, g: torch.Generator) -> dict:
        """Per-frame random quantities (CPU tensors with leading dim n)."""
        st, K = self.style, self.K
        rows = self.pose_sampler.sample(n, g).float().cpu().clone()
        rows[:, POSE] += st.articulation_noise * torch.randn(n, NUM_POSE_COEFFS, generator=g)
        rows[:, SHAPE] = self.subject_beta + st.shape_noise * torch.randn(n, NUM_SHAPE_COEFFS, generator=g)
        rows[:, SCALE] = self.subject_scale
        rows[:, TRANSLATION] = 0.0
        axis = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
        angle = math.radians(st.view_angle_std_deg) * torch.randn(n, 1, generator=g)
        rows[:, ROTATION] = compose_global_rotation(rows[:, ROTATION], axis_angle_to_quat(axis * angle))
        uvz = torch.stack([_uniform(g, n, st.u_range), _uniform(g, n, st.v_range),
                           _uniform(g, n, st.depth_range_mm)], dim=-1)
        place = camera.backproject(uvz[:, None], K)[:, 0]
        x, y, z = place.unbind(-1)
        scene = {
            "wall": _uniform(g, n, st.wall_mm), "body_z": z + _uniform(g, n, st.body_gap_mm),
            "body_x": x + _uniform(g, n, (-120.0, 120.0)), "body_halfw": _uniform(g, n, st.body_half_width_mm),
            "body_top": y + _uniform(g, n, (-50.0, 150.0)), "body_tilt": _uniform(g, n, (-0.3, 0.3)),
            "table_on": (torch.rand(n, generator=g) < st.table_prob).float(),
            "table_y": y + _uniform(g, n, st.table_below_mm), "table_near": z - _uniform(g, n, (50.0, 150.0)),
            "table_far": z + _uniform(g, n, (400.0, 900.0)),
        }
        return {"rows": rows, "place": place, "arm_length": _uniform(g, n, st.arm_length_mm),
                "arm_bend": st.arm_bend * torch.randn(n, 3, generator=g), "scene": scene,
                "center_noise": torch.randn(n, 3, generator=g)}

    @torch.no_grad()
    def hands_mm(self, draws: dict, sl: slice) -> tuple[Tensor, Tensor]:
        """Placed hand mesh (b, 779, 3) and joints (b, 21, 3) in camera mm (joint mean at `place`)."""
        v, j = self.hand_model.source_space(draws["rows"][sl])
        shift = (draws["place"][sl] - j.mean(dim=1))[:, None]
        return v + shift, j + shift

    @torch.no_grad()
    def labels(self, draws: dict) -> tuple[Tensor, Tensor]:
        """joints36 (n, 36, 3) and refined centres (n, 3), camera mm y-down."""
        n, out = draws["rows"].shape[0], []
        for i in range(0, n, 256):
            v, j = self.hands_mm(draws, slice(i, i + 256))
            out.append(nyu36_from_network(j, v, self.palm_sets))
        joints36 = torch.cat(out) if out else torch.zeros(0, 36, 3)
        return joints36, refined_centers(joints36, draws["center_noise"], self.style)

    @torch.no_grad()
    def clean_depth(self, draws: dict, sl: slice) -> Tensor:
        """Noise-free scene depth (b, H, W) mm: hand + forearm + planes."""
        H, W = self.frame_hw
        v, j = self.hands_mm(draws, sl)
        arm = forearm_verts(v, j, self.loop, draws["arm_length"][sl], draws["arm_bend"][sl],
                            self.style.arm_rings, self.style.arm_growth)
        hand, _ = rasterize_depth(torch.cat([v, arm], dim=1), self.faces, self.K, H, W)
        scene = {k: t[sl] for k, t in draws["scene"].items()}
        planes = plane_depth(self.K, H, W, scene)
        return torch.where(hand > 0, torch.minimum(hand, planes), planes)

    def frames(self, draws: dict, seed: int, batch: int = FRAME_BATCH):
        """Iterator of sensor frames (H, W) float32 mm; batch k's sensor noise is seeded by (seed, k)."""
        n = draws["rows"].shape[0]
        for k, i in enumerate(range(0, n, batch)):
            clean = self.clean_depth(draws, slice(i, i + batch))
            g = torch.Generator().manual_seed(sample_seed(seed, k))
            for f in clean:
                yield sense_in_range(f, float(self.K[0, 0]), g, self.style).numpy()


def generate_simreal(root: str | Path, cfg: Config, n_train: int, n_test: int, seed: int) -> dict:
    """Write <root>/{train,test} in the exact NYU format; returns a summary of the set."""
    t0 = time.perf_counter()
    scene = SimrealScene(cfg, build_hand_model(cfg).cpu(), seed)
    summary = {"root": str(root), "seed": seed, "frames": {}, "center_error_mm": {}}
    for k, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        if n <= 0:
            continue
        draws = scene.draw(n, torch.Generator().manual_seed(sample_seed(seed, 1000 + k)))
        joints36, centers = scene.labels(draws)
        written = write_nyu_split(root, split, scene.frames(draws, sample_seed(seed, 2000 + k)),
                                  joints36.numpy(), centers.numpy(), K=scene.K.double().numpy())
        err = (centers - joints36[:, list(NYU_EVAL_IDS_36)].mean(dim=1)).norm(dim=-1)
        summary["frames"][split] = written
        summary["center_error_mm"][split] = float(err.mean())
    summary["seconds"] = time.perf_counter() - t0
    return summary


def ensure_simreal(cfg: Config) -> Path:
    """The simreal folder cfg.data_root, generated once (SIMREAL_SEED) when it is missing."""
    root = Path(cfg.data_root)
    done = all((root / s / f"center_{s}_refined.txt").is_file() for s in ("train", "test"))
    if not done:
        print(f"simreal: generating {cfg.simreal_train_frames} train + {cfg.simreal_test_frames} test frames "
              f"into {root} (once; a few minutes on CPU)", flush=True)
        s = generate_simreal(root, cfg, cfg.simreal_train_frames, cfg.simreal_test_frames, SIMREAL_SEED)
        print(f"simreal: done in {s['seconds']:.0f} s; centre error {s['center_error_mm']}", flush=True)
    return root
