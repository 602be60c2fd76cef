"""`train --model sequence`: frames per series type, the sequence model, the same folds and loop."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import config as cfgmod
from ..metric import probs_to_submission, score, solution_frame
from ..models.registry import create_model
from ..config import TrainConfig
from ..models.sequence import SequenceConfig
from ..data.cache import CachedEntries, take
from ..preprocess.frames import FramesConfig, frames_key, study_frames
from ..preprocess.mirror import mirror_frames, mirror_labels
from ..progress import bar
from ..files import write_json
from ..layout import Run
from .datasets import EpochSeeded, cutout, random_affine
from .oof import write_oof
from .runner import load_train
from .selection import read_oof_selection
from .runner import RunConfig, register
from .folds import cross_validate, study_inputs
from .loop import is_main



class FramesDataset(EpochSeeded, Dataset):
    """One study per item: frames [3, N, S, S], mask [3], positions [3, N], labels [25].
    Augmentation: with probability `mirror` the study's left-right mirror with its left and right
    labels swapped (preprocess/mirror.py), a small rotation, scaling and shift of each series' frames
    (one draw per series; points with them), `cutout` zeroed squares per series, intensity gain/gamma."""

    def __init__(self, entries: list[dict], labels: np.ndarray | None = None, augment: bool = False, seed: int = 0,
                 mirror: float = 0.0, rotate: float = 0.0, scale: float = 0.0, cutout: int = 0):
        self.entries = entries
        self.mirror, self.rotate, self.scale, self.cutout = mirror, rotate, scale, cutout
        self.labels = labels if labels is not None else np.full((len(entries), 25), -1, np.int64)
        self.augment = augment
        self.seed = seed

    view = None  # every item seen through this test-time view (datasets.viewed: held-out predictions)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        e, labels = self.entries[i], self.labels[i]
        if self.view is not None:
            e = self.view.apply(e, mirror_frames, None)
            labels = mirror_labels(labels) if self.view.mirror else labels
        if self.augment and self.mirror > 0 and self.rng.random() < self.mirror:
            e, labels = mirror_frames(e), mirror_labels(labels)
        frames = e["frames"].astype(np.float32)
        points = (e["points"].astype(np.float32).copy() if "points" in e
                  else np.full((*frames.shape[:2], 5, 2), np.nan, np.float32))
        if self.augment:
            for t in range(len(frames)):
                frames[t], points[t] = random_affine(frames[t], points[t], self.rng, self.rotate, self.scale)
                dx, dy = self.rng.integers(-4, 5, size=2)
                frames[t] = np.roll(frames[t], (int(dy), int(dx)), axis=(-2, -1))
                points[t] += np.array([dx, dy], np.float32)
                frames[t] = cutout(frames[t], self.rng, self.cutout)
            frames = np.clip(frames, 0, None) ** self.rng.uniform(0.85, 1.15) * self.rng.uniform(0.85, 1.15)
        return {"frames": torch.from_numpy(np.ascontiguousarray(frames)), "mask": torch.from_numpy(e["mask"].astype(bool)),
                "positions": torch.from_numpy(e["positions"].astype(np.float32)), "points": torch.from_numpy(points),
                "labels": torch.from_numpy(labels.astype(np.int64))}


@dataclass
class SequenceTraining(SequenceConfig, TrainConfig):
    """`train --model sequence`'s settings: the network's config composed with the training loop's."""
    epochs: int = 12  # the curves: the held-out score falls until epoch 10 (6: OOF 0.656, 12: 0.563, default folder)
    eval_every: int = 2  # the curves' held-out score every other epoch (and the last): ~10% of a CPU epoch
    batch_size: int = 8  # studies per step
    lr: float = 1e-3  # AdamW's peak learning rate
    augment: bool = True  # shift, gain and gamma on every series' frames (and the switches below)
    mirror: float = 0.0  # with augment: the share of examples seen mirrored left-right, labels swapped
    rotate: float = 0.0  # with augment: each series' frames turned by up to this many degrees
    scale: float = 0.0  # with augment: each series' frames scaled by up to this fraction either way
    cutout: int = 0  # with augment: squares (a fifth of the side) zeroed per series
    cache_dir: str = "cache"  # the per-study cache of frames
    only_fold: int = -1  # >= 0: train that fold alone (a quick look; no OOF file is written)


@register("sequence", order=50, config=SequenceTraining)
def train_sequence(data, run, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(SequenceTraining(), overrides)
    studies, cache = load_train(data, run, rc, cfg.cache_dir)
    fcfg = FramesConfig.of_model(cfg)
    # axial frames sit at each study's held-out stage-one selection, as the multitask crops do (the
    # naive rule's where the run has no slice selector)
    try:
        selections = read_oof_selection(run)
    except FileNotFoundError:
        selections = {}
    kept = []  # builds what is missing; read back per item while training, kept in memory only without a cache
    for st in bar(studies, desc="frames"):
        entry = study_frames(st, fcfg, cache, selections.get(st.study_id))
        if cache.root is None:
            kept.append(entry)
    entries = (CachedEntries(cache, [(st.study_id, frames_key(fcfg, selections.get(st.study_id))) for st in studies])
               if cache.root is not None else kept)
    ids = np.array([s.study_id for s in studies])
    y = np.stack([s.labels for s in studies])
    fold = np.array([s.fold for s in studies])

    def make_sets(tr, va):
        return (FramesDataset(take(entries, tr), y[tr], augment=cfg.augment, seed=cfg.seed, mirror=cfg.mirror,
                              rotate=cfg.rotate, scale=cfg.scale, cutout=cfg.cutout),
                FramesDataset(take(entries, va), y[va]))

    oof, fold_scores, _ = cross_validate("sequence", cfg, ids, y, fold, rc.n_folds, run, make_sets,
                                      lambda: create_model("sequence", cfg), lambda probs, va, prior: probs,
                                      inputs=study_inputs(studies))
    if not is_main():
        return {}
    if cfg.only_fold >= 0:
        return {"fold": cfg.only_fold, "val_score": round(fold_scores[0], 4)}
    cfgmod.save(cfg, Run(run).config("sequence"))
    path = write_oof(run, "sequence", ids, oof)
    oof_score = score(solution_frame(ids, y), probs_to_submission(ids, oof))
    write_json(Run(run).report("sequence"), {"oof_score": round(oof_score, 4),
                                     "fold_scores": [round(s, 4) for s in fold_scores], "config": asdict(cfg)})
    print(f"sequence: OOF score {oof_score:.4f}")
    return {"oof": str(path), "oof_score": round(oof_score, 4)}
