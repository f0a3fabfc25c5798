"""The run folder's rules: never overwrite another run, resume only what can be resumed.

`check_out_dir` (every process, read-only): an out_dir holding checkpoints needs cfg.resume (the
checkpoint to continue is returned) or cfg.overwrite (the names to delete are returned).
`resume_changes`: the settings that differ from the checkpoint's; config.RESUME_FIXED ones refuse.
`prepare_out_dir` (main process): deletes what overwrite replaces, keeps the earlier settings of a
changed resume as config.step<N>.yaml.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from config import RESUME_FIXED, Config, ConfigError
from stages.checkpoints import CheckpointError, load_checkpoint

CHECKPOINT_NAMES = ("latest.pt", "best.pt", "last_good.pt")
RESUME_IGNORED = ("resume", "overwrite", "config")   # differ by nature between a run and its resume


def resume_changes(saved: dict, cfg: Config, path: Path) -> list[tuple[str, object, object]]:
    """(key, old, new) of every setting that differs from the checkpoint's; ConfigError when one of
    config.RESUME_FIXED differs (the run cannot continue with it)."""
    now = cfg.to_dict()
    changed = [(k, saved[k], now[k]) for k in now if k in saved and k not in RESUME_IGNORED and saved[k] != now[k]]
    fixed = [f"{k}={old!r} (now {new!r})" for k, old, new in changed if k in RESUME_FIXED]
    if fixed:
        raise ConfigError(f"resume=true cannot change {', '.join(fixed)}: {path} was trained with them; "
                          f"drop those settings, or start a new run (another out_dir= or overwrite=true)")
    return changed


def check_out_dir(cfg: Config) -> tuple[dict | None, list[str]]:
    """(checkpoint to resume or None, names of checkpoints that overwrite=true will delete)."""
    out = Path(cfg.out_dir)
    existing = [n for n in CHECKPOINT_NAMES if (out / n).is_file()]
    if cfg.resume:
        if not (out / "latest.pt").is_file():
            raise CheckpointError(f"resume=true but {out / 'latest.pt'} does not exist (start without resume=true)")
        return load_checkpoint(out / "latest.pt"), []
    if existing and not cfg.overwrite:
        raise ConfigError(f"out_dir {out} already holds {', '.join(existing)} from an earlier run: pass resume=true "
                          f"to continue it, overwrite=true to delete them and start again, or another out_dir=")
    return None, existing


def prepare_out_dir(out_dir: Path, to_delete: list[str], changes: list, resume_state: dict | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if to_delete:
        for name in to_delete:
            (out_dir / name).unlink()
        shutil.rmtree(out_dir / "tb", ignore_errors=True)
        print(f"overwrite=true: deleted {', '.join(to_delete)} and tb/ of the earlier run in {out_dir}")
    if changes:
        step = resume_state["step"]
        if (out_dir / "config.yaml").is_file():
            os.replace(out_dir / "config.yaml", out_dir / f"config.step{step}.yaml")
        print(f"resume at step {step} with changed settings (applied; the earlier ones are kept in "
              f"config.step{step}.yaml): " + ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes))
