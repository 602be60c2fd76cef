"""submission.csv: the row ids it must hold, and writing it atomically (a reader never sees half a file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import schema
from ..files import atomic_path


def required_row_ids(sample: pd.DataFrame | None, study_ids: list[int]) -> list[str]:
    """Every row id of sample_submission.csv (what Kaggle scores), then any test study's rows it lacks."""
    ids = [str(r) for r in sample["row_id"]] if sample is not None else []
    seen = set(ids)
    ids += [r for r in schema.row_ids(study_ids) if r not in seen]
    return ids


def submission_frame(row_ids: list[str], probs: dict[int, np.ndarray], prior: np.ndarray) -> pd.DataFrame:
    """One row per required id: the study's probabilities where predicted, else the prior; rows
    renormalised in float64 so each sums to 1 whatever the models gave."""
    col_index = {c: j for j, c in enumerate(schema.LABEL_COLUMNS)}
    out = np.empty((len(row_ids), schema.N_CLASSES), np.float64)
    for i, rid in enumerate(row_ids):
        study, cond, level = schema.parse_row_id(rid)
        j = col_index[f"{cond}_{level}"]
        p = probs.get(study)
        row = np.asarray(p[j] if p is not None else prior[j], np.float64)
        if not np.isfinite(row).all() or row.sum() <= 0:
            row = np.asarray(prior[j], np.float64)
        row = np.clip(row, 0.0, None)
        out[i] = row / row.sum()
    frame = pd.DataFrame(out, columns=list(schema.PROB_COLUMNS))
    frame.insert(0, "row_id", row_ids)
    return frame


def write_atomic(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.8f")
