"""Subject hands of the model-mismatch set (datasets/mismatch.py): surfaces OUTSIDE the model's space.

A subject starts from the stand-in's rest mesh (same 778-vertex topology, so vertices correspond)
and is then rebuilt with parameters the model has no direction for (`SubjectParams`, drawn per
subject from a seed):
1. skeleton retarget: every one of the 15 bones gets its own length factor, each chain its own rest
   spread about the dorsal axis, the palm its own width / length and a transverse metacarpal arch
   (index and pinky knuckles sink palmar; the model's knuckles lie in one plane); vertices follow the
   blend of the per-bone affine maps (stretch along the old bone, rotate, translate) with the
   stand-in's weights;
2. finger cross-sections (per chain, along the bone coordinate u in [0, 3]): own width, an own
   dorsal-palmar ellipse ratio (the model's is fixed at 0.92), joint bulges at PIP / DIP with waisted
   shafts between them, a dorsal knuckle bump, a fingertip pad, a flattened nail;
3. palm: separate palmar / dorsal half-thickness factors, a thenar and a hypothenar bulge, MCP knuckle
   bumps; 4. overall size about the wrist.  Pose-dependent: a dorsal knuckle protrusion growing with
   (1 - cos flexion) (the model's correctives are a symmetric 1.5 mm normal bulge).
Labels are placed on this surface, never read off a regressor:
* PIP, DIP, thumb MCP and IP: area centroid of the plane cross-section of the deformed finger at the
  joint (plane normal = mean of the two bone directions);
* finger MCPs: area centroid of the deformed base ring (finger / palm seam); thumb CMC: its base ring
  centroid moved `cmc_depth_mm` into the palm; wrist: centroid of the wrist cross-section;
* fingertips: `pad_depth_mm` (at most 45 % of the local thickness) under the pad skin, on the line
  along the pad normal through the point 80 % of the way from the DIP label to the tip apex;
* PALM_1 / PALM_2: on the wrist cross-section, 60 % of the way from its centroid to the ulnar /
  radial skin; PALM_3: midway between palmar and dorsal skin through the midpoint of the wrist and the
  mean finger MCP.
These points are the subject's articulation centres too (own skinning weights, own anatomical axes).
Frame: MANO axes in mm (fingers -x, back of the hand +y, thumb side +z), wrist near the origin.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from smplx.lbs import batch_rigid_transform

from datasets.mismatch_geometry import plane_section, polygon_centroid, ray_hit
from hand.rotations import axis_angle_to_matrix, rotation_about_axis
from hand.skeleton import BONE_CHILD, CHAINS, MANO_PARENTS, TIP_PARENTS, TIP_VERTEX_IDS
from models.mano import HandModel
from models.pose_sampler import anatomical_axes
from models.standin_hand import NUM_VERTS, make_standin_arrays, skinning_weights, vertex_normals
from models.standin_mesh import THICKNESS_RATIO, build_layout, finalize_mesh, hand_vertices

TIP_FRACTION = 0.8


@dataclass(frozen=True)
class SubjectParams:
    """One subject's construction constants (drawn by `draw_subject`); tuples are per chain
    (index, middle, pinky, ring, thumb) or per bone k = 1..15 (joint k -> its child)."""
    scale: float                 # overall size about the wrist
    bone_scale: tuple            # (15,) length factor of each bone
    palm_width: float            # factor across the palm
    palm_length: float           # factor wrist -> knuckles
    arch_mm: float               # palmar sink of the index / pinky knuckles (transverse arch)
    spread_deg: tuple            # (5,) rest rotation of each chain about the dorsal axis
    finger_width: tuple          # (5,) cross-section factor
    thickness_ratio: tuple       # (5,) dorsal-palmar / lateral half-axis (the model: 0.92)
    joint_bulge: float           # widening at PIP / DIP (fraction of the radius)
    shaft_waist: float           # narrowing of the shafts between the joints (fraction)
    knuckle_mm: float            # dorsal bump over the PIP (DIP: 0.7 x)
    pad_mm: float                # fingertip pad bulge
    nail_flatten: float          # dorsal height kept under the nail (1 = round)
    palm_palmar: float           # palmar half-thickness factor of the palm
    palm_dorsal: float           # dorsal half-thickness factor of the palm
    mcp_knuckle_mm: float        # dorsal bump over each finger MCP
    thenar_mm: float             # thenar bulge
    hypothenar_mm: float         # hypothenar bulge
    flex_knuckle_mm: float       # dorsal protrusion at a 90-degree flexion (pose dependent)
    pad_depth_mm: float          # fingertip label depth under the pad skin
    cmc_depth_mm: float          # thumb CMC label depth under its base ring


def draw_subject(rng: np.random.Generator) -> SubjectParams:
    """Subject constants from `rng` (ranges chosen to look like different adult hands)."""
    u = lambda a, b, n=None: rng.uniform(a, b, n)  # noqa: E731
    t = lambda x: tuple(float(v) for v in x)  # noqa: E731
    return SubjectParams(
        scale=float(u(0.9, 1.1)), bone_scale=t(np.clip(rng.normal(1.0, 0.1, 15), 0.8, 1.2)),
        palm_width=float(u(0.88, 1.12)), palm_length=float(u(0.9, 1.1)), arch_mm=float(u(3.0, 7.0)),
        spread_deg=t(np.concatenate([rng.normal(0, 5, 4), rng.normal(0, 7, 1)])),
        finger_width=t(u(0.85, 1.2, 5)), thickness_ratio=t(u(0.68, 0.84, 5)),
        joint_bulge=float(u(0.06, 0.14)), shaft_waist=float(u(0.03, 0.08)), knuckle_mm=float(u(1.2, 2.4)),
        pad_mm=float(u(2.0, 3.5)), nail_flatten=float(u(0.65, 0.85)), palm_palmar=float(u(1.15, 1.4)),
        palm_dorsal=float(u(0.8, 1.0)), mcp_knuckle_mm=float(u(1.5, 3.0)), thenar_mm=float(u(5.0, 9.0)),
        hypothenar_mm=float(u(2.0, 4.0)), flex_knuckle_mm=float(u(1.5, 3.0)), pad_depth_mm=float(u(2.5, 4.0)),
        cmc_depth_mm=float(u(6.0, 10.0)))


# ---- geometry helpers ----------------------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _smooth(a: float, b: float, x: np.ndarray) -> np.ndarray:
    s = np.clip((x - a) / (b - a), 0.0, 1.0)
    return s * s * (3 - 2 * s)


def _gauss(x: np.ndarray, s: float) -> np.ndarray:
    return np.exp(-0.5 * (x / s) ** 2)


def hand_frame(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hand axis wrist -> middle MCP, palmar normal, ulnar direction) unit (3,) each from joints (16+, 3)."""
    axis = _unit(joints[4] - joints[0])
    palmar = _unit(np.cross(joints[1] - joints[0], joints[7] - joints[0]))
    palmar = _unit(palmar - (palmar @ axis) * axis)
    return axis, palmar, np.cross(palmar, axis) * np.sign(np.cross(palmar, axis) @ (joints[7] - joints[1]))


