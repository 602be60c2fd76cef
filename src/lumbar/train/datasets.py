"""Datasets over the cached stage-one crops."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import schema

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


class CropDataset(EpochSeeded, Dataset):
    """One study per item: its 8 three-slice crops, points (NaN unknown), presence, labels (-1 unknown).

    Augmentation keeps points and labels consistent: intensity gain/gamma, and a small translation of
    each crop that moves its points with it. No flips: a left-right flip of an axial crop would swap
    the left and right labels, and an anterior-posterior flip has no anatomical counterpart.
    """

    def __init__(self, entries: list[dict], labels: np.ndarray | None = None, augment: bool = False, seed: int = 0,
                 max_shift: int = 6):
        self.entries = entries
        self.labels = labels if labels is not None else np.full((len(entries), schema.N_LABELS), -1, np.int64)
        self.augment = augment
        self.max_shift = max_shift
        self.seed = seed

    def __len__(self) -> int:
        return len(self.entries)

    def _shift(self, img: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = self.rng.integers(-self.max_shift, self.max_shift + 1, size=2)
        img = np.roll(img, (int(dy), int(dx)), axis=(-2, -1))
        return img, pts + np.array([dx, dy], dtype=pts.dtype)

    def __getitem__(self, i: int) -> dict:
        e = self.entries[i]
        sag = e["sag_image"].astype(np.float32)
        axial = e["axial_image"].astype(np.float32)
        sag_pts = e["sag_points"].astype(np.float32).copy()
        ax_pts = e["axial_points"].astype(np.float32).copy()
        if self.augment:
            for j in range(len(sag)):
                sag[j], sag_pts[j] = self._shift(sag[j], sag_pts[j])
            for j in range(len(axial)):
                axial[j], ax_pts[j] = self._shift(axial[j], ax_pts[j])
            gain = self.rng.uniform(0.85, 1.15)
            gamma = self.rng.uniform(0.85, 1.15)
            sag = np.clip(sag, 0, None) ** gamma * gain
            axial = np.clip(axial, 0, None) ** gamma * gain
        return {"sag_image": torch.from_numpy(np.ascontiguousarray(sag)),
                "axial_image": torch.from_numpy(np.ascontiguousarray(axial)),
                "sag_points": torch.from_numpy(sag_pts), "axial_points": torch.from_numpy(ax_pts),
                "present": torch.from_numpy(e["present"].astype(bool)),
                "labels": torch.from_numpy(self.labels[i].astype(np.int64))}


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
