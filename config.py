"""Every setting of the project: one frozen `Config` with defaults and one-line descriptions.

Resolution order: defaults -> optional YAML file (`config=path.yaml`) -> command-line `key=value`
overrides -> dataset preset for every value left at None.  Values parse as YAML scalars/lists
(`cube_mm=[250,250,250]`, `lr=1e-3`, `resume=true`).  Choices match case-insensitively.

Units are part of the names: `*_mm` millimetres, `*_nu` normalized units (1 nu = cube/2 mm),
`*_deg` degrees.  Thresholds given in mm are converted per sample with that sample's cube.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

PHASES = ("train", "test", "score", "export")
TRAIN_STAGES = ("pretrain", "transfer", "finetune", "supervised")
DATASETS = ("simreal", "nyu", "icvl", "msra")
NETS = ("tiny", "resnet18")


Check = Callable[[Any], "str | None"]   # value -> None when valid, else what is wrong


def greater(bound: float) -> Check:
    return lambda v: None if v > bound else f"must be > {bound:g}"


def at_least(bound: float) -> Check:
    return lambda v: None if v >= bound else f"must be >= {bound:g}"


def between(lo: float, hi: float, hi_open: bool = False) -> Check:
    def check(v):
        return None if lo <= v and (v < hi if hi_open else v <= hi) else f"must lie in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return check


def numbers(n: int, each: Check | None = None, ascending: bool = False) -> Check:
    """A list of exactly n numbers, each passing `each`, optionally in non-decreasing order."""
    def check(v):
        if len(v) != n:
            return f"expected a list of {n} numbers, got {len(v)}"
        bad = next((m for m in map(each, v) if m), None) if each else None
        if bad:
            return f"every entry {bad}"
        if ascending and any(a > b for a, b in zip(v, v[1:])):
            return "must be [min, max] with min <= max"
        return None
    return check


GT0, GE0, FRACTION = greater(0), at_least(0), between(0.0, 1.0, hi_open=True)
positive = GT0


def opt(default: Any, help: str, choices: tuple | None = None, check: Check | None = None) -> Any:
    """A config field with its description, allowed values and validity rule (checked after presets)."""
    meta = {"help": help, "choices": choices, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DatasetPreset:
    """Camera, image size, cube, joint set and schedule of one dataset (datasets.md 1.1-1.2)."""
    fx: float
    fy: float
    cx: float
    cy: float
    image_width: int
    image_height: int
    cube_mm: tuple[float, float, float]
    joint_set: str
    epochs: int
    lr_step_epochs: int
    synth_depth_range_mm: tuple[float, float]
    mirror: bool = False


DATASET_PRESETS = {
    "nyu": DatasetPreset(588.03, 587.07, 320.0, 240.0, 640, 480, (250.0,) * 3, "nyu", 15, 10, (500.0, 1200.0)),
    "simreal": DatasetPreset(588.03, 587.07, 320.0, 240.0, 640, 480, (250.0,) * 3, "nyu", 15, 10, (500.0, 1200.0)),
    "icvl": DatasetPreset(240.99, 240.96, 160.0, 120.0, 320, 240, (200.0,) * 3, "icvl", 8, 4, (150.0, 600.0), mirror=True),
    "msra": DatasetPreset(241.42, 241.42, 160.0, 120.0, 320, 240, (200.0,) * 3, "msra", 10, 5, (150.0, 600.0)),
}
MSRA_SUBJECT_CUBES_MM = (200.0, 200.0, 200.0, 180.0, 180.0, 180.0, 170.0, 160.0, 150.0)


@dataclass(frozen=True)
class Config:
    # ---- run control -------------------------------------------------------------------------
    phase: str = opt("train", "what to do: train a stage, test a model, score a prediction file, export skeletons", PHASES)
    train_stage: str = opt("pretrain", "training stage when phase=train", TRAIN_STAGES)
    config: str = opt("", "optional YAML file of settings, applied before command-line overrides")
    dataset: str = opt("simreal", "target dataset; simreal = generated real-like set in NYU format", DATASETS)
    data_root: str = opt("", "dataset root folder; empty = data/<dataset>")
    out_dir: str = opt("", "run folder for checkpoints, logs and results; empty = checkpoints/<dataset>_<stage or phase>")
    device: str = opt("auto", "compute device: auto (cuda if available), cpu or cuda", ("auto", "cpu", "cuda"))
    seed: int = opt(0, "random seed of the run (model init, sampling, augmentation)", check=GE0)
    num_workers: int = opt(2, "DataLoader worker processes", check=GE0)
    batch_size: int = opt(32, "samples per batch (per process under torchrun); finetuning uses this many real + synthetic", check=GT0)
    resume: bool = opt(False, "continue the run in out_dir from its latest checkpoint")
    overwrite: bool = opt(False, "train: start a new run in an out_dir that holds checkpoints, deleting them first")
    checkpoint_interval_min: float = opt(10.0, "write latest.pt at least every this many minutes (0 = only at validations)", check=GE0)
    snapshot_interval: int = opt(0, "also keep the weights every N steps as snapshots/step<N>.pt, e.g. for a learning curve (0 = none)", check=GE0)
    hand_model_check: str = opt("error", "a checkpoint trained with another hand model: error, or warn and go on", ("error", "warn"))
    load_model: str = opt("", "checkpoint to initialise from (train) or to evaluate/export (test, export)")
    transfer_net: str = opt("", "frozen sim-to-real translator checkpoint applied to synthetic crops; empty = none")
    amp: str = opt("none", "autocast for the network on CUDA", ("none", "bf16", "fp16"))
    compile: bool = opt(False, "wrap the network in torch.compile")
    log_interval: int = opt(20, "steps between scalar logs", check=GT0)
    image_log_interval: int = opt(500, "steps between TensorBoard image logs (0 = never)", check=GE0)
    val_interval: int = opt(0, "steps between validations; 0 = once per epoch", check=GE0)
    progress: bool = opt(True, "show tqdm progress bars")

    # ---- schedule ----------------------------------------------------------------------------
    epochs: int | None = opt(None, "training epochs; None = dataset preset", check=GT0)
    lr_step_epochs: int | None = opt(None, "StepLR period in epochs; None = dataset preset", check=GT0)
    max_steps: int = opt(0, "train exactly this many optimizer steps, however many epochs that is (0 = the epochs)", check=GE0)
    synth_epoch_size: int = opt(100_000, "synthetic samples that make one pretraining epoch", check=GT0)
    lr: float = opt(1e-3, "AdamW learning rate", check=GT0)
    weight_decay: float = opt(0.01, "AdamW weight decay", check=GE0)
    lr_gamma: float = opt(0.1, "StepLR decay factor", check=GT0)
    val_fraction: float = opt(0.05, "fraction of the training frames held out for validation", check=FRACTION)
    val_size: int = opt(256, "held-out synthetic samples used to validate pretraining", check=GE0)

    # ---- network -----------------------------------------------------------------------------
    net: str = opt("resnet18", "backbone: resnet18 (the paper's) or tiny (same heads, fewer channels)", NETS)
    stage_num: int = opt(2, "1 = single stage, 2 = with the rendering-fed refinement stage", (1, 2))
    map_size: int = opt(64, "side of the dense offset/heat maps", check=GT0)
    kernel_radius_nu: float = opt(0.8, "dense-map kernel radius kappa (nu)", check=GT0)
    softmax_temperature: float = opt(30.0, "temperature of the heat-map softmax when decoding joints", check=GT0)
    fg_threshold_nu: float = opt(0.99, "normalized depth below which a pixel is hand/foreground", check=between(-1.0, 1.0))

    # ---- hand model --------------------------------------------------------------------------
    mano_path: str = opt("MANO/MANO_RIGHT.pkl", "official MANO right-hand model (.pkl or converted .npz)")
    hand_model: str = opt("auto", "auto = MANO if the file exists else the generated stand-in hand", ("auto", "mano", "standin"))

    # ---- dataset -----------------------------------------------------------------------------
    fx: float | None = opt(None, "focal length x (px); None = dataset preset", check=GT0)
    fy: float | None = opt(None, "focal length y (px, positive, y down); None = dataset preset", check=GT0)
    cx: float | None = opt(None, "principal point x (px); None = dataset preset")
    cy: float | None = opt(None, "principal point y (px); None = dataset preset")
    image_width: int | None = opt(None, "sensor image width (px); None = dataset preset", check=GT0)
    image_height: int | None = opt(None, "sensor image height (px); None = dataset preset", check=GT0)
    cube_mm: list | None = opt(None, "crop cube edge lengths [x, y, z] in mm; None = dataset preset", check=numbers(3, positive))
    mirror: bool | None = opt(None, "mirror images about cx to a right hand (ICVL); None = dataset preset")
    nyu_view: int = opt(1, "NYU Kinect view (1 = frontal, the benchmark view)", (1, 2, 3))
    nyu_subject2_first_index: int = opt(2440, "first 0-based NYU test frame of the unseen subject 2", check=GE0)
    nyu_subject2_cube_scale: float = opt(5.0 / 6.0, "cube scale for NYU test subject 2 frames", check=GT0)
    msra_test_subject: int = opt(0, "MSRA leave-one-subject-out test subject P0..P8", tuple(range(9)))
    center_file_train: str = opt("", "refined-centre file for training frames; empty = the dataset's default location")
    center_file_test: str = opt("", "refined-centre file for test frames; empty = the dataset's default location")
    center_format: str = opt("auto", "refined-centre file values: auto (xyz or uvd told apart by value ranges), xyz or uvd", ("auto", "xyz", "uvd"))
    max_frames: int = opt(0, "use only the first N frames of each split (0 = all)", check=GE0)
    aug_center_shift_mm: float = opt(10.0, "real-crop augmentation: centre shift range +- per axis (mm)", check=GE0)
    aug_cube_scale: float = opt(0.2, "real-crop augmentation: cube scale range +-", check=FRACTION)
    aug_rotation_deg: float = opt(180.0, "real-crop augmentation: in-plane rotation range +- (degrees)", check=GE0)
    augment: bool = opt(True, "augment real training crops (rot / com / sc / none)")

    # ---- synthetic hands ---------------------------------------------------------------------
    synth_depth_range_mm: list | None = opt(None, "synthetic hand depth range [min, max] (mm); None = dataset preset", check=numbers(2, positive, ascending=True))
    synth_center_jitter_mm: float = opt(20.0, "synthetic crop-centre jitter +- per axis (mm)", check=GE0)
    synth_cube_scale_range: list = opt([0.8, 1.2], "synthetic cube scale range", check=numbers(2, positive, ascending=True))
    synth_shape_noise: float = opt(3.0, "std of the Gaussian noise added to shape coefficients", check=GE0)
    synth_off_axis: bool = opt(False, "place synthetic hands anywhere in the image (not only on the optical axis)")
    synth_rotation: str = opt("auto", "view rotation: auto (none in pretraining, original in finetuning), none, original (axis-angle U[0,2pi)^3), so3 (uniform)", ("auto", "none", "original", "so3"))
    synth_occlusion: bool = opt(True, "carve random spherical occluders around joints")
    synth_occluders_min: int = opt(3, "fewest occluders per sample", check=GE0)
    synth_occluders_max: int = opt(9, "most occluders per sample", check=GE0)
    synth_occluder_jitter_nu: float = opt(0.15, "occluder centre jitter +- around its joint (nu)", check=GE0)
    synth_occluder_radius_nu: float = opt(0.3, "largest occluder radius (nu)", check=GE0)
    synth_occlusion_per_sample: bool = opt(True, "draw occluded joints per sample (False: per batch, as the original)")
    synth_pose_file: str = opt("", "optional .npy/.txt of 62-value source-space pose rows; empty = pose sampler")
    simreal_train_frames: int = opt(2000, "frames of the generated simreal train split (made once when data_root lacks it)", check=GT0)
    simreal_test_frames: int = opt(400, "frames of the generated simreal test split", check=GT0)

    # ---- losses (weights; spec 10.2-10.4) ----------------------------------------------------
    huber_delta_nu: float = opt(0.01, "Huber transition (nu); 100*H is L1 above it", check=GT0)
    w_maps: float = opt(1.0, "weight: dense maps", check=GE0)
    w_pwe_joints: float = opt(100.0, "weight: decoded pixel-branch joints", check=GE0)
    w_mpe_joints: float = opt(100.0, "weight: model-branch joints", check=GE0)
    w_mpe_verts: float = opt(100.0, "weight: model-branch vertices", check=GE0)
    w_shape_prior: float = opt(1000.0, "weight: shape prior mean(beta^2) in pretraining", check=GE0)
    w_scale: float = opt(0.1, "weight: positive-scale penalty in pretraining", check=GE0)
    w_collision: float = opt(1.0, "weight: sphere collision prior", check=GE0)
    w_render: float = opt(0.1, "weight: rendered-vs-observed depth residual", check=GE0)
    w_data_mesh: float = opt(1.0, "weight: point-to-mesh distance", check=GE0)
    data_mesh_trim_fraction: float = opt(0.1, "point-to-mesh term: leave out this fraction of each crop's farthest points (0 = the original mean)", check=FRACTION)
    w_part_mesh: float = opt(1.0, "weight: part-aware point-to-mesh distance", check=GE0)
    w_pixel_to_model: float = opt(100.0, "weight: pixel branch teaches model branch", check=GE0)
    w_model_to_pixel: float = opt(100.0, "weight: model branch teaches pixel branch on reliable joints", check=GE0)
    w_distill: float = opt(1.0, "multiplier of the stage-2 -> stage-1 distillation terms", check=GE0)
    finetune_teacher: str = opt("self", "fine-tuning: who teaches the inter-branch / distillation terms and gates model->pixel: self (the trained network's own last stage, the original) or average (the weight average of finetune_average_decay run without gradient in eval mode, a mean teacher; measured worse than self on 2 of 3 seeds of the mismatch experiment, ~15 % more time per step on tiny)", ("self", "average"))
    finetune_average_decay: float = opt(0.99, "fine-tuning: the saved / evaluated / exported weights are a moving average of the trained ones, decay per step (0 = the last weights, the original)", check=FRACTION)

    # ---- self-supervised fitting (mm, converted per sample with the cube) --------------------
    handbox_xy_margin_mm: float = opt(25.0, "hand box margin around the joints in x and y (mm)", check=GE0)
    handbox_far_margin_mm: float = opt(20.0, "hand box margin beyond the farthest joint (mm)", check=GE0)
    handbox_near_margin_mm: float = opt(40.0, "hand box margin toward the camera from the nearest joint (mm)", check=GE0)
    num_points: int = opt(2048, "points sampled from a crop for point-to-mesh losses", check=GT0)
    reliability_depth_mm: float = opt(5.0, "model->pixel: mean depth residual below this (mm; 0.04 nu at cube 250)", check=GE0)
    reliability_fit_rms_mm: float = opt(3.953, "model->pixel: RMS point-to-mesh residual below this (mm; 1e-3 nu^2 at cube 250)", check=GE0)
    reliability_mode: str = opt("relative", "model->pixel gate: relative (the batch's best fits, under a ceiling; measured better under model mismatch) or absolute (the original thresholds)", ("absolute", "relative"))
    reliability_quantile: float = opt(0.5, "relative gate: a sample / bone passes at or below this quantile of the batch's residuals", check=between(0.0, 1.0))
    reliability_ceiling: float = opt(3.0, "relative gate: residuals must also stay under this multiple of the absolute thresholds", check=at_least(1.0))
    reliability_min_bone_points: int = opt(0, "bones with fewer labelled points are unreliable (0 = original: empty bones count as reliable)", check=GE0)
    palm_radius_offset_mm: float = opt(6.25, "palm-line sphere radius = wrist radius minus this (mm)")
    palm_radius_min_mm: float = opt(1.25, "palm-line sphere radius lower clamp (mm)", check=GE0)
    palm_radius_max_mm: float = opt(50.0, "palm-line sphere radius upper clamp (mm)", check=GT0)
    collision_gate_mm: float = opt(12.5, "a sample whose summed sphere penetration reaches this contributes 0 (mm)", check=GT0)
    collision_mode: str = opt("gated", "gated (original) or clipped (per-sample sum clipped at the gate)", ("gated", "clipped"))

    # ---- sim-to-real translator (Consis-CycleGAN, train_stage=transfer; spec 9.2) ----------------
    gan_arch: str = opt("original", "translator: 'original' = the spec's Consis-CycleGAN (ResNet G_A/G_B, PatchGAN, LSGAN, cycle); 'sensor' = one-sided sensor model (bounded hand offset + hole and paint heads, multi-scale patch discriminator, hinge loss; models/sensor_translator.py)", ("original", "sensor"))
    gan_offset_max_nu: float = opt(0.015, "sensor translator: bound of the depth offset on hand pixels (nu)", check=GT0)
    gan_hole_budget: float = opt(0.012, "sensor translator: expected fraction of hand pixels it may make missing before w_gan_hole acts", check=FRACTION)
    w_gan_hole: float = opt(10.0, "sensor translator weight: hinge on the hole fraction above gan_hole_budget", check=GE0)
    gan_lr_d: float = opt(0.0, "sensor translator: discriminator learning rate (0 = gan_lr; > gan_lr = two-time-scale update)", check=GE0)
    gan_d_scales: int = opt(2, "sensor translator: patch discriminators at full, 1/2, ... resolution", check=GT0)
    gan_paint_margin_px: int = opt(6, "sensor translator: no paint within this many pixels of the clean hand (keeps its silhouette)", check=GE0)
    gan_d_norm: str = opt("instance", "sensor translator: discriminator normalisation", ("instance", "spectral"))
    gan_diff_augment: bool = opt(True, "sensor translator: DiffAugment (translation + cut-out) of real and generated crops before the discriminator")
    gan_ngf: int = opt(64, "translator generator base width (64 = original; smaller trains on CPU)", check=GT0)
    gan_blocks: int = opt(9, "translator generator residual blocks (9 = original)", check=GE0)
    gan_ndf: int = opt(64, "PatchGAN discriminator base width", check=GT0)
    gan_residual: bool = opt(False, "design option (not the original): generator output = clamp(x + net(x), -1, 1) (straight-through gradient) without tanh, so a reduced CPU-trained generator starts at the identity")
    gan_lr: float = opt(2e-4, "translator Adam learning rate", check=GT0)
    gan_beta1: float = opt(0.5, "translator Adam beta1", check=FRACTION)
    gan_beta2: float = opt(0.999, "translator Adam beta2", check=FRACTION)
    gan_batch_size: int = opt(4, "translator batch size (synthetic and real crops each)", check=GT0)
    gan_epochs_constant: int = opt(20, "translator epochs over the real crops at constant lr", check=GE0)
    gan_epochs_decay: int = opt(20, "translator epochs of linear lr decay to 0 after the constant ones", check=GE0)
    gan_pool_size: int = opt(50, "history pool of generated images per discriminator (0 = off)", check=GE0)
    w_gan_adv: float = opt(1.0, "translator weight: least-squares adversarial term of each generator", check=GE0)
    w_gan_cyc: float = opt(10.0, "translator weight: cycle consistency (both directions)", check=GE0)
    w_gan_idt: float = opt(5.0, "translator weight: identity (both generators)", check=GE0)
    w_gan_fg: float = opt(10.0, "translator weight: foreground-depth consistency on the synthetic hand mask", check=GE0)
    w_gan_fg_sym: float = opt(0.0, "translator weight: symmetric foreground consistency for G_B (0 = off)", check=GE0)
    w_gan_pose: float = opt(0.0, "translator weight: pose consistency through gan_pose_net (0 = off; spec uses 1)", check=GE0)
    gan_fg_tolerance_mm: float = opt(0.0, "translator: hand-consistency tolerance; |G_A(x)-x| on the hand is free up to this (0 = the original plain L1)", check=GE0)
    gan_mask_erode_px: int = opt(0, "erode the synthetic hand mask by this many pixels before L_fg (spec option: 1)", check=GE0)
    gan_snap_background: bool = opt(True, "set translated values >= fg_threshold_nu to +1 when the translator is applied")
    gan_pose_net: str = opt("", "frozen pose-network checkpoint (pretrained untranslated) for the pose-consistency term")
    gan_synth_rotation: str = opt("original", "view rotation of the translator's synthetic crops (covers pretraining and finetuning views)", ("none", "original", "so3"))

    # ---- outputs -----------------------------------------------------------------------------
    pred_file: str = opt("", "phase=score: prediction file (u v d per joint per line)")
    gt_file: str = opt("", "phase=score: ground-truth file in the same format")
    save_meshes: bool = opt(False, "test/export: write OBJ meshes of the predicted hands")
    save_overlays: int = opt(16, "test/export: number of overlay images to write", check=GE0)

    # ---- export / inference on depth streams (phase=export) ----------------------------------
    export_source: str = opt("folder", "input layout: folder of depth frames, dhg (DHG-14/28) or shrec (SHREC'17)", ("folder", "dhg", "shrec"))
    export_input: str = opt("", "folder of depth frames, or the root of the DHG/SHREC gesture_*/ tree")
    export_depth_format: str = opt("auto", "depth frames: auto, png16 (mm), nyu_rgb (256*G+B) or npy", ("auto", "png16", "nyu_rgb", "npy"))
    export_mirror: bool | None = opt(None, "mirror frames about cx to a right hand; None = yes for dhg/shrec, no for folders")
    export_every: int = opt(1, "process every N-th frame of each sequence", check=GT0)
    export_max_frames: int = opt(0, "stop each sequence after N frames (0 = all)", check=GE0)
    export_branch: str = opt("pwe", "which branch of the last stage gives the exported joints", ("pwe", "mpe"))
    export_write_meshes: bool = opt(False, "also write the predicted MANO parameters and meshes per frame (NPZ)")
    localize_band_mm: float = opt(150.0, "hand detection: depth band behind the nearest valid point that may belong to the hand (mm)", check=GT0)
    localize_min_pixels: int = opt(150, "hand detection: fewest pixels of a hand region in a frame", check=GT0)
    localize_max_extent_mm: float = opt(350.0, "hand detection: the front 50 mm of a hand region is no wider than this, and its near part covers at most half a square of this side (mm)", check=GT0)
    localize_min_depth_mm: float = opt(150.0, "hand detection: ignore depths nearer than this (sensor noise) (mm)", check=GE0)
    localize_max_depth_mm: float = opt(1500.0, "hand detection: ignore depths farther than this (mm)", check=GT0)
    localize_iterations: int = opt(5, "centre refinement: most iterations of the spherical mean shift", check=GE0)
    track: bool = opt(True, "in sequences, start from the previous frame's prediction; detect again when lost")

    # ------------------------------------------------------------------------------------------
    def preset(self) -> DatasetPreset:
        return DATASET_PRESETS[self.dataset]

    def resolved(self) -> "Config":
        """Fill every None with the dataset preset and derive out_dir."""
        p, upd = self.preset(), {}
        for name in ("fx", "fy", "cx", "cy", "image_width", "image_height", "epochs", "lr_step_epochs", "mirror"):
            if getattr(self, name) is None:
                upd[name] = getattr(p, name)
        if self.cube_mm is None:
            cube = list(p.cube_mm)
            if self.dataset == "msra":
                cube = [MSRA_SUBJECT_CUBES_MM[self.msra_test_subject]] * 3
            upd["cube_mm"] = cube
        if self.synth_depth_range_mm is None:
            upd["synth_depth_range_mm"] = list(p.synth_depth_range_mm)
        if not self.data_root:
            upd["data_root"] = f"data/{self.dataset}"
        if not self.out_dir:
            what = self.train_stage if self.phase == "train" else self.phase
            upd["out_dir"] = f"checkpoints/{self.dataset}_{what}"
        return dataclasses.replace(self, **upd)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


class ConfigError(ValueError):
    """A bad key or value; the message is one line naming key, value and valid choices."""


# Pairs of settings that must agree: (name, name, rule on (a, b), what the rule says).
CROSS_CHECKS = (
    ("synth_occluders_min", "synth_occluders_max", lambda a, b: a <= b, "synth_occluders_min <= synth_occluders_max"),
    ("palm_radius_min_mm", "palm_radius_max_mm", lambda a, b: a <= b, "palm_radius_min_mm <= palm_radius_max_mm"),
    ("localize_min_depth_mm", "localize_max_depth_mm", lambda a, b: a < b, "localize_min_depth_mm < localize_max_depth_mm"),
    ("gan_epochs_constant", "gan_epochs_decay", lambda a, b: a + b > 0, "gan_epochs_constant + gan_epochs_decay > 0"),
    ("resume", "overwrite", lambda a, b: not (a and b), "resume=true and overwrite=true exclude each other"),
)

# Settings that a resumed run cannot change: they define the network, its hand model or which data
# step t reads.  Every other setting may change on resume; the change is applied and logged.
RESUME_FIXED = ("phase", "train_stage", "dataset", "net", "stage_num", "map_size", "hand_model", "mano_path",
                "seed", "batch_size", "synth_epoch_size", "val_fraction", "max_frames", "nyu_view",
                "msra_test_subject", "gan_ngf", "gan_blocks", "gan_ndf", "gan_residual", "gan_batch_size", "gan_arch")


def validate(cfg: Config) -> Config:
    """Check every value against its rule (finite numbers, ranges, list lengths) and the cross
    checks; raises ConfigError naming the key, the value and the rule."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if v is None or isinstance(v, (bool, str)):
            continue
        values = v if isinstance(v, list) else [v]
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            raise ConfigError(f"invalid value for {f.name}: {v!r}; must be finite")
        check = f.metadata.get("check")
        problem = check(v) if check is not None else None
        if problem:
            raise ConfigError(f"invalid value for {f.name}: {v!r}; {problem}")
    for a, b, rule, text in CROSS_CHECKS:
        if not rule(getattr(cfg, a), getattr(cfg, b)):
            raise ConfigError(f"invalid values {a}={getattr(cfg, a)!r}, {b}={getattr(cfg, b)!r}; need {text}")
    return cfg


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    f = config_fields()[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    choices = f.metadata.get("choices")
    if isinstance(value, str) and isinstance(default, str) or (choices and isinstance(value, str)):
        value = value.strip()
        if choices and all(isinstance(c, str) for c in choices):
            low = value.lower()
            if low not in choices:
                hint = difflib.get_close_matches(low, choices, n=1)
                tip = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ConfigError(f"invalid value for {name}: '{value}'; valid choices: {', '.join(choices)}{tip}")
            return low
    if value is None:
        if f.type.endswith("None"):
            return None
        raise ConfigError(f"invalid value for {name}: None; expected {f.type}")
    expected = type(default) if default is not None else {"int": int, "float": float, "list": list, "bool": bool}[
        f.type.split("|")[0].strip()]
    if expected in (int, float) and isinstance(value, str):
        try:  # YAML reads '1e-4' as a string
            value = float(value) if expected is float else int(value)
        except ValueError:
            raise ConfigError(f"invalid value for {name}: '{value}'; expected {expected.__name__}") from None
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"invalid value for {name}: '{value}'; expected true or false")
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if expected is list and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3 if name == "cube_mm" else [value]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"invalid value for {name}: '{value}'; expected {expected.__name__}")
    if expected is list and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"invalid value for {name}: '{value}'; expected a list of numbers")
    if choices and value not in choices:
        raise ConfigError(f"invalid value for {name}: '{value}'; valid choices: {', '.join(map(str, choices))}")
    return value


