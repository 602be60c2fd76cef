"""`python -m lumbar train --model NAME`: a registry of trainers, each writing OOF predictions."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import config as cfgmod
from ..cv import RunConfig, ensure_folds  # noqa: F401  (RunConfig: the trainers' import point)
from ..files import write_json
from ..layout import Run
from ..data.catalog import read_labels
from ..metric import labels_to_array
from ..models.prior import fit_prior, save_prior
from .oof import write_oof

TRAINERS: dict[str, Callable] = {}
CONFIGS: dict[str, type] = {}  # stage -> its config dataclass (the `key=value` overrides it takes)
_ORDER: dict[str, float] = {}


def register(name: str, order: float = 50.0, config: type | None = None):
    """Registers a trainer `fn(data, run, rc, overrides) -> dict` under a stage name; `order` places it
    in `train --model all` (the data's flow: stage one 10-20, models 30-60, ensemble 90); `config` is
    the dataclass its overrides apply to."""
    def deco(fn):
        TRAINERS[name], _ORDER[name] = fn, order
        if config is not None:
            CONFIGS[name] = config
        return fn
    return deco


def takes(stage: str, key: str) -> bool:
    """Whether a stage's config has `key` (the demo passes cache_dir=... only where it does)."""
    import dataclasses

    cls = CONFIGS.get(stage)
    return cls is not None and key in {f.name for f in dataclasses.fields(cls)}


def stages() -> list[str]:
    """Every registered stage in the order the data flows (what `train --model all` runs)."""
    return sorted(TRAINERS, key=lambda n: (_ORDER[n], n))


@dataclass
class PriorConfig:
    smoothing: float = 0.5  # pseudo-count added to every class of a column before its frequencies are taken


def run_folds(data: str | Path, run: str | Path, rc: RunConfig):
    """The run's labels and split: (study ids, labels [n, 25], fold per study)."""
    labels = read_labels(data)
    ids = labels["study_id"].astype(np.int64).to_numpy()
    y = labels_to_array(labels)
    folds = ensure_folds(run, ids, y, rc.n_folds, rc.seed)
    return ids, y, np.array([folds[int(s)] for s in ids])


@register("prior", order=0, config=PriorConfig)
def train_prior(data: str | Path, run: str | Path, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(PriorConfig(), overrides)
    ids, y, fold = run_folds(data, run, rc)
    oof = np.zeros((len(ids), 25, 3), dtype=np.float32)
    for k in range(rc.n_folds):
        p = fit_prior(y[fold != k], cfg.smoothing)
        save_prior(p, Run(run).prior(k))
        oof[fold == k] = p
    save_prior(fit_prior(y, cfg.smoothing), Run(run).prior())
    cfgmod.save(cfg, Run(run).config("prior"))
    path = write_oof(run, "prior", ids, oof)
    return {"oof": str(path)}


def request_of(data: str | Path, rc: RunConfig, overrides: list[str]) -> dict:
    """What a stage was asked to train on: the data folder, the split and the overrides (done.json keeps it)."""
    return {"data": str(Path(data).resolve()), "n_folds": rc.n_folds, "seed": rc.seed, "overrides": list(overrides)}


def finished(model: str, data: str | Path, run: str | Path, rc: RunConfig, overrides: list[str]) -> Path | None:
    """The stage's done.json where its earlier result still stands: written for the same request, after
    every earlier stage's (a stage trained again invalidates what follows it). None: train it.
    `make train` run again thus resumes where it stopped instead of training finished stages anew."""
    done = Run(run).done(model)
    if not done.exists():
        return None
    try:
        if json.loads(done.read_text()).get("request") != request_of(data, rc, overrides):
            return None
    except (OSError, ValueError):
        return None
    order = stages()
    before = order[:order.index(model)] if model in order else []
    newer = [Run(run).done(m) for m in before if Run(run).done(m).exists()
             and Run(run).done(m).stat().st_mtime > done.stat().st_mtime]
    return None if newer else done


def load_train(data: str | Path, run: str | Path, rc: RunConfig, cache_dir: str):
    """The run's training studies (each with its fold) and the per-study cache the stages share."""
    import warnings

    from ..data.cache import StudyCache
    from ..data.catalog import load_studies
    from ..preprocess.pipeline import cache_version

    ids, y, fold = run_folds(data, run, rc)
    folds = dict(zip(ids.tolist(), fold.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        studies = load_studies(data, "train", folds)
    return studies, StudyCache(cache_dir, cache_version())


def train(model: str, data: str | Path, run: str | Path, rc: RunConfig | None = None,
          overrides: list[str] | None = None) -> dict:
    if model == "all":
        if overrides:
            raise ValueError("key=value overrides need one --model; `all` trains each stage with its defaults")
        return {name: train(name, data, run, rc, []) for name in stages()}
    if model not in TRAINERS:
        raise ValueError(f"unknown model {model!r}; known: all, {', '.join(stages())}")
    rc, overrides = rc or RunConfig(), overrides or []
    result = TRAINERS[model](data, run, rc, overrides)
    if result:  # ranks other than the main one of a distributed run return nothing
        write_json(Run(run).done(model), {**result, "request": request_of(data, rc, overrides)})
    return result


def load_trainers() -> dict[str, Callable]:
    """Every trainer (the built-in ones register when `lumbar.train` is imported: its __init__)."""
    return TRAINERS
