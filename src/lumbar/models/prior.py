"""The prior baseline: per label column, the weighted-optimal constant prediction.

For a column with class frequencies f and metric weights w = (1, 2, 4), the constant p minimising the
weighted log loss is p_c proportional to w_c * f_c. It is also every other model's fallback.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import schema
from ..files import write_json


def fit_prior(y: np.ndarray, smoothing: float = 0.5) -> np.ndarray:
    """Labels [n, 25] (-1 missing) -> probabilities [25, 3] (float32, rows sum to 1)."""
    y = np.asarray(y)
    counts = np.stack([(y == c).sum(axis=0) for c in range(schema.N_CLASSES)], axis=1).astype(np.float64)
    freq = (counts + smoothing) / (counts + smoothing).sum(axis=1, keepdims=True)
    p = freq * np.asarray(schema.SEVERITY_WEIGHTS)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def save_prior(p: np.ndarray, path: str | Path) -> None:
    data = {"kind": "prior", "columns": list(schema.LABEL_COLUMNS), "probs": np.asarray(p).round(8).tolist()}
    write_json(path, data, indent=None)


def load_prior(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        p = np.asarray(data["probs"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a prior file ({e})") from None
    if data.get("columns") != list(schema.LABEL_COLUMNS) or p.shape != (schema.N_LABELS, schema.N_CLASSES):
        raise ValueError(f"{path}: prior has shape {p.shape} or columns not in schema order")
    return p / p.sum(axis=1, keepdims=True)
