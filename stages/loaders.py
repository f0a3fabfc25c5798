"""Data order by optimizer step: deterministic, shardable, resumable mid-epoch.

`epoch_loader` gives this rank's DataLoader over one epoch (DistributedSampler order seeded by
cfg.seed) starting at any batch; `BatchStream.batch(t)` is the batch of step t.  A dataset with a
`set_epoch(epoch)` method (CropDataset) draws its augmentation per (seed, epoch, item), so the crop of
step t is the same whether the run was resumed or not, and whatever the number of workers.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def worker_init_fn(worker_id: int) -> None:
    """DataLoader workers: seed numpy/python from the worker's torch seed (set by the loader's generator)."""
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)


def epoch_loader(dataset, run, batch_size: int, epoch: int, start_batch: int = 0,
                 shuffle: bool = True, drop_last: bool = True) -> torch.utils.data.DataLoader:
    """DataLoader over this rank's shard of `epoch` (DistributedSampler order, seed cfg.seed), skipping
    the first `start_batch` batches (resume mid-epoch).  Worker seeds derive from (seed, epoch)."""
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=run.world_size, rank=run.rank,
                                                  shuffle=shuffle, seed=run.cfg.seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch, run.cfg.seed)
    indices = list(sampler)[start_batch * batch_size:]
    gen = torch.Generator().manual_seed(run.cfg.seed * 100_003 + epoch * 1_009 + run.rank)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=indices, drop_last=drop_last,
                                       num_workers=run.cfg.num_workers, worker_init_fn=worker_init_fn,
                                       generator=gen, persistent_workers=False,
                                       pin_memory=run.device.type == "cuda")


class BatchStream:
    """Batches of `dataset` by optimizer step: step t reads batch t % steps_per_epoch of epoch
    t // steps_per_epoch (epoch_loader order), so a resumed run reads the same batches."""

    def __init__(self, dataset, run, batch_size: int, steps_per_epoch: int):
        self.dataset, self.run, self.batch_size, self.spe = dataset, run, batch_size, steps_per_epoch
        self.iterator, self.next_step = None, None

    def batch(self, step: int) -> dict:
        if self.iterator is None or step != self.next_step or step % self.spe == 0:
            epoch, start = divmod(step, self.spe)
            self.iterator = iter(epoch_loader(self.dataset, self.run, self.batch_size, epoch, start))
        self.next_step = step + 1
        return next(self.iterator)