def _check_key(key: str) -> str:
    names = config_fields()
    k = key.strip().lower().replace("-", "_")
    if k not in names:
        hint = difflib.get_close_matches(k, list(names), n=1)
        tip = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(f"unknown config key '{key}'{tip}; see --help for the list")
    return k


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`key=value` strings -> {key: parsed value} (YAML scalar/list syntax)."""
    out = {}
    for a in args:
        if "=" not in a:
            raise ConfigError(f"argument '{a}' is not key=value; see --help")
        key, raw = a.split("=", 1)
        k = _check_key(key.lstrip("-"))
        try:
            out[k] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[k] = raw
        if isinstance(out[k], (int, float, list, bool)) or out[k] is None:
            f = config_fields()[k]
            if f.type == "str":  # e.g. run names made of digits stay strings
                out[k] = raw
    return out


def load_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value")
    return {_check_key(k): v for k, v in data.items()}


def make_config(args: list[str] | None = None, **overrides: Any) -> Config:
    """Defaults -> YAML (config=...) -> `key=value` args -> keyword overrides -> presets."""
    values = parse_overrides(list(args or []))
    values.update({_check_key(k): v for k, v in overrides.items()})
    merged = load_yaml(values["config"]) if values.get("config") else {}
    merged.update(values)
    return validate(Config(**{k: _coerce(k, v) for k, v in merged.items()}).resolved())


# --help sections: (name, first setting of the section); each runs to the next section's first setting.
HELP_SECTIONS = (("run", "phase"), ("schedule", "epochs"), ("network", "net"), ("hand", "mano_path"),
                 ("dataset", "fx"), ("synthetic", "synth_depth_range_mm"), ("losses", "huber_delta_nu"),
                 ("fitting", "handbox_xy_margin_mm"), ("translator", "gan_ngf"), ("outputs", "pred_file"),
                 ("export", "export_source"))


def help_sections() -> dict[str, list[dataclasses.Field]]:
    """{section name: its fields} in declaration order."""
    starts = {first: name for name, first in HELP_SECTIONS}
    out: dict[str, list[dataclasses.Field]] = {}
    current = HELP_SECTIONS[0][0]
    for f in dataclasses.fields(Config):
        current = starts.get(f.name, current)
        out.setdefault(current, []).append(f)
    return out


def help_text(section: str | None = None) -> str:
    """Every setting with its default and description, grouped by section (or one section)."""
    sections = help_sections()
    if section is not None and section not in sections:
        raise ConfigError(f"unknown help section '{section}'; sections: {', '.join(sections)}")
    lines = ["usage: python train_render.py [key=value ...]   (--help SECTION shows one section: "
             + ", ".join(sections) + ")"]
    for name, fields in sections.items():
        if section is not None and name != section:
            continue
        lines += ["", f"[{name}] (default: description)"]
        for f in fields:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = f.metadata.get("choices")
            extra = f" [{'|'.join(map(str, choices))}]" if choices else ""
            lines.append(f"  {f.name}={default!r}{extra}\n      {f.metadata['help']}")
    return "\n".join(lines)


def config_from_cli(argv: list[str]) -> Config:
    """Parse argv; print help and exit 0 on --help, one error line and exit 2 on bad input."""
    flags = [i for i, a in enumerate(argv) if a in ("-h", "--help", "help")]
    if flags:
        nxt = argv[flags[0] + 1] if flags[0] + 1 < len(argv) and "=" not in argv[flags[0] + 1] else None
        try:
            print(help_text(nxt))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:       # `--help | head`
            pass
        sys.exit(0)
    try:
        return make_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
