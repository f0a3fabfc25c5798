"""SyntheticDataset: the synthetic hands of datasets/synthetic.py as a map-style torch Dataset.

Only the benchmarks use it (bench_synthetic.py measures the DataLoader-worker path); the training
stages draw whole batches on the device with `SyntheticHands.batch` instead.
"""
from __future__ import annotations

import torch

from config import Config
from datasets.synthetic import VIEW_ROTATIONS, SyntheticDraws, SyntheticHands, sample_seed
from models.mano import build_hand_model
from render.hand_renderer import HandRenderer


class SyntheticDataset(torch.utils.data.Dataset):
    """Map-style wrapper yielding single CPU samples; sample i depends only on (seed, i).

    Random draws come in blocks of `BLOCK` consecutive indices, block k drawn in one batched call
    from a generator seeded by (seed, k) (a few recent blocks are cached), so any index order,
    batch size or worker split gives the same sample i.  The hand model and renderer are built
    lazily in each process (DataLoader workers included); `__getitems__` renders a whole DataLoader
    batch in one vectorized call.  With synth_occlusion_per_sample=False the occluded joints are
    shared per block.
    """
    BLOCK = 32
    CACHED_BLOCKS = 4

    def __init__(self, cfg: Config, seed: int, length: int, rotation: str):
        if rotation not in VIEW_ROTATIONS:
            raise ValueError(f"unknown view rotation '{rotation}'; valid: {', '.join(VIEW_ROTATIONS)}")
        self.cfg, self.seed, self.length, self.rotation = cfg, int(seed), int(length), rotation
        self._hands: SyntheticHands | None = None
        self._blocks: dict[int, SyntheticDraws] = {}

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_hands"], state["_blocks"] = None, {}
        return state

    def _block(self, k: int) -> SyntheticDraws:
        if k not in self._blocks:
            if len(self._blocks) >= self.CACHED_BLOCKS:
                self._blocks.pop(next(iter(self._blocks)))
            g = torch.Generator().manual_seed(sample_seed(self.seed, k))
            self._blocks[k] = self.hands().draw(self.BLOCK, g)
        return self._blocks[k]

    def hands(self) -> SyntheticHands:
        if self._hands is None:
            model = build_hand_model(self.cfg)
            self._hands = SyntheticHands(self.cfg, model, HandRenderer(model), self.rotation)
        return self._hands

    def __getitems__(self, indices: list[int]) -> list[dict]:
        hands = self.hands()
        for i in indices:
            if not 0 <= i < self.length:
                raise IndexError(f"synthetic sample {i} out of range 0..{self.length - 1}")
        draws = SyntheticDraws.cat([self._block(i // self.BLOCK).select(slice(i % self.BLOCK, i % self.BLOCK + 1))
                                    for i in indices])
        with torch.no_grad():
            out = hands.build(draws, "cpu")
        out["index"] = torch.as_tensor(list(indices), dtype=torch.long)
        return [{k: v[j] for k, v in out.items()} for j in range(len(indices))]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([int(index)])[0]