# ---- the base (stand-in) topology -------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def base_hand() -> dict:
    """The stand-in's rest mesh (mm), joints (16, 3), weights, faces (open, and capped with its loop),
    vertex labels (0 palm, c + 1 chain c) and ring ids; the HandModel itself under 'model'."""
    layout = build_layout()
    mesh = finalize_mesh(layout, hand_vertices(layout, np.zeros(10)), NUM_VERTS, TIP_VERTEX_IDS)
    arrays = make_standin_arrays()
    model = HandModel(arrays)
    v = np.asarray(arrays["v_template"], np.float64) * 1e3
    return {"verts": v, "joints": np.asarray(arrays["J_regressor"]) @ v, "weights": np.asarray(arrays["weights"]),
            "faces": np.asarray(arrays["f"], np.int64), "faces_capped": model.faces.numpy(),
            "loop": model.wrist_loop.numpy(), "labels": mesh.labels,
            "base_rings": [mesh.final_ids(np.asarray(t.base)) for t in layout.tubes], "model": model}


def with_cap(verts: np.ndarray) -> np.ndarray:
    """(..., 778, 3) -> (..., 779, 3): append the wrist-cap vertex (mean of the wrist loop)."""
    loop = base_hand()["loop"]
    return np.concatenate([verts, verts[..., loop, :].mean(-2, keepdims=True)], axis=-2)


