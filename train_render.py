"""Single entry point: `python train_render.py [key=value ...]` (see --help).

phase=train  train_stage=pretrain|transfer|finetune|supervised
phase=test   evaluate load_model=... on the dataset's test split
phase=score  score pred_file=... against gt_file=... with the public scorer's rules
phase=export run a model on depth frames / gesture datasets and write skeletons

With no arguments at all it runs the quickstart demo: configs/quickstart.yaml (pretraining of the
tiny network on synthetic stand-in hands) followed by its evaluation on the generated real-like set.
Works under torchrun for multi-GPU training.
"""
from __future__ import annotations

import importlib
import os
import sys

from config import Config, ConfigError, config_from_cli

QUICKSTART = ["config=configs/quickstart.yaml"]
QUICKSTART_TRAIN = ["overwrite=true"]   # the demo always starts afresh in its own folder


def run(cfg: Config) -> dict:
    """Dispatch to the stage or phase module; each exposes `run(cfg) -> dict`."""
    if cfg.phase == "train":
        module = {"pretrain": "stages.pretrain", "supervised": "stages.supervised",
                  "transfer": "stages.transfer", "finetune": "stages.finetune"}[cfg.train_stage]
    else:
        module = {"test": "stages.evaluate", "score": "stages.score", "export": "stages.export"}[cfg.phase]
    return importlib.import_module(module).run(cfg)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by inputs (files, datasets, checkpoints, a diverging run): their message says
    what is wrong, so they are printed without a traceback (set DSF_TRACEBACK=1 to see it).
    Imported here, on an error only: the entry point loads the heavy packages of the phase it runs
    and nothing else (`--help` and config errors stay fast)."""
    from datasets.depth_io import DatasetError
    from models.mano_io import MANOFileError
    from stages.checkpoints import CheckpointError
    from stages.engine import NonFiniteLoss
    from stages.results_io import ResultFileError
    return DatasetError, MANOFileError, CheckpointError, NonFiniteLoss, ResultFileError, FileNotFoundError


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except ConfigError as e:     # a setting that cannot work (e.g. an out_dir holding another run)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if os.environ.get("DSF_TRACEBACK") or not isinstance(e, user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


def _main(argv: list[str]) -> int:
    if not argv:
        print("No arguments: running the quickstart demo (python train_render.py config=configs/quickstart.yaml "
              "overwrite=true,\nthen phase=test on its checkpoint; it replaces an earlier demo run). "
              "See `python train_render.py --help` for every setting.")
        cfg = config_from_cli(QUICKSTART + QUICKSTART_TRAIN)
        run(cfg)
        test_cfg = config_from_cli(QUICKSTART + ["phase=test", f"load_model={cfg.out_dir}/latest.pt"])
        run(test_cfg)
        return 0
    run(config_from_cli(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
