"""What every dataset shares: augmentations seeded per (seed, epoch, rank, worker), and the collate."""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..data.resample import rotation_matrix, warp_affine
from ..models.views import MIRRORED, View


def viewed(dataset, view: View):
    """The same held-out studies, every one seen through a test-time view (models/views.py: mirrored,
    labels swapped; crops shifted): a fold's predictions as the engine makes them. The dataset reads
    its `view` item by item."""
    if not hasattr(dataset, "view"):
        raise TypeError(f"{type(dataset).__name__} has no test-time views (no `view` attribute)")
    out = copy.copy(dataset)
    out.view = view
    return out


def mirrored(dataset):
    """The same held-out studies, every one as the patient mirrored left-right (labels swapped)."""
    return viewed(dataset, MIRRORED)


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


def random_affine(stack: np.ndarray, points: np.ndarray, rng: np.random.Generator, max_deg: float,
                  max_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A stack [C, S, S] turned by up to ±max_deg degrees and scaled by up to ±max_scale about its centre
    (one draw for all channels: they are neighbouring slices), and its points [..., 2] moved with it
    (NaN stays NaN). Outside the source reads 0, as the crops do."""
    if max_deg <= 0 and max_scale <= 0:
        return stack, points
    size = stack.shape[-1]
    angle = rng.uniform(-max_deg, max_deg) if max_deg > 0 else 0.0
    scale = 1.0 + (rng.uniform(-max_scale, max_scale) if max_scale > 0 else 0.0)
    centre = ((size - 1) / 2, (size - 1) / 2)  # pixel centres at integers, as everywhere
    m = rotation_matrix(centre, angle, scale)
    out = warp_affine(stack, m, (size, size), inverse=False)
    pts = points @ m[:, :2].T + m[:, 2]
    return out.astype(stack.dtype), pts.astype(points.dtype)


def cutout(stack: np.ndarray, rng: np.random.Generator, boxes: int, frac: float = 0.2) -> np.ndarray:
    """`boxes` squares of side frac x S zeroed through every channel at random places (coarse dropout)."""
    if boxes <= 0:
        return stack
    out = stack.copy()
    size = stack.shape[-1]
    side = max(1, int(round(frac * size)))
    for _ in range(boxes):
        x, y = rng.integers(0, size - side + 1, size=2)
        out[..., y:y + side, x:x + side] = 0
    return out