# ---- construction ------------------------------------------------------------------------------------
def _retarget(p: SubjectParams, b: dict, frame) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: per-bone affine maps blended by the stand-in weights -> verts (778, 3), joints + tip
    apexes (21, 3)."""
    v, w = b["verts"], b["weights"]
    pts = np.concatenate([b["joints"], v[list(TIP_VERTEX_IDS)]])
    axis, palmar, ulnar = frame
    w0 = pts[0]
    Mp = np.eye(3) + (p.palm_length - 1) * np.outer(axis, axis) + (p.palm_width - 1) * np.outer(ulnar, ulnar)
    length = np.mean([(pts[ch[0]] - w0) @ axis for ch in CHAINS[:4]])
    half_w = 0.5 * (pts[1] - pts[7]) @ -ulnar

    def palm_map(x: np.ndarray) -> np.ndarray:  # scaled palm with a transverse arch (sides sink palmar)
        rel = x - w0
        bend = p.arch_mm * ((rel @ ulnar) / half_w) ** 2 * _smooth(0.0, length, rel @ axis)
        return w0 + rel @ Mp.T + bend[..., None] * palmar

    new = pts.copy()
    maps: list = [None] * 16
    for c, chain in enumerate(CHAINS):
        R = rotation_about_axis(-palmar, np.deg2rad(p.spread_deg[c]))
        new[chain[0]] = palm_map(pts[chain[0]])
        for k in chain:
            child = BONE_CHILD[k - 1]
            d = _unit(pts[child] - pts[k])
            M = R @ (np.eye(3) + (p.bone_scale[k - 1] - 1) * np.outer(d, d))
            maps[k] = (M, pts[k], new[k])
            new[child] = new[k] + M @ (pts[child] - pts[k])
    out = w[:, :1] * palm_map(v)
    for k in range(1, 16):
        M, src, dst = maps[k]
        out += w[:, k, None] * (dst + (v - src) @ M.T)
    return out, new


def _pad_dir(c: int, d: np.ndarray, frame) -> np.ndarray:
    """Unit pad (palmar) direction(s) perpendicular to bone direction(s) d (..., 3) of chain c."""
    _, palmar, ulnar = frame
    pd = palmar if c < 4 else _unit(palmar + ulnar)  # the thumb's pad faces the fingers (its flexion)
    return _unit(pd - (d @ pd)[..., None] * d)


def _sections(p: SubjectParams, v: np.ndarray, skel: np.ndarray, labels: np.ndarray, frame) -> np.ndarray:
    """Step 2: finger cross-section field on chain vertices -> verts (778, 3)."""
    out = v.copy()
    for c, chain in enumerate(CHAINS):
        ids = np.nonzero(labels == c + 1)[0]
        P = skel[[chain[0], chain[1], chain[2], BONE_CHILD[chain[2] - 1]]]
        x = v[ids]
        ts, ds = [], []
        for s in range(3):
            ab = P[s + 1] - P[s]
            t = np.clip((x - P[s]) @ ab / (ab @ ab), 0, 1)
            ts.append(t)
            ds.append(np.linalg.norm(x - P[s] - t[:, None] * ab, axis=1))
        seg = np.argmin(np.stack(ds, 1), 1)
        t = np.stack(ts, 1)[np.arange(len(ids)), seg]
        u = seg + t
        q = P[seg] + t[:, None] * (P[seg + 1] - P[seg])
        pad = _pad_dir(c, _unit(P[seg + 1] - P[seg]), frame)
        r = x - q
        rn = -(r * pad).sum(1)                       # toward the nail / back (> 0)
        cos = rn / np.maximum(np.linalg.norm(r, axis=1), 1e-9)
        ramp = _smooth(0.0, 0.35, u)
        width = 1 + ramp * ((p.finger_width[c] - 1) + p.joint_bulge * (_gauss(u - 1, .12) + _gauss(u - 2, .12))
                            - p.shaft_waist * (_gauss(u - .5, .18) + _gauss(u - 1.5, .18)))
        thick = width * (1 + ramp * (p.thickness_ratio[c] / THICKNESS_RATIO - 1))
        flat = 1 - (1 - p.nail_flatten) * _smooth(2.2, 2.5, u) * np.clip(cos, 0, 1) ** 2
        r_new = width[:, None] * (r + rn[:, None] * pad) - (thick * flat * rn)[:, None] * pad
        bump = (p.pad_mm * _gauss(u - 2.55, .16) * np.clip(-cos, 0, 1) ** 2
                - p.knuckle_mm * (_gauss(u - 1, .1) + .7 * _gauss(u - 2, .1)) * np.clip(cos, 0, 1) ** 2)
        out[ids] = q + r_new + bump[:, None] * pad
    return out


def _palm(p: SubjectParams, v: np.ndarray, skel: np.ndarray, b: dict, frame) -> np.ndarray:
    """Step 3: palm thickness, thenar / hypothenar bulges, MCP knuckles -> verts (778, 3)."""
    axis, palmar, ulnar = frame
    dorsal, w0 = -palmar, skel[0]
    rel = v - w0
    xa, yd = rel @ axis, rel @ dorsal
    length = np.mean([(skel[ch[0]] - w0) @ axis for ch in CHAINS[:4]])
    fade = (1 - _smooth(0.7 * length, length, xa)) * b["weights"][:, 0]
    fac = np.where(yd < 0, p.palm_palmar, p.palm_dorsal)
    v = v + ((fac - 1) * yd * fade)[:, None] * dorsal
    n = vertex_normals(v, b["faces"])

    def blob(centre: np.ndarray, sigma: float, amp: float, direction: np.ndarray) -> np.ndarray:
        g = np.exp(-0.5 * ((v - centre) ** 2).sum(1) / sigma ** 2) * np.clip(n @ direction, 0, 1)
        return (amp * g)[:, None] * direction

    th_u, pk_u = (skel[13] - w0) @ ulnar, (skel[7] - w0) @ ulnar
    out = v + blob(w0 + 0.4 * length * axis + 0.75 * th_u * ulnar + 12 * palmar, 13.0, p.thenar_mm, palmar)
    out += blob(w0 + 0.35 * length * axis + 0.75 * pk_u * ulnar + 12 * palmar, 12.0, p.hypothenar_mm, palmar)
    for ch in CHAINS[:4]:
        out += blob(skel[ch[0]] + 9 * dorsal - 2 * axis, 6.0, p.mcp_knuckle_mm, dorsal)
    return out


@dataclass
class SubjectHand:
    """A built subject (rest pose, MANO axes, mm).

    verts (778, 3); joints (16, 3) anatomical joint labels = articulation centres (MANO order);
    apex (5, 3) fingertip surface apexes and tips (5, 3) fingertip labels (index, middle, pinky, ring,
    thumb); palm (3, 3) PALM_1..3; weights (778, 16); axes (15, 3, 3) (flexion, abduction, twist);
    knuckle (778, 15) mm of dorsal protrusion per unit (1 - cos flexion) of joint k; retarget
    (21, 3): skeleton of step 1 (for the bone-length check).
    """
    params: SubjectParams
    verts: np.ndarray
    joints: np.ndarray
    apex: np.ndarray
    tips: np.ndarray
    palm: np.ndarray
    weights: np.ndarray
    axes: np.ndarray
    knuckle: np.ndarray
    retarget: np.ndarray


def _labels(p: SubjectParams, v: np.ndarray, skel: np.ndarray, b: dict, frame):
    """Anatomical labels on the final surface -> joints (16, 3), tips (5, 3), palm (3, 3)."""
    axis, palmar, ulnar = frame
    labels, faces, capped = b["labels"], b["faces"], b["faces_capped"]
    vc = with_cap(v)
    joints = np.zeros((16, 3))
    palm_faces = faces[(labels[faces] == 0).all(1)]
    wrist, segs, _ = plane_section(v, palm_faces, skel[0], axis, 45.0)
    joints[0] = wrist
    for c, chain in enumerate(CHAINS):
        ring = v[b["base_rings"][c]]
        joints[chain[0]] = polygon_centroid(ring)
        tube = faces[(labels[faces] == c + 1).all(1)]
        for k in chain[1:]:
            n = _unit(_unit(skel[k] - skel[MANO_PARENTS[k]]) + _unit(skel[BONE_CHILD[k - 1]] - skel[k]))
            joints[k] = plane_section(v, tube, skel[k], n, 20.0)[0]
    joints[13] -= p.cmc_depth_mm * _unit(joints[14] - joints[13])
    apex = v[list(TIP_VERTEX_IDS)]
    tips = np.zeros((5, 3))
    for c, k in enumerate(TIP_PARENTS):  # the line along the pad normal through q: pad skin .. nail skin
        tube = faces[(labels[faces] == c + 1).all(1)]
        pad = _pad_dir(c, _unit(apex[c] - joints[k]), frame)
        q = joints[k] + TIP_FRACTION * (apex[c] - joints[k])
        skin = q + 40.0 * pad - ray_hit(v, tube, q + 40.0 * pad, -pad) * pad
        nail = q - 40.0 * pad + ray_hit(v, tube, q - 40.0 * pad, pad) * pad
        tips[c] = skin - min(p.pad_depth_mm, 0.45 * float(np.linalg.norm(skin - nail))) * pad
    ends = segs.reshape(-1, 3) @ ulnar
    cu = wrist @ ulnar
    palm = np.stack([wrist + 0.6 * (ends.max() - cu) * ulnar, wrist + 0.6 * (ends.min() - cu) * ulnar,
                     np.zeros(3)])
    mid = 0.5 * (joints[0] + joints[[1, 4, 7, 10]].mean(0))
    front, back = ray_hit(vc, capped, mid, palmar), ray_hit(vc, capped, mid, -palmar)
    palm[2] = mid + 0.5 * (front - back) * palmar
    return joints, apex, tips, palm


def _knuckle_field(v: np.ndarray, joints: np.ndarray, apex: np.ndarray, labels: np.ndarray, frame) -> np.ndarray:
    """(778, 15): dorsal skin over each articulated joint (gate cos^2 to the nail side, 5 mm along the bone)."""
    pts = np.concatenate([joints, apex])
    n = vertex_normals(v, base_hand()["faces"])
    out = np.zeros((len(v), 15))
    for c, chain in enumerate(CHAINS):
        for k in chain:
            d = _unit(pts[BONE_CHILD[k - 1]] - pts[k])
            rel = v - pts[k]
            near = (np.linalg.norm(rel, axis=1) < 16.0) & ((labels == 0) | (labels == c + 1))
            out[:, k - 1] = near * _gauss(rel @ d, 5.0) * np.clip(-(n @ _pad_dir(c, d, frame)), 0, 1) ** 2
    return out


def build_subject(p: SubjectParams) -> SubjectHand:
    """Build the subject hand of parameters p (deterministic, float64, ~0.1 s)."""
    b = base_hand()
    frame = hand_frame(b["joints"])
    v, skel = _retarget(p, b, frame)
    v = _palm(p, _sections(p, v, skel, b["labels"], frame), skel, b, frame)
    w0 = skel[0]
    v, skel = w0 + p.scale * (v - w0), w0 + p.scale * (skel - w0)
    joints, apex, tips, palm = _labels(p, v, skel, b, frame)
    weights = skinning_weights(v, b["faces"], b["labels"], joints, apex)
    axes = anatomical_axes(joints, apex)
    knuckle = p.flex_knuckle_mm * _knuckle_field(v, joints, apex, b["labels"], frame)
    return SubjectHand(p, v, joints, apex, tips, palm, weights, axes, knuckle, skel)


def _transforms(hand: SubjectHand, angles_deg: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Rest-to-posed transforms A (n, 16, 4, 4) of the 16 joints and the flexion angles (n, 15) rad."""
    n = angles_deg.shape[0]
    ang = torch.as_tensor(np.deg2rad(angles_deg), dtype=torch.float64)
    ax = torch.as_tensor(hand.axes, dtype=torch.float64)
    mats = [axis_angle_to_matrix(ax[None, :, i] * ang[..., i, None]) for i in range(3)]
    local = torch.cat([torch.eye(3, dtype=torch.float64).expand(n, 1, 3, 3), mats[0] @ mats[1] @ mats[2]], 1)
    J = torch.as_tensor(hand.joints, dtype=torch.float64)
    _, A = batch_rigid_transform(local, J.expand(n, 16, 3), torch.as_tensor(MANO_PARENTS), dtype=torch.float64)
    return A, ang[..., 0]


