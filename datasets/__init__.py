"""Datasets: real depth datasets in their original formats and on-the-fly synthetic hands.

`build_dataset(cfg, split, labels)` returns the real dataset of cfg.dataset (nyu, simreal, icvl, msra).
"""
from __future__ import annotations

from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")


def build_dataset(cfg, split: str, labels: bool) -> Dataset:
    """Real dataset of `cfg.dataset` for split train / val / test; items are sample dictionaries
    (ARCHITECTURE.md).  val is carved deterministically from the training frames (cfg.val_fraction);
    only train is augmented (cfg.augment).  labels=False never opens a label file (R9).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if cfg.fx is None or cfg.cube_mm is None or not cfg.data_root:
        cfg = cfg.resolved()
    # Readers are imported on use: the package itself stays light for `datasets.joints` & co.
    if cfg.dataset in ("nyu", "simreal"):
        from datasets.nyu import build_nyu
        return build_nyu(cfg, split, labels, name=cfg.dataset)
    if cfg.dataset == "icvl":
        from datasets.icvl import build_icvl
        return build_icvl(cfg, split, labels)
    if cfg.dataset == "msra":
        from datasets.msra import build_msra
        return build_msra(cfg, split, labels)
    raise ValueError(f"no real-data loader for dataset {cfg.dataset!r}; choices: nyu, simreal, icvl, msra")
