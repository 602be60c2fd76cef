"""`python -m lumbar train --model NAME`: a registry of trainers, each writing OOF predictions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import config as cfgmod
from ..cv import ensure_folds
from ..data.catalog import read_labels
from ..metric import labels_to_array
from ..models.prior import fit_prior, save_prior
from .oof import write_oof

TRAINERS: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        TRAINERS[name] = fn
        return fn
    return deco


@dataclass
class RunConfig:
    n_folds: int = 5
    seed: int = 42


@dataclass
class PriorConfig:
    smoothing: float = 0.5


def run_folds(data: str | Path, run: str | Path, rc: RunConfig):
    """The run's labels and split: (study ids, labels [n, 25], fold per study)."""
    labels = read_labels(data)
    ids = labels["study_id"].astype(np.int64).to_numpy()
    y = labels_to_array(labels)
    folds = ensure_folds(run, ids, y, rc.n_folds, rc.seed)
    return ids, y, np.array([folds[int(s)] for s in ids])


@register("prior")
def train_prior(data: str | Path, run: str | Path, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(PriorConfig(), overrides)
    ids, y, fold = run_folds(data, run, rc)
    oof = np.zeros((len(ids), 25, 3), dtype=np.float32)
    out = Path(run) / "prior"
    for k in range(rc.n_folds):
        p = fit_prior(y[fold != k], cfg.smoothing)
        save_prior(p, out / f"fold{k}.json")
        oof[fold == k] = p
    save_prior(fit_prior(y, cfg.smoothing), out / "all.json")
    cfgmod.save(cfg, out / "config.json")
    path = write_oof(run, "prior", ids, oof)
    return {"oof": str(path)}


# `train --model all`: every stage, in the order the data flows.
ALL = ("prior", "slice_select", "crops", "superres", "multitask", "sequence", "ensemble")


def train(model: str, data: str | Path, run: str | Path, rc: RunConfig | None = None,
          overrides: list[str] | None = None) -> dict:
    load_trainers()
    if model == "all":
        if overrides:
            raise ValueError("key=value overrides need one --model; `all` trains each stage with its defaults")
        return {name: TRAINERS[name](data, run, rc or RunConfig(), []) for name in ALL}
    if model not in TRAINERS:
        raise ValueError(f"unknown model {model!r}; known: all, {', '.join(sorted(TRAINERS))}")
    return TRAINERS[model](data, run, rc or RunConfig(), overrides or [])


def load_trainers() -> dict[str, Callable]:
    """Every trainer (they register themselves on import; imported here, late, to keep imports acyclic)."""
    from . import ensemble_stage, preprocess_stage, sequence_stage, torch_stages  # noqa: F401
    return TRAINERS
