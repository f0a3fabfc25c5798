"""Shared fixtures.  Tests run on CPU in float32/float64; files in ../shared/data are optional."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test cleanly where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def standin_arrays():
    """Arrays of the generated stand-in hand (MANO_RIGHT.pkl layout)."""
    from models.standin_hand import make_standin_arrays
    return make_standin_arrays(seed=0)


@pytest.fixture(scope="session")
def hand_model(standin_arrays):
    """The hand layer (float32, CPU) built on the stand-in hand."""
    from models.mano import HandModel
    return HandModel(standin_arrays)
