"""The competition metric and the frames it reads.

`score` follows the steps of Kaggle's scorer for this competition: a sample-weighted log loss per
condition group (spinal, foraminal, subarticular), plus a binary log loss on "any severe spinal
canal stenosis" per study, averaged. Written from those steps with numpy; tests compare it with the
scorer's code spelled out with sklearn.metrics.log_loss (scikit-learn 1.2.2, as on Kaggle).

Two details decide the score of a submission whose rows do not sum to 1, and both follow the scorer:
the group losses clip each probability to [eps, 1 - eps] and then renormalise the row (what
sklearn's log_loss does), while the any-severe-spinal term takes the submission's raw severe column
(its maximum over the study's five levels), clipped but never renormalised.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import schema

EPS = float(np.finfo(np.float64).eps)  # sklearn log_loss's eps='auto' for float64 input


class MetricError(ValueError):
    """The submission or solution cannot be scored (what Kaggle reports as a participant error)."""


def _group_losses(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str):
    cols = list(schema.PROB_COLUMNS)
    for frame, name in ((solution, "solution"), (submission, "submission")):
        missing = [c for c in [row_id_column_name, *cols] if c not in frame.columns]
        if missing:
            raise MetricError(f"{name} lacks columns {missing}")
    if "sample_weight" not in solution.columns:
        raise MetricError("solution lacks column 'sample_weight'")
    try:
        pred = submission[cols].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricError(f"all submission values must be numeric ({e})") from None
    if not np.isfinite(pred).all():
        raise MetricError("all submission values must be finite")
    if (pred < 0).any():
        raise MetricError("submission values must be non-negative")
    if solution[row_id_column_name].duplicated().any():
        raise MetricError("solution has duplicated row ids")
    if submission[row_id_column_name].duplicated().any():
        dup = submission.loc[submission[row_id_column_name].duplicated(), row_id_column_name]
        raise MetricError(f"submission has duplicated row ids, e.g. {dup.iloc[0]!r}")

    sub = submission.set_index(row_id_column_name)
    sol_ids = solution[row_id_column_name]
    missing = ~sol_ids.isin(sub.index)
    if missing.any():
        raise MetricError(
            f"submission lacks {int(missing.sum())} row ids of the solution, e.g. {sol_ids[missing].iloc[0]!r}")
    pred = sub.loc[sol_ids, cols].to_numpy(dtype=np.float64)
    true = solution[cols].to_numpy(dtype=np.float64)
    weight = solution["sample_weight"].to_numpy(dtype=np.float64)

    raw_severe = pred[:, 2].copy()  # the any-severe term reads the column as submitted
    # Inside each group's log loss, as sklearn's log_loss does: clip, then renormalise each row.
    pred = np.clip(pred, EPS, 1 - EPS)
    pred = pred / pred.sum(axis=1, keepdims=True)

    parsed = [schema.parse_row_id(r) for r in sol_ids]
    study = np.array([p[0] for p in parsed])
    group = np.array([schema.group_of(p[1]) for p in parsed])

    losses = {}
    for g in schema.GROUPS:
        m = group == g
        if not m.any():
            raise MetricError(f"solution has no rows of the {g} group")
        row_loss = -(true[m] * np.log(pred[m])).sum(axis=1)
        losses[g] = float((row_loss * weight[m]).sum() / weight[m].sum())

    # Any severe spinal: per study, label = any severe level, weight = max weight,
    # prediction = max of the submitted severe probabilities (not renormalised), clipped.
    m = group == "spinal"
    frame = pd.DataFrame({"study": study[m], "y": true[m, 2], "w": weight[m], "p": raw_severe[m]})
    agg = frame.groupby("study").agg(y=("y", "max"), w=("w", "max"), p=("p", "max"))
    p = np.clip(agg["p"].to_numpy(), EPS, 1 - EPS)
    y = agg["y"].to_numpy()
    w = agg["w"].to_numpy()
    losses["any_severe_spinal"] = float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())
    return losses


def score(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str = "row_id",
          any_severe_scalar: float = 1.0) -> float:
    """Kaggle's signature. Rows of the submission not in the solution are ignored."""
    losses = _group_losses(solution, submission, row_id_column_name)
    values = [losses[g] for g in schema.GROUPS] + [losses["any_severe_spinal"]]
    return float(np.average(values, weights=[1.0, 1.0, 1.0, any_severe_scalar]))


