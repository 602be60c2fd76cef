"""`make local-score`: every model's OOF score per condition group, next to the oracle's."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import schema
from .data.catalog import find_root, read_labels
from .metric import labels_to_solution, score_groups
from .train.oof import OOF_DIR, list_oof

COLUMNS = [*schema.GROUPS, "any_severe_spinal", "overall"]


def local_score(data: str | Path, run: str | Path) -> pd.DataFrame:
    """One row per OOF model of the run (and 'oracle' where the folder has oracle.csv)."""
    root = find_root(data)
    labels = read_labels(root)
    solution = labels_to_solution(labels)
    rows = {}
    for model in list_oof(run):
        sub = pd.read_csv(Path(run) / OOF_DIR / f"{model}.csv")
        rows[model] = score_groups(solution, sub)
    oracle = root / "oracle.csv"
    if oracle.exists():
        rows["oracle"] = score_groups(solution, pd.read_csv(oracle))
    if not rows:
        raise FileNotFoundError(f"{run}: no OOF predictions in {Path(run) / OOF_DIR}; run `make train` first")
    return pd.DataFrame.from_dict(rows, orient="index")[COLUMNS]


def format_table(table: pd.DataFrame) -> str:
    """A markdown table, models as rows."""
    lines = ["| model | " + " | ".join(table.columns) + " |", "|---|" + "---|" * len(table.columns)]
    for name, row in table.iterrows():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    return "\n".join(lines)
