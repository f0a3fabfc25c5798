"""'mismatch': a real-like NYU-format set whose hands, labels, poses and sensor are NOT the model's.

simreal (datasets/simreal.py) renders the model's own hand (a shape from the stand-in's 10 shape
directions) and labels it with the model's own joints, so a perfect fit is reachable.  This set keeps
simreal's format and camera (640 x 480, NYU intrinsics 588.03 / 587.07 / 320 / 240, the NYU writer,
36-joint joint_data.mat, V2V-style y-up centre files, read back by datasets.nyu with dataset=nyu
data_root=<root>) and its centre definition (14-label mean + the real NYU offset (-2.9, 8.8, 11.0)
mm + N(0, 8 mm) per axis), and differs in everything else:

* hands (datasets/mismatch_hand.py), vs simreal's model hand: 3 subjects with fixed parameters from
  the seed (train: subject 0 then 1, half of the train frames each; test: the unseen subject 2),
  rebuilt outside the model's space: 15 per-bone lengths, per-finger rest spread, palm width / length,
  a transverse metacarpal arch, per-finger width and dorsal-palmar ellipse ratio, joint bulges,
  waisted shafts, dorsal knuckles, fingertip pads, flat nails, palmar / dorsal palm thickness,
  thenar / hypothenar bulges, MCP knuckles, a flexion-driven knuckle protrusion; own skinning weights
  and joint axes around the subject's own joints.  Best fit of the stand-in's rest shape space (10
  directions + scale + rigid) to a subject (30 subjects, seeds 0-9): vertex RMS 2.7-6.5 mm (median
  4.5), 95th-percentile surface distance 3.6-8.9 mm (median 5.7); a simreal subject: < 1e-3 mm.
  Best fit of the whole model with pose free too (15 subjects): vertex RMS 1.3-2.9 mm, 95th
  percentile 1.9-4.0 mm, max 4.3-7.8 mm;
* labels, vs simreal's regressor joints: placed anatomically on that surface (cross-section
  centroids at the joints, fingertips 2.5-4 mm under the pad, PALM_1 / PALM_2 on the wrist section
  towards the ulnar / radial skin, PALM_3 mid-thickness of the palm).  Even the model's best full fit
  of a rest subject has its joints 3.5-3.8 mm (mean of the 11 finger joints) from these labels, and
  its wrist ~20 mm from PALM_1 (the evaluator predicts PALM_1 by the network wrist);
* poses and views (datasets/mismatch_scene.py), vs the training sampler used by simreal: a
  15-gesture mixture (counting, grasps, pinch, OK, hook, claw, ...), MCP to -30, abduction to +-28,
  Gaussian view angles with palm / back / side modes;
* scene, vs simreal: forearm with a random sleeve cuff (simreal: a plain tube), torso, table (35 %;
  simreal 50 %), wall 1.8-3.2 m (simreal 2.1-3.5), clutter spheres and boxes whose front is 60-700 mm
  behind PALM_3 and, in 30 % of frames, a sphere 20-120 mm behind and 140-230 mm beside it (simreal:
  none);
  PALM_3 at depth 600-1050 mm over u 180-460, v 130-350 (simreal: joint mean, 650-1000, 200-440,
  150-330);
* sensor, vs simreal's Kinect 1: structured-light-like (projector 60 mm to the left, 1/6 px disparity
  steps, fattening, incidence dropouts, speckle holes, range 350-2400 mm, every missing pixel 0; no
  2001 fill), see datasets/mismatch_scene.py.
<root>/mismatch_info.json holds the subjects' parameters, their shape-space residuals, and the subject
and gesture of every frame.  With dataset=nyu the reader shrinks the cube of test frames with index
>= 2440 (NYU's second test subject): keep n_test <= 2440.
CLI: python -m datasets.mismatch --out data/mismatch_exp --train 800 --test 300 --seed 0
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from datasets.depth_io import DatasetError
from datasets.mismatch_geometry import shape_space_fit
from datasets.mismatch_hand import (SubjectHand, base_hand, build_subject, draw_subject, hand_frame, pose_points,
                                    pose_subject)
from datasets.mismatch_scene import (GESTURE_NAMES, StructuredLight, box_mesh, forearm_rings, sample_gestures,
                                     sample_views, sense, sphere_depth)
from datasets.nyu import write_nyu_split
from datasets.simreal import NYU_FINGERS, STYLE, forearm_faces, plane_depth, refined_centers
from datasets.synthetic import sample_seed
from models.pose_sampler import finger_clearance
from render import camera
from render.rasterizer import rasterize_depth

MISMATCH_SEED = 2023
NYU_K = (588.03, 587.07, 320.0, 240.0)
FRAME_HW = (480, 640)
FRAME_BATCH = 8
N_SUBJECTS, TEST_SUBJECT = 3, 2
ARM_RINGS, N_BOXES = 8, 2


@dataclass(frozen=True)
class MismatchStyle:
    """Scene constants (mm unless named otherwise); clutter gaps are from PALM_3's depth to the object's
    nearest possible point (sphere front, box bounding sphere)."""
    u_range: tuple = (180.0, 460.0)
    v_range: tuple = (130.0, 350.0)
    depth_range_mm: tuple = (600.0, 1050.0)
    arm_length_mm: tuple = (180.0, 320.0)
    arm_bend: float = 0.3
    sleeve_prob: float = 0.6
    sleeve_gain: tuple = (0.25, 0.5)
    sleeve_t: tuple = (0.15, 0.85)
    body_gap_mm: tuple = (200.0, 500.0)
    body_half_width_mm: tuple = (140.0, 240.0)
    table_prob: float = 0.35
    table_below_mm: tuple = (120.0, 320.0)
    wall_mm: tuple = (1800.0, 3200.0)
    far_spheres: int = 3
    far_radius_mm: tuple = (40.0, 140.0)
    far_gap_mm: tuple = (60.0, 700.0)
    near_sphere_prob: float = 0.3
    near_offset_mm: tuple = (140.0, 230.0)
    near_gap_mm: tuple = (20.0, 120.0)
    near_radius_mm: tuple = (30.0, 70.0)
    box_prob: float = 0.5
    box_half_mm: tuple = (40.0, 160.0)
    box_gap_mm: tuple = (80.0, 700.0)
    min_clearance: float = 0.09


def subject_hands(seed: int) -> list[SubjectHand]:
    """The N_SUBJECTS subject hands of a seed (subject i from sample_seed(seed, 50_000 + i))."""
    rngs = [np.random.default_rng(sample_seed(seed, 50_000 + i)) for i in range(N_SUBJECTS)]
    return [build_subject(draw_subject(r)) for r in rngs]


def nyu36_from_points(points: np.ndarray) -> np.ndarray:
    """Posed label points (n, 24, 3) (`pose_points` order) -> NYU 36 joints (n, 36, 3): per finger tip,
    DIP, mid(DIP, PIP), PIP, mid(PIP, MCP), MCP (thumb: tip, IP, mid, MCP, mid, CMC); PALM_1..3 the
    anatomical palm points; PALM_4/5/6 midpoints of PALM_3 with the index MCP, pinky MCP and wrist."""
    out = np.zeros((points.shape[0], 36, 3))
    for base, (tip, j3, j2, j1) in NYU_FINGERS:
        t, c3, c2, c1 = (points[:, k] for k in (tip, j3, j2, j1))
        out[:, base:base + 6] = np.stack([t, c3, 0.5 * (c3 + c2), c2, 0.5 * (c2 + c1), c1], 1)
    out[:, 30:33] = points[:, 21:24]
    palm3 = points[:, 23]
    out[:, 33], out[:, 34], out[:, 35] = (0.5 * (palm3 + points[:, k]) for k in (1, 7, 0))
    return out


def _u(g: torch.Generator, n: int, rng: tuple) -> np.ndarray:
    return rng[0] + (rng[1] - rng[0]) * torch.rand(n, generator=g, dtype=torch.float64).numpy()


class MismatchScene:
    """Draws, labels and renders frames of the subject hands (CPU, float64 geometry)."""

    def __init__(self, hands: list[SubjectHand], style: MismatchStyle = MismatchStyle(),
                 sensor: StructuredLight = StructuredLight()):
        self.hands, self.style, self.sensor = hands, style, sensor
        self.K = camera.make_intrinsics(*NYU_K, dtype=torch.float64)
        b = base_hand()
        self.loop = b["loop"]
        self.arm_faces = forearm_faces(torch.as_tensor(self.loop), 779, ARM_RINGS)
        self.box_faces = box_mesh(np.zeros(3), np.ones(3), np.eye(3))[1]
        self.arm_verts = ARM_RINGS * len(self.loop) + 1
        box = [torch.as_tensor(self.box_faces) + 779 + self.arm_verts + 8 * i for i in range(N_BOXES)]
        self.faces = torch.cat([b["model"].faces, self.arm_faces] + box)
        self.view_axes = [hand_frame(h.joints)[:2] for h in hands]

    def _poses(self, hand: SubjectHand, n: int, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Gestures (n, 15, 3) and ids (n,), redrawing (up to 10 rounds) poses whose fingers collide."""
        ang, ids = sample_gestures(n, g)
        pts = hand.joints[[4, 5, 6]].tolist() + [hand.apex[1].tolist()]
        gap = self.style.min_clearance * float(np.linalg.norm(np.diff(np.array(pts), axis=0), axis=1).sum())
        for _ in range(10):
            bad = finger_clearance(torch.as_tensor(pose_points(hand, ang)[:, :21])).numpy() < gap
            if not bad.any():
                break
            ang[bad], ids[bad] = sample_gestures(int(bad.sum()), g)
        return ang, ids

    def draw(self, subjects: np.ndarray, g: torch.Generator) -> dict:
        """Every random quantity of frames of the given subject ids (n,) (numpy, leading dim n)."""
        st, n = self.style, len(subjects)
        ang, gest, rot = np.zeros((n, 15, 3)), np.zeros(n, np.int64), np.zeros((n, 3, 3))
        for s in np.unique(subjects):
            idx = np.nonzero(subjects == s)[0]
            ang[idx], gest[idx] = self._poses(self.hands[s], len(idx), g)
            rot[idx] = sample_views(len(idx), g, *self.view_axes[s])
        uvz = np.stack([_u(g, n, st.u_range), _u(g, n, st.v_range), _u(g, n, st.depth_range_mm)], 1)
        target = camera.backproject(torch.as_tensor(uvz)[:, None], self.K)[:, 0].numpy()
        x, y, z = target.T
        on = lambda p: (torch.rand(n, generator=g, dtype=torch.float64).numpy() < p).astype(np.float64)  # noqa: E731
        scene = {"wall": _u(g, n, st.wall_mm), "body_z": z + _u(g, n, st.body_gap_mm),
                 "body_x": x + _u(g, n, (-120.0, 120.0)), "body_halfw": _u(g, n, st.body_half_width_mm),
                 "body_top": y + _u(g, n, (-20.0, 180.0)), "body_tilt": _u(g, n, (-0.4, 0.4)),
                 "table_on": on(st.table_prob), "table_y": y + _u(g, n, st.table_below_mm),
                 "table_near": z - _u(g, n, (50.0, 150.0)), "table_far": z + _u(g, n, (400.0, 900.0))}
        spheres, radii, boxes = self._clutter(n, g, target)
        bend = st.arm_bend * torch.randn(n, 3, generator=g, dtype=torch.float64).numpy()
        sleeve = _u(g, n, st.sleeve_gain) * on(st.sleeve_prob)
        return {"subject": np.asarray(subjects), "angles": ang, "gesture": gest, "rot": rot, "target": target,
                "scene": scene, "spheres": spheres, "radii": radii, "boxes": boxes, "arm_bend": bend,
                "arm_length": _u(g, n, st.arm_length_mm), "sleeve_gain": sleeve, "sleeve_t": _u(g, n, st.sleeve_t),
                "center_noise": torch.randn(n, 3, generator=g, dtype=torch.float64).numpy()}

    def _clutter(self, n: int, g: torch.Generator, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """Spheres (n, S + 1, 3), radii (n, S + 1) (0 = absent; the last one near the hand) and boxes
        (centre, rot, half, on); every front surface lies behind PALM_3 (target (n, 3)) by its gap."""
        st, S = self.style, self.style.far_spheres

        def anywhere(m: int, front_mm: np.ndarray) -> np.ndarray:  # uniform over the image at a depth
            uvz = np.stack([_u(g, m, (0.0, 640.0)), _u(g, m, (0.0, 480.0)), front_mm], 1)
            return camera.backproject(torch.as_tensor(uvz), self.K).numpy()

        r_far = _u(g, n * S, st.far_radius_mm)
        far = anywhere(n * S, np.repeat(target[:, 2], S) + r_far + _u(g, n * S, st.far_gap_mm))
        phi = _u(g, n, (0.0, 2 * np.pi))
        r_near = _u(g, n, st.near_radius_mm)
        near = target + np.stack([np.cos(phi), np.sin(phi), np.zeros(n)], 1) * _u(g, n, st.near_offset_mm)[:, None]
        near[:, 2] += r_near + _u(g, n, st.near_gap_mm)
        spheres = np.concatenate([far.reshape(n, S, 3), near[:, None]], 1)
        radii = np.concatenate([r_far.reshape(n, S) * (_u(g, n * S, (0.0, 1.0)).reshape(n, S) < 0.6),
                                (r_near * (_u(g, n, (0.0, 1.0)) < st.near_sphere_prob))[:, None]], 1)
        half = _u(g, n * N_BOXES * 3, st.box_half_mm).reshape(n * N_BOXES, 3)
        front = np.repeat(target[:, 2], N_BOXES) + np.linalg.norm(half, axis=1) + _u(g, n * N_BOXES, st.box_gap_mm)
        quat = torch.randn(n * N_BOXES, 4, generator=g, dtype=torch.float64).numpy()
        boxes = {"centre": anywhere(n * N_BOXES, front).reshape(n, N_BOXES, 3),
                 "rot": Rotation.from_quat(quat).as_matrix().reshape(n, N_BOXES, 3, 3),
                 "half": half.reshape(n, N_BOXES, 3),
                 "on": _u(g, n * N_BOXES, (0.0, 1.0)).reshape(n, N_BOXES) < st.box_prob}
        return spheres, radii, boxes

    def _place(self, draws: dict, idx: np.ndarray, pts_rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rotation (b, 3, 3) and translation (b, 3) putting PALM_3 of the posed rest points at the target."""
        R = draws["rot"][idx]
        return R, draws["target"][idx] - np.einsum("nij,nj->ni", R, pts_rest[:, 23])

    def labels(self, draws: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(points (n, 24, 3), joints36 (n, 36, 3), refined centres (n, 3)), camera mm y-down."""
        n = len(draws["subject"])
        points = np.zeros((n, 24, 3))
        for s in np.unique(draws["subject"]):
            idx = np.nonzero(draws["subject"] == s)[0]
            rest = pose_points(self.hands[s], draws["angles"][idx])
            R, t = self._place(draws, idx, rest)
            points[idx] = np.einsum("nij,nvj->nvi", R, rest) + t[:, None]
        joints36 = nyu36_from_points(points)
        centers = refined_centers(torch.as_tensor(joints36), torch.as_tensor(draws["center_noise"]), STYLE).numpy()
        return points, joints36, centers

    def hand_meshes(self, draws: dict, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posed hands of frames idx: verts (b, 779, 3) and label points (b, 24, 3), camera mm."""
        verts, points = np.zeros((len(idx), 779, 3)), np.zeros((len(idx), 24, 3))
        for s in np.unique(draws["subject"][idx]):
            sel = np.nonzero(draws["subject"][idx] == s)[0]
            v, p = pose_subject(self.hands[s], draws["angles"][idx[sel]])
            R, t = self._place(draws, idx[sel], p)
            verts[sel] = np.einsum("nij,nvj->nvi", R, v) + t[:, None]
            points[sel] = np.einsum("nij,nvj->nvi", R, p) + t[:, None]
        return verts, points

    def scene_verts(self, draws: dict, idx: np.ndarray) -> np.ndarray:
        """Hand + forearm + boxes (b, 779 + arm + 8 * N_BOXES, 3) camera mm (unused boxes behind the camera)."""
        verts, points = self.hand_meshes(draws, idx)
        out = []
        for k, i in enumerate(idx):
            cap = verts[k, 778]
            d = cap - points[k, 4]
            d = d / np.linalg.norm(d) + draws["arm_bend"][i]
            d[2] = max(d[2], 0.15)
            arm = forearm_rings(cap, verts[k, self.loop], d / np.linalg.norm(d), draws["arm_length"][i],
                                draws["sleeve_t"][i], draws["sleeve_gain"][i])
            bx = draws["boxes"]
            boxes = [box_mesh(bx["centre"][i, j], bx["half"][i, j], bx["rot"][i, j])[0] if bx["on"][i, j]
                     else np.full((8, 3), -1000.0) for j in range(N_BOXES)]
            out.append(np.concatenate([verts[k], arm] + boxes))
        return np.stack(out)

    @torch.no_grad()
    def clean_depth(self, draws: dict, idx: np.ndarray) -> torch.Tensor:
        """Noise-free scene depth (b, H, W) mm (0 where nothing): meshes, planes and spheres."""
        H, W = FRAME_HW
        mesh, _ = rasterize_depth(torch.as_tensor(self.scene_verts(draws, idx), dtype=torch.float32), self.faces,
                                  self.K.float(), H, W)
        scene = {k: torch.as_tensor(v[idx]).float() for k, v in draws["scene"].items()}
        planes = plane_depth(self.K.float(), H, W, scene)
        out = []
        for k, i in enumerate(idx):
            on = draws["radii"][i] > 0
            sph = sphere_depth(self.K, H, W, torch.as_tensor(draws["spheres"][i][on]),
                               torch.as_tensor(draws["radii"][i][on]))
            d = torch.stack([mesh[k].double(), planes[k].double(), sph])
            out.append(torch.where(d > 0, d, torch.full_like(d, float("inf"))).amin(0))
        out = torch.stack(out)
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out))

    def frames(self, draws: dict, seed: int, batch: int = FRAME_BATCH):
        """Iterator of sensor frames (H, W) float32 mm; batch k's sensor noise is seeded by (seed, k)."""
        n = len(draws["subject"])
        fx, fy = float(self.K[0, 0]), float(self.K[1, 1])
        for k, i in enumerate(range(0, n, batch)):
            clean = self.clean_depth(draws, np.arange(i, min(i + batch, n)))
            g = torch.Generator().manual_seed(sample_seed(seed, k))
            for f in clean:
                yield sense(f, fx, fy, g, self.sensor).numpy()


def split_subjects(split: str, n: int) -> np.ndarray:
    """Subject id per frame (n,): train = subject 0 then 1 (halves, in order), test = subject 2."""
    if split == "test":
        return np.full(n, TEST_SUBJECT, dtype=np.int64)
    return (np.arange(n) >= (n + 1) // 2).astype(np.int64)


def generate_mismatch(root: str | Path, n_train: int, n_test: int, seed: int = MISMATCH_SEED,
                      style: MismatchStyle = MismatchStyle(), sensor: StructuredLight = StructuredLight()) -> dict:
    """Write <root>/{train,test} in the exact NYU format (+ mismatch_info.json); returns a summary."""
    t0 = time.perf_counter()
    hands = subject_hands(seed)
    scene = MismatchScene(hands, style, sensor)
    model = base_hand()["model"]
    rms = [float(np.sqrt(((np.subtract(*shape_space_fit(h.verts, model))) ** 2).sum(1).mean())) for h in hands]
    info = {"seed": seed, "subjects": [asdict(h.params) for h in hands], "shape_space_rms_mm": rms,
            "style": asdict(style), "sensor": asdict(sensor), "gesture_names": list(GESTURE_NAMES), "splits": {}}
    summary = {"root": str(root), "seed": seed, "frames": {}, "shape_space_rms_mm": rms}
    for k, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        if n <= 0:
            continue
        draws = scene.draw(split_subjects(split, n), torch.Generator().manual_seed(sample_seed(seed, 1000 + k)))
        _, joints36, centers = scene.labels(draws)
        summary["frames"][split] = write_nyu_split(root, split, scene.frames(draws, sample_seed(seed, 2000 + k)),
                                                   joints36, centers, K=scene.K.numpy())
        info["splits"][split] = {"subject": draws["subject"].tolist(), "gesture": draws["gesture"].tolist()}
    Path(root, "mismatch_info.json").write_text(json.dumps(info, indent=1))
    summary["seconds"] = time.perf_counter() - t0
    summary["frames_per_s"] = sum(summary["frames"].values()) / summary["seconds"]
    return summary


GENERATED_ENTRIES = ("train", "test", "mismatch_info.json")   # what generate_mismatch writes into its root


def ensure_mismatch(root: str | Path, n_train: int = 800, n_test: int = 300, seed: int = MISMATCH_SEED) -> Path:
    """The mismatch folder `root`, generated once when its centre files are missing.  A folder that holds
    anything else than (a partial) output of this generator is never written into: DatasetError."""
    root = Path(root)
    if not all((root / s / f"center_{s}_refined.txt").is_file() for s in ("train", "test")):
        foreign = sorted(p.name for p in root.iterdir() if p.name not in GENERATED_ENTRIES) if root.is_dir() else []
        if foreign:
            raise DatasetError(f"{root} is not an NYU-format set (train/center_train_refined.txt and "
                               f"test/center_test_refined.txt missing) and holds other files ({', '.join(foreign[:5])}): "
                               f"not generating the mismatch set into it; point data_root at an NYU-format folder "
                               f"or at an empty / new one")
        print(f"mismatch: generating {n_train} train + {n_test} test frames into {root} (once)", flush=True)
        s = generate_mismatch(root, n_train, n_test, seed)
        print(f"mismatch: done in {s['seconds']:.0f} s ({s['frames_per_s']:.1f} frames/s)", flush=True)
    return root


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="generate the model-mismatch NYU-format set")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--seed", type=int, default=MISMATCH_SEED)
    a = ap.parse_args(argv)
    s = generate_mismatch(a.out, a.train, a.test, a.seed)
    print(json.dumps(s, indent=1))
    return s


if __name__ == "__main__":
    main()
