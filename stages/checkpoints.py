"""Checkpoint files and RNG state: atomic writes, clear errors, the hand model a checkpoint needs.

A checkpoint is a dict written by `torch.save`:
    model, optimizer, scheduler, scaler   state_dicts (optimizer is None in a last_good.pt whose
                                          optimizer state was already touched by the failing step)
    step, epoch, best                      progress (optimizer steps done, epochs done, best value)
    rng                                    python / numpy / torch (/ cuda) states and the stage's generators
    config                                 the resolved settings that ran (config.Config.to_dict)
    hand_model                             {'kind': 'standin' | 'mano', 'fingerprint': ...} (HandModel.identity)
    extra                                  state of the stage's extra objects (e.g. the translator's pools)

Writes are atomic (temporary file + os.replace) and fsynced; a full disk says so, removes the partial
file and leaves the previous checkpoint in place.  `ARCHITECTURE_KEYS` are the settings a checkpoint's
network is rebuilt with (`architecture_config`), whatever the command line says.
"""
from __future__ import annotations

import dataclasses
import errno
import io
import os
import random
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from config import Config
from models.dual_branch import NET_KEYS
from models.mano import HAND_MODEL_KEYS

# The settings that define a trained network (NetConfig) and the hand model it was trained with.
ARCHITECTURE_KEYS = NET_KEYS + HAND_MODEL_KEYS


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or written; the message names the file."""


class HandModelMismatch(CheckpointError):
    """A checkpoint trained with another hand model than the one this run built."""


def rng_state(generators: Iterable[torch.Generator] = ()) -> dict:
    """Every RNG state a step may read: python, numpy, torch (and CUDA), and the stage's generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "generators": [g.get_state() for g in generators]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: Iterable[torch.Generator] = ()) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for g, s in zip(generators, state["generators"]):
        g.set_state(s)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Serialize in memory, write to `path.tmp`, fsync, then os.replace: a killed run or a full disk
    never leaves a partial `path`; on failure the temporary file is removed and CheckpointError raised."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = "the previous one is kept" if path.exists() else "no earlier one exists"
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise CheckpointError(f"no space left on device while writing {path} ({len(buffer.getbuffer()) / 2**20:.1f} "
                                  f"MiB); the partial file was removed and {kept}: free disk space and resume "
                                  f"with resume=true") from None
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}; {kept}") from None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read one of our checkpoints; CheckpointError names the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} holds no 'model' entry")
    return state


def check_hand_model(state: dict, identity: dict | None, path: str | Path, policy: str = "error") -> None:
    """Compare the hand model a checkpoint was trained with to this run's (HandModel.identity()).

    policy 'error' raises HandModelMismatch naming both, 'warn' warns; a checkpoint that predates the
    record (no 'hand_model' entry) is accepted with a warning."""
    saved = state.get("hand_model")
    if identity is None:
        return
    if saved is None:
        warnings.warn(f"{path} does not record its hand model (older checkpoint); assuming it matches "
                      f"this run's {identity['kind']} {identity['fingerprint']}", stacklevel=2)
        return
    if saved.get("fingerprint") == identity["fingerprint"]:
        return
    msg = (f"{path} was trained with hand model {saved.get('kind')} {saved.get('fingerprint')} but this run "
           f"built {identity['kind']} {identity['fingerprint']}: set hand_model={saved.get('kind')} (and mano_path= "
           f"to the file it was trained with), or hand_model_check=warn to go on anyway")
    if policy == "warn":
        warnings.warn(msg, stacklevel=2)
        return
    raise HandModelMismatch(msg)


def load_weights(model: nn.Module, path: str | Path, identity: dict | None = None, policy: str = "error",
                 log=print) -> tuple[list, list]:
    """Name-matched load of a checkpoint's model weights (shapes must agree) after the hand-model
    check; returns (missing, unexpected)."""
    state = load_checkpoint(path)
    check_hand_model(state, identity, path, policy)
    own = model.state_dict()
    usable = {k: v for k, v in state["model"].items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    unexpected = [k for k in state["model"] if k not in usable]
    model.load_state_dict(usable, strict=False)
    log(f"initialised from {path}: {len(usable)} tensors loaded, {len(missing)} missing, {len(unexpected)} unused")
    return missing, unexpected


def architecture_config(cfg: Config, checkpoint_config: dict | None) -> Config:
    """cfg with the ARCHITECTURE_KEYS of a checkpoint's saved config (the keys it has)."""
    if not checkpoint_config:
        return cfg
    return dataclasses.replace(cfg, **{k: checkpoint_config[k] for k in ARCHITECTURE_KEYS if k in checkpoint_config})
