"""Nothing is lost silently: out_dir guard, resume with changed settings, finite weights in
last_good.pt, timed checkpoints, disk full, hand-model records, one-line errors for bad settings."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn

from config import ConfigError, make_config
from stages import engine
from stages.checkpoints import (CheckpointError, HandModelMismatch, check_hand_model, load_checkpoint,
                                load_weights, save_checkpoint)
from tests.conftest import ROOT


def _cfg(out_dir, **kw):
    base = dict(out_dir=str(out_dir), device="cpu", progress=False, log_interval=1, image_log_interval=0,
                seed=3, num_workers=0)
    return make_config([], **{**base, **kw})


class _Regression:
    """A small regression (batch norm, so a broken forward also breaks buffers) trained by the engine."""

    def __init__(self, run, lr, hook=None):
        torch.manual_seed(run.seed)
        self.model = engine.wrap_model(nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                                     nn.Linear(16, 1)), run)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=2, gamma=0.5)
        self.gen = torch.Generator().manual_seed(run.seed)
        self.losses, self.hook = [], hook

    def step_fn(self, step):
        if self.hook is not None:
            self.hook(step)
        x = torch.randn(8, 4, generator=self.gen)
        loss = (self.model(x) - x.sum(1, keepdim=True)).square().mean()
        self.losses.append(float(loss.detach()))
        return {"loss": loss}


def _train(cfg, total, hook=None, val=True):
    run = engine.setup(cfg)
    p = _Regression(run, cfg.lr, hook)
    validate = (lambda step: {"err": p.losses[-1]}) if val else None
    try:
        out = engine.train(run, p.model, p.opt, p.sched, p.step_fn, total, 3, validate_fn=validate, best_key="err",
                           generators=[p.gen])
    finally:
        engine.teardown(run)
    return p, out


def test_existing_run_folder_is_refused_unless_resume_or_overwrite(tmp_path):
    _train(_cfg(tmp_path), 4)
    before = load_checkpoint(tmp_path / "latest.pt")["model"]
    with pytest.raises(ConfigError, match=r"already holds latest.pt, best.pt.*resume=true.*overwrite=true"):
        _train(_cfg(tmp_path), 1)
    assert all(torch.equal(v, before[k]) for k, v in load_checkpoint(tmp_path / "latest.pt")["model"].items())
    _, out = _train(_cfg(tmp_path, overwrite=True), 1)
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 1 and out["checkpoints"] == ["best.pt", "latest.pt"]


def test_cli_refusal_is_one_line_with_exit_2(tmp_path):
    (tmp_path / "latest.pt").write_bytes(b"x")
    r = subprocess.run([sys.executable, "train_render.py", f"out_dir={tmp_path}", "max_steps=1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "resume=true" in lines[0] and "overwrite=true" in lines[0] and str(tmp_path) in lines[0]


def test_resume_applies_changed_lr_and_records_both_configs(tmp_path):
    _train(_cfg(tmp_path), 4)
    p, _ = _train(_cfg(tmp_path, resume=True, lr=0.05), 6)
    ck = load_checkpoint(tmp_path / "latest.pt")
    # lr 0.05, StepLR(step_size=2 epochs, gamma=0.5), 3 steps per epoch: after 6 steps one decay
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5)
    assert ck["config"]["lr"] == 0.05
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["lr"] == 0.05
    assert yaml.safe_load((tmp_path / "config.step4.yaml").read_text())["lr"] == 1e-3


def test_resume_refuses_settings_that_cannot_change(tmp_path):
    _train(_cfg(tmp_path), 4)
    with pytest.raises(ConfigError, match=r"cannot change net='resnet18' \(now 'tiny'\)"):
        _train(_cfg(tmp_path, resume=True, net="tiny"), 6)


def test_unchanged_resume_reproduces_the_uninterrupted_losses(tmp_path):
    full, _ = _train(_cfg(tmp_path / "a"), 8)
    first, _ = _train(_cfg(tmp_path / "b"), 4)
    rest, _ = _train(_cfg(tmp_path / "b", resume=True), 8)
    assert first.losses + rest.losses == full.losses


def test_exploding_lr_keeps_finite_weights_in_last_good(tmp_path):
    with pytest.raises(engine.NonFiniteLoss, match="last_good.pt"):
        _train(_cfg(tmp_path, lr=1e30), 10)
    good = load_checkpoint(tmp_path / "last_good.pt")
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_non_finite_gradient_stops_before_the_update(tmp_path):
    run = engine.setup(_cfg(tmp_path))
    p = _Regression(run, 1e-2)
    weight = p.model[0].weight

    def hook(step):
        if step == 2:
            weight.register_hook(lambda g: g * float("nan"))
    p.hook = hook
    with pytest.raises(engine.NonFiniteLoss, match=r"non-finite gradient at step 2 in 1 tensor\(s\), e.g. \['0.weight'\]"):
        engine.train(run, p.model, p.opt, p.sched, p.step_fn, 6, 3, generators=[p.gen])
    engine.teardown(run)
    good = load_checkpoint(tmp_path / "last_good.pt")
    assert good["step"] == 2 and torch.isfinite(weight).all()
    assert all(torch.equal(good["model"][k], v) for k, v in p.model.state_dict().items())


def test_timed_checkpoint_survives_a_kill(tmp_path):
    """With checkpoint_interval_min tiny, latest.pt follows every step between validations; a run
    killed at step 5 resumes from step 5 and ends with the uninterrupted run's losses."""
    full, _ = _train(_cfg(tmp_path / "a", val_interval=100), 8, val=False)

    def kill(step):
        if step == 5:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _train(_cfg(tmp_path / "b", val_interval=100, checkpoint_interval_min=1e-9), 8, hook=kill, val=False)
    assert load_checkpoint(tmp_path / "b" / "latest.pt")["step"] == 5
    rest, _ = _train(_cfg(tmp_path / "b", val_interval=100, resume=True), 8, val=False)
    assert rest.losses == full.losses[5:]


