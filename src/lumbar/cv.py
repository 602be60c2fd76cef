"""Study-level folds stratified on label severity; one split per run directory, shared by every model."""
from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path

import numpy as np
import pandas as pd

from .files import atomic_path
from .layout import Run





@dataclass
class RunConfig:
    """A run's split: how many study-level folds, and the seed that draws them."""
    n_folds: int = 5
    seed: int = 42

def severity_strata(y: np.ndarray) -> np.ndarray:
    """A stratum per study from its labels [n, 25] (-1 missing): any severe spinal, then the number of
    severe and moderate cells, bucketed so each stratum is populated."""
    y = np.asarray(y)
    severe = (y == 2).sum(axis=1)
    moderate = (y == 1).sum(axis=1)
    any_spinal = (y[:, :5] == 2).any(axis=1).astype(int)
    burden = np.digitize(severe * 2 + moderate, [1, 4, 9])
    return any_spinal * 4 + burden


def make_folds(study_ids, y: np.ndarray, n_folds: int = 5, seed: int = 42) -> dict[int, int]:
    """study_id -> fold. Deterministic for a seed; strata rarer than n_folds are pooled."""
    study_ids = np.asarray(study_ids, dtype=np.int64)
    if len(study_ids) < n_folds:
        raise ValueError(f"{len(study_ids)} studies cannot make {n_folds} folds")
    strata = severity_strata(y)
    counts = pd.Series(strata).value_counts()
    rare = counts[counts < n_folds].index
    strata = np.where(np.isin(strata, rare), -1, strata)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(study_ids), dtype=np.int64)
    offset = 0
    # Deal each stratum's shuffled studies round-robin, continuing where the last stratum stopped,
    # so fold sizes differ by at most one.
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)
    return dict(zip(study_ids.tolist(), folds.tolist()))


def write_folds(run_dir: str | Path, folds: dict[int, int]) -> Path:
    path = Run(run_dir).folds
    with atomic_path(path) as tmp:
        pd.DataFrame({"study_id": list(folds), "fold": list(folds.values())}).to_csv(tmp, index=False)
    return path


def read_folds(run_dir: str | Path) -> dict[int, int]:
    path = Run(run_dir).folds
    frame = pd.read_csv(path)
    return dict(zip(frame["study_id"].astype(int), frame["fold"].astype(int)))


def ensure_folds(run_dir: str | Path, study_ids, y: np.ndarray, n_folds: int = 5, seed: int = 42) -> dict[int, int]:
    """The run's split: read it if the run has one (every model of a run shares it), else make it.
    A split that does not cover the given studies is an error, not silently remade."""
    path = Run(run_dir).folds
    if path.exists():
        folds = read_folds(run_dir)
        missing = [s for s in study_ids if int(s) not in folds]
        if missing:
            raise ValueError(f"{path}: {len(missing)} studies of the data have no fold (e.g. {missing[0]}); "
                             "this run was split on other data; use a new run directory")
        k = len(set(folds.values()))
        if k != n_folds:  # else the folds past k would be trained on nothing, or never predicted
            raise ValueError(f"{path}: this run is split into {k} folds and {n_folds} were asked for (--folds, "
                             f"make train FOLDS=); every stage of a run shares its split: use a new run directory "
                             f"(RUN=...), or remove {path.parent} to train every stage again with {n_folds}")
        return folds
    folds = make_folds(study_ids, y, n_folds, seed)
    write_folds(run_dir, folds)
    return folds

