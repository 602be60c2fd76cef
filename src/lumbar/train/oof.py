"""Out-of-fold predictions of a run: one submission-format CSV per model, written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_path
from ..layout import Run
from ..metric import probs_to_submission, submission_to_probs



def write_oof(run_dir: str | Path, model: str, study_ids, probs: np.ndarray) -> Path:
    probs = np.asarray(probs, dtype=np.float64)
    if not np.isfinite(probs).all():
        raise ValueError(f"{model}: OOF probabilities contain NaN or inf")
    probs = probs / probs.sum(axis=-1, keepdims=True)
    path = Run(run_dir).oof(model)
    with atomic_path(path) as tmp:
        probs_to_submission(list(study_ids), probs).to_csv(tmp, index=False, float_format="%.8g")
    return path


def read_oof(run_dir: str | Path, model: str, study_ids) -> np.ndarray:
    path = Run(run_dir).oof(model)
    return submission_to_probs(pd.read_csv(path), list(study_ids))


def list_oof(run_dir: str | Path) -> list[str]:
    return sorted(p.stem for p in Run(run_dir).oof_dir.glob("*.csv"))
