"""The ensemble's candidate sets compared in nested CV on a trained run's OOF predictions.

    python bench/ensemble_candidates.py --data data/synthetic --run runs/default \
        --sets only,blend,stack only,mix mix

For each set, every fold's predictions come from `fit_ensemble(candidates=set)` fitted (its choice per
group included) on the other folds, as `train --model ensemble` does; printed: the nested score, each
term, and the paired difference to the best single model with its 95% interval over 2,000 study
resamples (`scoring.resamples`, the same resamples for both). The table in train/ensemble.py's docstring came from this script.
"""
from __future__ import annotations

import argparse

import numpy as np

from lumbar.metric import score_from_terms, study_terms, term_scores
from lumbar.commands.scoring import interval, resamples
from lumbar.train.ensemble import fit_ensemble
from lumbar.train.oof import list_oof, read_oof
from lumbar.train.runner import RunConfig, run_folds


def nested(oof: dict[str, np.ndarray], y: np.ndarray, fold: np.ndarray, candidates: list[str]) -> np.ndarray:
    out = np.zeros_like(next(iter(oof.values())))
    for k in np.unique(fold):
        tr, va = fold != k, fold == k
        ens, _ = fit_ensemble({m: p[tr] for m, p in oof.items()}, y[tr], folds=fold[tr], candidates=candidates)
        out[va] = ens.apply({m: p[va] for m, p in oof.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--sets", nargs="+", default=["only,blend,stack", "only,mix", "mix"],
                    help="candidate sets, each comma-separated")
    args = ap.parse_args()
    ids, y, fold = run_folds(args.data, args.run, RunConfig())
    oof = {m: read_oof(args.run, m, ids).astype(np.float64) for m in list_oof(args.run) if m != "ensemble"}
    probs = dict(oof)
    names = {}
    for s in args.sets:
        names[s] = f"ensemble [{s}]"
        probs[names[s]] = nested(oof, y, fold, s.split(","))
    terms = {m: study_terms(y, p) for m, p in probs.items()}
    best = min(oof, key=lambda m: float(score_from_terms(terms[m])))
    counts = resamples(len(y))
    base = score_from_terms(terms[best], counts)
    print(f"run {args.run}: members {sorted(oof)}; best single {best}")
    print("| predictions | overall | spinal, foraminal, subarticular, any severe | minus best single (95%) |")
    print("|---|---|---|---|")
    for name, t in terms.items():
        per = term_scores(t)
        low, high = interval(score_from_terms(t, counts) - base)
        print(f"| {name} | {per.mean():.4f} | {', '.join(f'{v:.4f}' for v in per)} | "
              f"{per.mean() - float(score_from_terms(terms[best])):+.4f} [{low:+.4f}, {high:+.4f}] |", flush=True)

if __name__ == "__main__":
    main()
