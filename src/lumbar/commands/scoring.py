"""`make local-score`: every model's OOF score per condition group, next to the oracle's, with bootstrap
intervals over studies and paired differences against the best single model.

The intervals resample studies (the unit the test set is drawn in) with replacement; the paired
difference uses the same resample for both models, so it is much narrower than either interval: a
difference whose interval holds 0 is not a measured gain.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import schema
from ..data.catalog import find_root, read_labels
from ..metric import (labels_to_array, labels_to_solution, oracle_frame, score_from_terms, score_groups, study_terms,
                     submission_to_probs, term_scores)
from ..layout import Run
from ..train.oof import list_oof

COLUMNS = [*schema.GROUPS, "any_severe_spinal", "overall"]
INTERVAL = ["ci_low", "ci_high", "vs_best", "vs_best_low", "vs_best_high"]
NOT_SINGLE = {"ensemble", "oracle"}  # what the "best single model" is chosen without
N_BOOT = 2000


def resamples(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[n_boot, n]: how many times each of n studies is drawn in each bootstrap resample."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def with_overall(per_term: np.ndarray) -> np.ndarray:
    """[..., 4] term scores -> [..., 5]: the four terms and their mean, the overall score (COLUMNS order)."""
    return np.concatenate([per_term, per_term.mean(-1, keepdims=True)], -1)


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of bootstrap values."""
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return float(np.percentile(values, lo)), float(np.percentile(values, hi))


def bootstrap(probs: dict[str, np.ndarray], y: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
              level: float = 0.95) -> pd.DataFrame:
    """Per model: the score's bootstrap interval over studies and its paired difference (model minus the
    best single model) with that difference's interval, all from one set of resamples."""
    counts = resamples(len(y), n_boot, seed)
    terms = {m: study_terms(y, p) for m, p in probs.items()}
    columns = {m: with_overall(term_scores(t, counts)) for m, t in terms.items()}  # [boot, 5]
    point = {m: float(term_scores(t).mean()) for m, t in terms.items()}
    boots = {m: c[:, -1] for m, c in columns.items()}
    singles = [m for m in probs if m not in NOT_SINGLE]
    best = min(singles, key=point.get) if singles else None
    rows = {}
    for m, b in boots.items():
        row = dict(zip(("ci_low", "ci_high"), interval(b, level)))
        for j, col in enumerate(COLUMNS[:-1]):  # each condition group's term, and any severe spinal
            row[f"{col}_low"], row[f"{col}_high"] = interval(columns[m][:, j], level)
        if best is not None:
            low, high = interval(b - boots[best], level)
            row.update(vs_best=point[m] - point[best], vs_best_low=low, vs_best_high=high)
        rows[m] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.attrs["best_single"] = best
    return table