def test_disk_full_keeps_previous_checkpoint_and_removes_partial_file(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is not available")
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    (tmp_path / "latest.pt.tmp").symlink_to("/dev/full")     # every write to it fails with ENOSPC
    with pytest.raises(CheckpointError, match="no space left on device while writing .*previous one is kept"):
        save_checkpoint(path, {"model": {"w": torch.zeros(1000)}})
    assert not os.path.lexists(tmp_path / "latest.pt.tmp")
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert errno.ENOSPC  # the errno the message stands for


def test_hand_model_mismatch_is_an_error_naming_both(tmp_path, hand_model):
    own = hand_model.identity()
    other = {"kind": "mano", "fingerprint": "0123456789abcdef"}
    net = nn.Linear(2, 2)
    save_checkpoint(tmp_path / "m.pt", {"model": net.state_dict(), "hand_model": other})
    with pytest.raises(HandModelMismatch, match=rf"mano 0123456789abcdef .* standin {own['fingerprint']}"):
        load_weights(net, tmp_path / "m.pt", own)
    with pytest.warns(UserWarning, match="trained with hand model mano"):
        load_weights(net, tmp_path / "m.pt", own, policy="warn", log=lambda *a: None)
    check_hand_model({"hand_model": own}, own, "same.pt")      # the same hand passes silently


def test_hand_model_fingerprint_tells_hands_apart(standin_arrays):
    from models.mano import HandModel
    a = HandModel(standin_arrays).identity()
    changed = dict(standin_arrays, v_template=standin_arrays["v_template"] * 1.01)
    assert HandModel(standin_arrays).identity() == a and HandModel(changed).identity() != a


@pytest.mark.parametrize("arg, words", [
    ("cube_mm=[250,250]", ["cube_mm", "3 numbers"]), ("batch_size=0", ["batch_size", "> 0"]),
    ("lr=-1", ["lr", "> 0"]), ("synth_cube_scale_range=[0.8]", ["synth_cube_scale_range", "2 numbers"]),
    ("val_fraction=1.5", ["val_fraction", "[0, 1)"]), ("num_workers=-1", ["num_workers", ">= 0"]),
    ("lr=nan", ["lr", "finite"]), ("epochs=0", ["epochs", "> 0"]), ("fx=0", ["fx", "> 0"]),
    ("synth_depth_range_mm=[900,500]", ["synth_depth_range_mm", "min <= max"]),
    ("synth_occluders_min=5", ["synth_occluders_max", "synth_occluders_min <="]),
])
def test_every_setting_is_validated(arg, words):
    extra = ["synth_occluders_max=2"] if arg.startswith("synth_occluders_min") else []
    with pytest.raises(ConfigError) as e:
        make_config([arg] + extra)
    for w in words:
        assert w in str(e.value)


def test_cli_bad_value_is_one_line_with_exit_2():
    r = subprocess.run([sys.executable, "train_render.py", "cube_mm=[250,250]"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "cube_mm" in lines[0], r.stderr
