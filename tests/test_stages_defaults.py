"""Every training stage as its users run it: image logs, validation, an epoch boundary and checkpoints
on (tiny network, tiny generated NYU-format data), then phase=test and phase=export on the result.

Each stage runs through `train_render.run`, the entry point's dispatch, so a stage that crashes at its
first image log, validation or checkpoint fails here.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from config import make_config
from train_render import run

COMMON = dict(net="tiny", hand_model="standin", device="cpu", num_workers=0, progress=False, batch_size=4,
              log_interval=1, image_log_interval=2, seed=0, simreal_train_frames=24, simreal_test_frames=6,
              num_points=64, val_size=4)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A generated simreal set (NYU format): 24 training frames -> 22 train + 2 val, 6 test frames."""
    from datasets.simreal import ensure_simreal
    root = tmp_path_factory.mktemp("stages") / "simreal"
    ensure_simreal(make_config([], data_root=str(root), **COMMON))
    return root


def _cfg(data_root, out_dir, **kw):
    return make_config([], dataset="simreal", data_root=str(data_root), out_dir=str(out_dir), **{**COMMON, **kw})


def image_tags(run_dir) -> list[str]:
    """Image tags written to the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    acc.Reload()
    return acc.Tags()["images"]


def _check_outputs(out_dir, steps: int, image_tag: str) -> dict:
    ck = torch.load(out_dir / "latest.pt", weights_only=False)
    assert ck["step"] == steps and ck["hand_model"]["kind"] == "standin"
    assert ck["config"]["hand_model"] == "standin"            # what 'auto'/'standin' resolved to
    assert (out_dir / "best.pt").is_file() and (out_dir / "config.yaml").is_file()
    assert image_tag in image_tags(out_dir)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    return ck


@pytest.fixture(scope="module")
def pretrained(data_root, tmp_path_factory):
    """Two-stage pretraining over an epoch boundary (synth_epoch_size 8 = 2 steps per epoch)."""
    out = tmp_path_factory.mktemp("pre") / "pretrain"
    res = run(_cfg(data_root, out, train_stage="pretrain", stage_num=2, synth_epoch_size=8, max_steps=4))
    assert res["checkpoints"] == ["best.pt", "latest.pt"]
    return out, res


def test_pretrain_then_test_and_export(pretrained, data_root, tmp_path):
    out, res = pretrained
    ck = _check_outputs(out, 4, "pretrain/input_joints_render")
    assert ck["epoch"] == 2 and set(res["val"]) == {"s1_pwe_mm", "s1_mpe_mm", "s2_pwe_mm", "s2_mpe_mm"}
    metrics = run(_cfg(data_root, tmp_path / "test", phase="test", load_model=str(out / "latest.pt")))
    assert metrics["frames"] == 6
    frames = data_root / "test"
    depth = tmp_path / "frames"
    depth.mkdir()
    for p in sorted(frames.glob("depth_1_*.png"))[:3]:
        shutil.copy(p, depth / p.name)
    totals = run(_cfg(data_root, tmp_path / "export", phase="export", load_model=str(out / "best.pt"),
                      export_input=str(depth), export_depth_format="nyu_rgb"))
    assert totals["frames"] == 3


@pytest.mark.parametrize("stage_num", [1, 2])
def test_finetune_with_image_logs_validation_and_epochs(pretrained, data_root, tmp_path, stage_num):
    """22 training frames / batch 4 = 5 steps per epoch; 7 steps cross the boundary and log images at
    steps 2, 4, 6 (fine-tuning crashed at its first image log before)."""
    out = tmp_path / f"ft{stage_num}"
    init = pretrained[0] / "latest.pt"     # two-stage weights; a one-stage network takes its stage 1
    res = run(_cfg(data_root, out, train_stage="finetune", stage_num=stage_num, max_steps=7, load_model=str(init)))
    ck = _check_outputs(out, 7, "finetune/input_joints_render")
    assert ck["epoch"] == 1 and "selfsup_loss" in res["val"]
    metrics = run(_cfg(data_root, tmp_path / "test", phase="test", load_model=str(out / "best.pt")))
    assert metrics["frames"] == 6


def test_supervised_stage_and_exact_resume(data_root, tmp_path):
    """Supervised over an epoch boundary with augmentation on; killed after 3 steps and resumed to 7,
    it ends with exactly the losses of the uninterrupted 7-step run."""
    full = run(_cfg(data_root, tmp_path / "a", train_stage="supervised", stage_num=1, max_steps=7))
    _check_outputs(tmp_path / "a", 7, "supervised/input_joints_render")
    run(_cfg(data_root, tmp_path / "b", train_stage="supervised", stage_num=1, max_steps=3))
    resumed = run(_cfg(data_root, tmp_path / "b", train_stage="supervised", stage_num=1, max_steps=7, resume=True))
    assert resumed["last_losses"] == full["last_losses"]
    assert (tmp_path / "b" / "config.step3.yaml").is_file()      # max_steps changed: old settings kept


@pytest.mark.parametrize("arch", ["original", "sensor"])
def test_transfer_stage_with_defaults_on(data_root, tmp_path, arch):
    out = tmp_path / "transfer"
    res = run(_cfg(data_root, out, train_stage="transfer", gan_arch=arch, gan_ngf=4, gan_blocks=1, gan_ndf=4,
                   gan_batch_size=2, gan_epochs_constant=1, gan_epochs_decay=1, max_steps=13))   # 11 steps per epoch
    ck = torch.load(out / "latest.pt", weights_only=False)
    assert ck["step"] == 13 and ck["epoch"] == 1 and "fg_abs_nu" in res["val"]
    assert "transfer/images" in image_tags(out)
    from models.translator import load_translator, translate
    G = load_translator(str(out / "best.pt"))
    crop = torch.ones(1, 1, 128, 128)
    crop[..., 40:90, 40:90] = 0.0
    assert np.isfinite(translate(G, crop).numpy()).all()
    pre = run(_cfg(data_root, tmp_path / "pre", train_stage="pretrain", stage_num=1, max_steps=2,
                   transfer_net=str(out / "best.pt")))               # pretraining on its translated crops
    assert np.isfinite(pre["last_losses"]["loss"])


def test_missing_test_frame_keeps_its_row_and_the_scorer_names_it(pretrained, data_root, tmp_path):
    """The public format has no frame ids: a test frame that cannot be read keeps a NaN row (and a
    line in frames.csv), and phase=score names that line instead of printing a NaN mean."""
    from stages.results_io import ResultFileError
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    (root / "test" / "depth_1_0000003.png").unlink()
    out = tmp_path / "test"
    metrics = run(_cfg(root, out, phase="test", load_model=str(pretrained[0] / "latest.pt")))
    assert metrics["frames"] == 5
    rows = (out / "s2_pwe_std_uvd.txt").read_text().splitlines()
    assert len(rows) == 6 and "nan" in rows[2] and "nan" not in rows[1] + rows[3]
    assert "2,depth file missing" in (out / "frames.csv").read_text().splitlines()
    with pytest.raises(ResultFileError, match=r"s2_pwe_std_uvd.txt, line 3: non-finite value"):
        run(_cfg(root, tmp_path / "score", phase="score", pred_file=str(out / "s2_pwe_std_uvd.txt"),
                 gt_file=str(out / "gt_std_uvd.txt")))


def test_export_refuses_frames_of_another_sensor_without_intrinsics(pretrained, data_root, tmp_path):
    """512x424 frames (Kinect v2) with the NYU preset's 640x480 intrinsics: refused, naming the fix;
    with the sensor's intrinsics given the same frames export."""
    from datasets.depth_io import DatasetError, write_png16
    folder = tmp_path / "kinect"
    folder.mkdir()
    for k in range(2):
        frame = np.zeros((424, 512), np.float32)
        frame[150:260, 200:300] = 600.0
        write_png16(folder / f"{k:04d}.png", frame)
    ckpt = str(pretrained[0] / "latest.pt")
    with pytest.raises(DatasetError, match=r"frames are 512x424 .* belong to 640x480 images: give your sensor's fx="):
        run(_cfg(data_root, tmp_path / "e1", phase="export", load_model=ckpt, export_input=str(folder)))
    totals = run(_cfg(data_root, tmp_path / "e2", phase="export", load_model=ckpt, export_input=str(folder),
                      fx=365.0, fy=365.0, cx=256.0, cy=212.0))
    assert totals["frames"] == 2


def test_finetune_resume_is_exact(pretrained, data_root, tmp_path):
    """Synthetic stream, point sampling and real augmentation continue where they stopped."""
    init = str(pretrained[0] / "latest.pt")
    kw = dict(train_stage="finetune", stage_num=1, load_model=init)
    full = run(_cfg(data_root, tmp_path / "a", max_steps=6, **kw))
    run(_cfg(data_root, tmp_path / "b", max_steps=3, **kw))
    resumed = run(_cfg(data_root, tmp_path / "b", max_steps=6, resume=True, **kw))
    assert resumed["last_losses"] == full["last_losses"]
