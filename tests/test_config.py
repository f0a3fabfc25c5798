"""Config: defaults, presets, YAML, overrides, --help and every documented error."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from config import DATASET_PRESETS, Config, ConfigError, help_text, make_config
from tests.conftest import ROOT


def test_defaults_resolve_from_dataset_preset():
    cfg = make_config([])
    p = DATASET_PRESETS[cfg.dataset]
    assert (cfg.fx, cfg.fy, cfg.cx, cfg.cy) == (p.fx, p.fy, p.cx, p.cy)
    assert cfg.cube_mm == list(p.cube_mm) and cfg.epochs == p.epochs
    assert cfg.data_root == f"data/{cfg.dataset}" and cfg.out_dir.startswith("checkpoints/")


def test_overrides_parse_numbers_lists_bools_and_case():
    cfg = make_config(["dataset=ICVL", "cube_mm=[180, 190, 200]", "lr=1e-4", "resume=true",
                       "stage_num=1", "Phase=TEST", "net=Tiny"])
    assert cfg.dataset == "icvl" and cfg.phase == "test" and cfg.net == "tiny"
    assert cfg.cube_mm == [180, 190, 200] and cfg.lr == pytest.approx(1e-4)
    assert cfg.resume is True and cfg.stage_num == 1
    assert cfg.fx == 240.99 and cfg.mirror is True  # ICVL preset
    assert make_config(["cube_mm=200"]).cube_mm == [200, 200, 200]
    assert make_config(["out_dir=123"]).out_dir == "123"  # digits stay a string


def test_msra_cube_follows_test_subject():
    assert make_config(["dataset=msra", "msra_test_subject=8"]).cube_mm == [150.0] * 3


def test_yaml_then_command_line(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("net: tiny\nbatch_size: 8\nlr: 0.005\n")
    cfg = make_config([f"config={y}", "batch_size=4"])
    assert (cfg.net, cfg.batch_size, cfg.lr) == ("tiny", 4, 0.005)


def test_config_is_frozen_and_saves_yaml(tmp_path):
    cfg = make_config([])
    with pytest.raises(Exception):
        cfg.lr = 1.0  # type: ignore[misc]
    cfg.save_yaml(tmp_path / "config.yaml")
    again = make_config([f"config={tmp_path / 'config.yaml'}"])
    assert again.config == str(tmp_path / "config.yaml")
    assert dataclasses.replace(again, config="") == cfg


@pytest.mark.parametrize("arg, words", [
    ("datset=nyu", ["unknown config key 'datset'", "did you mean 'dataset'"]),
    ("phase=tset", ["phase", "'tset'", "train, test, score, export", "did you mean 'test'"]),
    ("train_stage=pretrian", ["train_stage", "pretrain, transfer, finetune, supervised"]),
    ("lr=abc", ["lr", "'abc'", "expected float"]),
    ("resume=maybe", ["resume", "true or false"]),
    ("stage_num=3", ["stage_num", "1, 2"]),
    ("cube_mm=[a,b]", ["cube_mm", "list of numbers"]),
    ("novalue", ["not key=value"]),
])
def test_errors_name_key_value_and_choices(arg, words):
    with pytest.raises(ConfigError) as e:
        make_config([arg])
    for w in words:
        assert w in str(e.value)


def test_missing_or_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        make_config([f"config={tmp_path / 'nope.yaml'}"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        make_config([f"config={bad}"])


def test_help_lists_every_key_in_sections():
    text = help_text()
    for name in Config.__dataclass_fields__:
        assert f"  {name}=" in text
    losses = help_text("losses")
    assert "[losses]" in losses and "  w_render=" in losses and "  lr=" not in losses
    with pytest.raises(ConfigError, match="unknown help section 'bogus'; sections: run, schedule"):
        help_text("bogus")


def test_cli_exit_codes():
    run = lambda *a: subprocess.run([sys.executable, "train_render.py", *a], cwd=ROOT,
                                    capture_output=True, text=True, timeout=120)
    r = run("--help")
    assert r.returncode == 0 and "train_stage=" in r.stdout and "cube_mm=" in r.stdout
    r = run("phase=tset")
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "phase" in lines[0] and "tset" in lines[0] and "test" in lines[0]


def test_cli_reports_input_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    r = subprocess.run([sys.executable, "train_render.py", "phase=test", f"load_model={bad}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and f"checkpoint {bad} is corrupt" in r.stderr
