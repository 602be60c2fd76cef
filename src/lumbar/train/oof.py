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
    sums = probs.sum(axis=-1)
    if (probs < 0).any() or (sums <= 0).any():  # normalising would write NaN (0/0) or nonsense
        bad = np.argwhere(sums <= 0)[:3].tolist() or np.argwhere((probs < 0).any(-1))[:3].tolist()
        raise ValueError(f"{model}: OOF rows that are not probabilities (all zero or negative) at (study index, "
                         f"column) {bad}: a study was never predicted")
    probs = probs / sums[..., None]
    path = Run(run_dir).oof(model)
    with atomic_path(path) as tmp:
        probs_to_submission(list(study_ids), probs).to_csv(tmp, index=False, float_format="%.8g")
    return path


def read_oof(run_dir: str | Path, model: str, study_ids) -> np.ndarray:
    path = Run(run_dir).oof(model)
    return submission_to_probs(pd.read_csv(path), list(study_ids))


def list_oof(run_dir: str | Path) -> list[str]:
    return sorted(p.stem for p in Run(run_dir).oof_dir.glob("*.csv"))