def paired_difference(y: np.ndarray, probs: np.ndarray, base: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """score(probs) - score(base) on the same studies, with its bootstrap interval (both scored on each
    resample: the pairing removes the studies' shared difficulty, which dominates either interval)."""
    counts = resamples(len(y), n_boot, seed)
    a, b = (score_from_terms(study_terms(y, q), counts) for q in (probs, base))
    point = float(score_from_terms(study_terms(y, probs))) - float(score_from_terms(study_terms(y, base)))
    return (point, *interval(a - b, level))


def gap_closed(y: np.ndarray, probs: np.ndarray, prior: np.ndarray, oracle: np.ndarray, n_boot: int = N_BOOT,
               seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """The share of the prior-oracle gap a prediction closes, (prior - it) / (prior - oracle), with its
    bootstrap interval over studies (all three scored on each resample): a few dozen test studies
    move it by tens of points."""
    counts = resamples(len(y), n_boot, seed)
    terms = [study_terms(y, q) for q in (probs, prior, oracle)]
    a, p, o = (score_from_terms(t, counts) for t in terms)
    a0, p0, o0 = (float(score_from_terms(t)) for t in terms)
    share = (p - a) / np.where(np.abs(p - o) > 1e-12, p - o, np.nan)
    low, high = interval(share[np.isfinite(share)], level)
    return (p0 - a0) / (p0 - o0), low, high


def read_oracle(root: Path) -> pd.DataFrame | None:
    """A synthetic folder's oracle as the metric's bound: oracle.csv holds each row's exact posterior,
    whose weighted optimum (metric.weighted_optimum) is what no prediction beats; None where the folder
    has none (real data)."""
    path = Path(root) / "oracle.csv"
    return oracle_frame(pd.read_csv(path)) if path.exists() else None


def test_accuracy(data: str | Path, frames: dict[str, pd.DataFrame], prior: pd.DataFrame, base: str = "multitask",
                  n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Submissions scored on a synthetic folder's test labels: per model its score and the share of the
    prior-oracle gap it closes, each with its interval over test studies, and (for every model but `base`)
    its paired difference to `base` where `base` is among the frames."""
    root = find_root(data)
    labels = pd.read_csv(root / "test_labels.csv")
    ids = labels["study_id"].astype(int).tolist()
    y = labels_to_array(labels)
    oracle = read_oracle(root)
    if oracle is None:
        raise FileNotFoundError(f"{root}: no oracle.csv (test accuracy needs a synthetic folder's oracle)")
    probs = {m: submission_to_probs(f, ids) for m, f in frames.items()}
    ref = {k: submission_to_probs(f, ids) for k, f in (("prior", prior), ("oracle", oracle))}
    counts = resamples(len(ids), n_boot, seed)
    out: dict = {"test_studies": len(ids), "models": {},
                 **{k: float(score_from_terms(study_terms(y, p))) for k, p in ref.items()}}
    for m, p in probs.items():
        t = study_terms(y, p)
        share = gap_closed(y, p, ref["prior"], ref["oracle"], n_boot, seed)
        rec = {"score": float(score_from_terms(t)), "interval": list(interval(score_from_terms(t, counts))),
               "gap_closed": share[0], "gap_closed_interval": list(share[1:])}
        if base in probs and m != base:
            d = paired_difference(y, p, probs[base], n_boot, seed)
            rec[f"minus_{base}"], rec[f"minus_{base}_interval"] = d[0], list(d[1:])
        out["models"][m] = rec
    return out


def local_score(data: str | Path, run: str | Path, n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per OOF model of the run (and 'oracle' where the folder has oracle.csv): the score per
    condition group, overall, its 95% interval, the paired difference to the best single model, and
    (with a prior and an oracle) the share of their gap each row closes, with its interval."""
    root = find_root(data)
    labels = read_labels(root)
    solution = labels_to_solution(labels)
    ids = labels["study_id"].astype(int).tolist()
    y = labels_to_array(labels)
    rows, probs = {}, {}
    frames = {m: pd.read_csv(Run(run).oof(m)) for m in list_oof(run)}
    oracle = read_oracle(root)
    if oracle is not None:
        frames["oracle"] = oracle
    if not frames:
        raise FileNotFoundError(f"{run}: no OOF predictions in {Run(run).oof_dir}; run `make train` first")
    for m, frame in frames.items():
        rows[m] = score_groups(solution, frame)
        probs[m] = submission_to_probs(frame, ids)
    table = pd.DataFrame.from_dict(rows, orient="index")[COLUMNS]
    boot = bootstrap(probs, y, n_boot)
    table = table.join(boot)
    if "prior" in probs and "oracle" in probs:
        shares = {m: gap_closed(y, p, probs["prior"], probs["oracle"], n_boot) for m, p in probs.items()
                  if m not in ("prior", "oracle")}
        table = table.join(pd.DataFrame.from_dict(shares, orient="index", columns=["gap", "gap_low", "gap_high"]))
    table.attrs["best_single"] = boot.attrs["best_single"]
    return table


def format_table(table: pd.DataFrame) -> str:
    """A markdown table, models as rows: each group's score and overall, each with its 95% interval, and
    the paired difference to the best single model with its interval."""
    best = table.attrs.get("best_single")
    groups = [c for c in COLUMNS if c != "overall"]
    head = ["model", *groups, "overall", "95% CI"]
    if "vs_best" in table.columns:
        head.append(f"minus {best} (95% CI)")
    if "gap" in table.columns:
        head.append("share of the prior–oracle gap (95% CI)")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for name, row in table.iterrows():
        cells = [f"{row[c]:.4f} [{row[c + '_low']:.3f}, {row[c + '_high']:.3f}]" if f"{c}_low" in table.columns
                 else f"{row[c]:.4f}" for c in groups] + [f"{row['overall']:.4f}"]
        if "ci_low" in table.columns:
            cells.append(f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]")
        if "vs_best" in table.columns:
            cells.append("—" if name == best else f"{row['vs_best']:+.4f} [{row['vs_best_low']:+.4f}, {row['vs_best_high']:+.4f}]")
        if "gap" in table.columns:
            cells.append("—" if name in ("prior", "oracle") else
                         f"{row['gap']:.1%} [{row['gap_low']:.1%}, {row['gap_high']:.1%}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