def _apply(T: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (T[..., :3, :3] @ x[..., None])[..., 0] + T[..., :3, 3]


def pose_points(hand: SubjectHand, angles_deg: np.ndarray) -> np.ndarray:
    """Label points (n, 24, 3) posed in the rest frame: 16 joint labels (MANO order), 5 fingertip labels
    (index, middle, pinky, ring, thumb; each moves with its distal bone), PALM_1..3 (with the palm).

    angles_deg (n, 15, 3): (flexion, abduction, twist) about hand.axes per joint 1..15, R = Rf Ra Rt.
    Points 0..20 are the 21 joints in the network order (hand/skeleton.py)."""
    return _label_points(hand, _transforms(hand, angles_deg)[0])


def _label_points(hand: SubjectHand, A: torch.Tensor) -> np.ndarray:
    pts = torch.as_tensor(np.concatenate([hand.joints, hand.tips, hand.palm]))
    bone = torch.tensor(list(range(16)) + list(TIP_PARENTS) + [0, 0, 0])
    return _apply(A[:, bone], pts).numpy()


def pose_subject(hand: SubjectHand, angles_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posed mesh (n, 779, 3) (wrist cap appended) and label points (n, 24, 3) (`pose_points`), rest frame,
    with the subject's flexion-driven dorsal knuckle protrusion; float64 mm."""
    A, flex = _transforms(hand, angles_deg)
    bend = (torch.clamp(1 - torch.cos(flex), min=0) * (flex > 0)) @ torch.as_tensor(hand.knuckle).T
    normals = torch.as_tensor(vertex_normals(hand.verts, base_hand()["faces"]))
    rest = torch.as_tensor(hand.verts) + bend[..., None] * normals
    verts = _apply(torch.einsum("vk,nkij->nvij", torch.as_tensor(hand.weights), A), rest)
    return with_cap(verts.numpy()), _label_points(hand, A)
