"""What every dataset shares: augmentations seeded per (seed, epoch, rank, worker), and the collate."""
from __future__ import annotations

import numpy as np
import torch


class EpochSeeded:
    """Augmentation randomness seeded from (seed, epoch, rank, DataLoader worker): every worker draws its
    own stream, each epoch a new one, and a rerun (or a resumed run) draws the same ones. A single
    Generator made in __init__ would be copied into every worker and replayed by each, every epoch."""

    seed: int = 0
    epoch: int = 0
    _rng_key: tuple | None = None
    _rng_gen: np.random.Generator | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def rng(self) -> np.random.Generator:
        from torch.utils.data import get_worker_info

        from ..devices import dist_info

        info = get_worker_info()
        key = (self.seed, self.epoch, dist_info()[0], info.id if info is not None else -1)
        if self._rng_key != key:
            self._rng_key = key
            self._rng_gen = np.random.default_rng([abs(k) + (k < 0) * 10**6 for k in key])
        return self._rng_gen


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
