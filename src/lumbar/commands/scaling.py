"""How the slice selector's training time grows with the rows it learns from, measured, and projected to
the real training set with the measured exponent (never linearly).

`python -m lumbar scaling --data DIR` featurises a folder's training studies (the cache is reused),
then per series type and member times one fit at growing row counts. Beyond the rows the folder holds,
rows are drawn again with a small jitter (5% of each column's spread), so the larger sets are as hard as
distinct slices, not duplicates an SVM would collapse. The exponent b of t = a n^b is the least-squares
slope over every size (each timing the best of two); the projection is `train --model slice_select`'s work at 1,975 studies: one fit per fold
on (k-1)/k of the rows plus the final fit on all of them, per series type and member.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np

REAL_TRAIN = 1975


def training_matrix(data: str | Path, cache_dir: str | Path, workers: int = 2) -> tuple[dict, dict, int]:
    """(X per series type, y per series type, labelled studies) of a folder's training studies."""
    from ..data.cache import StudyCache
    from ..data.catalog import load_studies
    from ..preprocess.pipeline import cache_version, study_features, training_rows
    from ..train.selection import stack_rows
    from ..train.selector import warm_cache

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        studies = load_studies(data, "train")
    cache = StudyCache(cache_dir, cache_version())
    warm_cache(studies, cache, workers)
    rows, labelled = [], 0
    for st in studies:
        r = list(training_rows(st, study_features(st, cache, keep_pixels=False)))
        labelled += bool(r)
        rows += r
    X, Y = stack_rows(rows)
    return X, Y, labelled


def grown(X: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n rows: all of them (shuffled) up to their number, then redrawn with a 5% jitter per column."""
    order = rng.permutation(len(y))
    if n <= len(y):
        idx = order[:n]
        return X[idx], y[idx]
    extra = rng.integers(0, len(y), n - len(y))
    jitter = rng.normal(0, 1, (len(extra), X.shape[1])).astype(X.dtype) * (0.05 * X.std(0) + 1e-6)
    return np.concatenate([X[order], X[extra] + jitter]), np.concatenate([y[order], y[extra]])


def fit_seconds(stype: str, X: np.ndarray, y: np.ndarray, member: str, svm_rows: int, n_jobs: int) -> float:
    from ..preprocess.slice_select import SliceSelector

    t = time.perf_counter()
    SliceSelector(svm_rows=svm_rows, n_jobs=n_jobs).fit({stype: X}, {stype: y}, (member,))
    return time.perf_counter() - t


def measure(X: dict, Y: dict, sizes: tuple[int, ...], members: tuple[str, ...], svm_rows: int, n_jobs: int,
            seed: int = 0, repeats: int = 2) -> list[dict]:
    """One row per (series type, member, size): seconds of one fit, the best of `repeats` (the least
    disturbed by whatever else the machine runs)."""
    from ..progress import bar

    rng = np.random.default_rng(seed)
    out = []
    jobs = [(stype, n) for stype in X for n in sizes]
    for stype, n in bar(jobs, desc="selector scaling"):
        Xn, yn = grown(X[stype], Y[stype], n, rng)
        for m in members:
            out.append({"series_type": stype, "member": m, "rows": n,
                        "seconds": min(fit_seconds(stype, Xn, yn, m, svm_rows, n_jobs) for _ in range(repeats))})
    return out


def exponent(points: list[tuple[int, float]]) -> float:
    """b in t = a n^b: the least-squares slope of log t on log n over every size (two sizes alone are at
    the mercy of one noisy timing), never below 0."""
    x = np.log([n for n, _ in points])
    y = np.log([max(t, 1e-6) for _, t in points])
    return max(0.0, float(np.polyfit(x, y, 1)[0]))


def project(records: list[dict], rows_per_study: dict[str, float], n_folds: int = 5,
            studies: int = REAL_TRAIN) -> dict:
    """Per (series type, member): the measured exponent and the projected seconds of the whole stage's
    fits at `studies` studies; and their total."""
    out, total = {}, 0.0
    for stype in rows_per_study:
        for m in sorted({r["member"] for r in records if r["series_type"] == stype}):
            pts = [(r["rows"], r["seconds"]) for r in records if r["series_type"] == stype and r["member"] == m]
            b = exponent(pts)
            n_max = max(n for n, _ in pts)
            # anchored at the largest size: the mean of the fitted line there, not one timing
            t_max = float(np.exp(np.mean([np.log(max(t_, 1e-6)) - b * np.log(n) for n, t_ in pts]) + b * np.log(n_max)))
            full = rows_per_study[stype] * studies

            def t(n: float) -> float:
                return t_max * (n / n_max) ** b

            seconds = n_folds * t(full * (n_folds - 1) / n_folds) + t(full)
            out[f"{stype} {m}"] = {"exponent": round(b, 2), "rows": int(full), "seconds": seconds}
            total += seconds
    return {"members": out, "total_s": total}


def report(data: str | Path, cache_dir: str | Path, sizes=(2500, 5000, 10000, 20000), members=None,
           svm_rows: int | None = None, n_jobs: int = 0, workers: int = 2, n_folds: int = 5) -> tuple[dict, str]:
    """Measure and project; (the numbers, a markdown table)."""
    from ..preprocess.slice_select import MEMBERS, cpu_jobs
    from ..train.selector import SliceSelectConfig

    members = tuple(members or MEMBERS)
    svm_rows = SliceSelectConfig.svm_rows if svm_rows is None else svm_rows
    X, Y, labelled = training_matrix(data, cache_dir, workers)
    per_study = {stype: len(y) / max(labelled, 1) for stype, y in Y.items()}
    records = measure(X, Y, tuple(sizes), members, svm_rows, n_jobs)
    proj = project(records, per_study, n_folds)
    lines = [f"Slice selector fits on {data}: {labelled} labelled studies, rows per study "
             + ", ".join(f"{k} {v:.1f}" for k, v in per_study.items())
             + f"; svm_rows={svm_rows}, {cpu_jobs(n_jobs)} threads for the forest and XGBoost.", "",
             "| series type | member | " + " | ".join(f"{n} rows, s" for n in sizes)
             + f" | exponent | rows at {REAL_TRAIN} | projected stage, s |",
             "|---|---|" + "---|" * len(sizes) + "---|---|---|"]
    for key, p in proj["members"].items():
        stype, m = key.rsplit(" ", 1)
        secs = [r["seconds"] for r in records if r["series_type"] == stype and r["member"] == m]
        lines.append(f"| {stype} | {m} | " + " | ".join(f"{s:.2f}" for s in secs)
                     + f" | {p['exponent']:.2f} | {p['rows']} | {p['seconds']:.0f} |")
    lines.append("")
    lines.append(f"projected slice selector training at {REAL_TRAIN} studies ({n_folds} folds + the final fit): "
                 f"{proj['total_s'] / 3600:.2f} h on {cpu_jobs(n_jobs)} cores "
                 "(t = t(largest size) x (rows / largest size)^exponent, the line fitted through every size)")
    return {"records": records, "rows_per_study": per_study, "projection": proj, "labelled": labelled}, "\n".join(lines)