def score_groups(solution: pd.DataFrame, submission: pd.DataFrame,
                 row_id_column_name: str = "row_id", any_severe_scalar: float = 1.0) -> dict[str, float]:
    """Per-group losses and the overall score, for reports."""
    losses = _group_losses(solution, submission, row_id_column_name)
    values = [losses[g] for g in schema.GROUPS] + [losses["any_severe_spinal"]]
    losses["overall"] = float(np.average(values, weights=[1.0, 1.0, 1.0, any_severe_scalar]))
    return losses


def labels_to_array(labels: pd.DataFrame) -> np.ndarray:
    """train.csv-format frame -> int array [n, 25], -1 where a cell is missing."""
    missing = [c for c in schema.LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise MetricError(f"labels lack columns {missing}")
    out = np.full((len(labels), schema.N_LABELS), -1, dtype=np.int64)
    for j, col in enumerate(schema.LABEL_COLUMNS):
        values = labels[col]
        known = values.notna().to_numpy()
        out[known, j] = [schema.severity_index(v) for v in values[known]]
    return out


def solution_frame(study_ids, y: np.ndarray) -> pd.DataFrame:
    """Integer labels [n, 25] (-1 missing) -> solution frame (one-hot + sample_weight), missing cells
    dropped as the competition's solution file has them dropped."""
    y = np.asarray(y)
    ids = np.array(schema.row_ids(study_ids))
    flat = y.reshape(-1)
    keep = flat >= 0
    onehot = np.eye(schema.N_CLASSES)[flat[keep]]
    frame = pd.DataFrame(onehot, columns=list(schema.PROB_COLUMNS))
    frame.insert(0, "row_id", ids[keep])
    frame["sample_weight"] = np.asarray(schema.SEVERITY_WEIGHTS)[flat[keep]]
    return frame


def labels_to_solution(labels: pd.DataFrame) -> pd.DataFrame:
    """train.csv / test_labels.csv frame -> solution frame."""
    return solution_frame(labels["study_id"].tolist(), labels_to_array(labels))


def probs_to_submission(study_ids, probs: np.ndarray) -> pd.DataFrame:
    """Probabilities [n, 25, 3] -> submission frame (row_id, normal_mild, moderate, severe)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(study_ids), schema.N_LABELS, schema.N_CLASSES):
        raise ValueError(f"probabilities of shape {probs.shape}, expected ({len(study_ids)}, 25, 3)")
    frame = pd.DataFrame(probs.reshape(-1, 3), columns=list(schema.PROB_COLUMNS))
    frame.insert(0, "row_id", schema.row_ids(study_ids))
    return frame


def submission_to_probs(frame: pd.DataFrame, study_ids) -> np.ndarray:
    """Submission frame -> probabilities [n, 25, 3] for the given studies (all rows must exist)."""
    ids = schema.row_ids(study_ids)
    indexed = frame.set_index("row_id")
    missing = [r for r in ids if r not in indexed.index]
    if missing:
        raise MetricError(f"{len(missing)} row ids missing from predictions, e.g. {missing[0]!r}")
    return indexed.loc[ids, list(schema.PROB_COLUMNS)].to_numpy(dtype=np.float32).reshape(-1, 25, 3)


def weighted_optimum(posterior: np.ndarray) -> np.ndarray:
    """The prediction that minimises the metric's expected loss given each row's true posterior p
    (probabilities [..., 3]): q proportional to p * SEVERITY_WEIGHTS. A weight that follows the true
    class makes the expected row loss sum_k w_k p_k (-log q_k), minimised at q_k ~ w_k p_k, not at p:
    scoring the posterior itself (what the synthetic folder's oracle.csv holds) leaves ~0.03-0.04 on
    the table, and a model trained on the weighted loss beats it (issue 42: 104% of the gap). The
    any-severe term reads the spinal rows' severe column too; this is its optimum within ~0.001."""
    q = np.asarray(posterior, dtype=np.float64) * np.asarray(schema.SEVERITY_WEIGHTS)
    return q / q.sum(-1, keepdims=True)


def oracle_frame(posterior: pd.DataFrame) -> pd.DataFrame:
    """oracle.csv (the posterior per row) -> the metric's bound: weighted_optimum of every row."""
    out = posterior.copy()
    cols = list(schema.PROB_COLUMNS)
    out[cols] = weighted_optimum(posterior[cols].to_numpy(dtype=np.float64))
    return out


TERMS = (*schema.GROUPS, "any_severe_spinal")


def _weighted_ll_terms(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per study, sum(weight * log loss) and sum(weight) over the columns of p [n, k, 3], y [n, k]
    (labels -1 ignored); rows clipped and renormalised as `score` does."""
    m = y >= 0
    yc = np.where(m, y, 0)
    w = np.asarray(schema.SEVERITY_WEIGHTS)[yc] * m
    q = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    q = q / q.sum(-1, keepdims=True)
    ll = -np.log(np.take_along_axis(q, yc[..., None], -1)[..., 0])
    return (w * ll).sum(1), w.sum(1)


def _any_severe_terms(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per study, the any-severe-spinal term's weight * loss and weight from the spinal columns
    p [n, 5, 3], y [n, 5]: the raw severe column, clipped, as `score` reads it."""
    ms = y >= 0
    ws = np.where(ms, np.asarray(schema.SEVERITY_WEIGHTS)[np.where(ms, y, 0)], 0.0)
    label = ((y == 2) & ms).any(1).astype(float)
    weight = ws.max(1)
    pred = np.clip(np.where(ms, np.asarray(p, np.float64)[..., 2], -np.inf).max(1), EPS, 1 - EPS)
    any_ll = -(label * np.log(pred) + (1 - label) * np.log(1 - pred))
    return np.where(ms.any(1), weight * any_ll, 0.0), np.where(ms.any(1), weight, 0.0)


def group_loss(group: str, p: np.ndarray, y: np.ndarray) -> float:
    """The metric's terms of one condition group from its columns (p [n, k, 3], y [n, k]): its weighted
    log loss, plus the any-severe-spinal term for the spinal group. The four terms' mean is `score`."""
    num, den = _weighted_ll_terms(p, y)
    loss = float(num.sum() / den.sum())
    if group == "spinal":
        num, den = _any_severe_terms(p, y)
        loss += float(num.sum() / den.sum())
    return loss


def study_terms(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per study, the numerator and denominator of each of the metric's four weighted means:
    [n, 4, 2] in TERMS order. Every term is sum(weight * loss) / sum(weight) over rows (or, for any
    severe spinal, over studies), so a score over any multiset of studies (a bootstrap resample) is
    a ratio of sums of these: `score_from_terms`. Same clipping as `score`."""
    y, p = np.asarray(y), np.asarray(probs, np.float64)
    out = np.zeros((len(y), len(TERMS), 2))
    for t, g in enumerate(schema.GROUPS):
        cols = schema.GROUP_COLUMNS[g]
        out[:, t, 0], out[:, t, 1] = _weighted_ll_terms(p[:, cols], y[:, cols])
    sp = schema.GROUP_COLUMNS["spinal"]
    out[:, 3, 0], out[:, 3, 1] = _any_severe_terms(p[:, sp], y[:, sp])
    return out


def term_scores(terms: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Each of the four terms (TERMS order) from study terms [n, 4, 2], each study counted counts[..., n]
    times (all once if None): shape counts.shape[:-1] + (4,)."""
    counts = np.ones(len(terms)) if counts is None else np.asarray(counts, np.float64)
    sums = np.tensordot(counts, terms, axes=([-1], [0]))  # [..., 4, 2]
    return sums[..., 0] / sums[..., 1]


def score_from_terms(terms: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Overall scores (the four terms' mean) from study terms [n, 4, 2]: shape counts.shape[:-1]."""
    return term_scores(terms, counts).mean(-1)
