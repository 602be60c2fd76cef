"""`train --model ensemble`: weights per condition group fitted on the run's OOF predictions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..infer.ensemble import Ensemble, fit_ensemble
from ..metric import probs_to_submission, score, solution_frame
from .oof import list_oof, read_oof, write_oof
from .runner import RunConfig, register, run_folds

ENSEMBLE_DIR = "ensemble"


@register("ensemble")
def train_ensemble(data, run, rc: RunConfig, overrides: list[str]) -> dict:
    temperature = "temperature=false" not in overrides
    ids, y, fold = run_folds(data, run, rc)
    members = [m for m in list_oof(run) if m != "ensemble"]
    if not members:
        raise FileNotFoundError(f"{run}: no OOF predictions to ensemble; train some models first")
    oof = {m: read_oof(run, m, ids) for m in members}
    sol = solution_frame(ids, y)
    singles = {m: score(sol, probs_to_submission(ids, p)) for m, p in oof.items()}

    # Honest OOF: weights fitted on the other folds, applied to each held-out fold.
    nested = np.zeros((len(ids), 25, 3), np.float32)
    for k in range(rc.n_folds):
        tr, va = fold != k, fold == k
        ens_k, _ = fit_ensemble({m: p[tr] for m, p in oof.items()}, y[tr], temperature, folds=fold[tr])
        nested[va] = ens_k.apply({m: p[va] for m, p in oof.items()})
    ens, report = fit_ensemble(oof, y, temperature, folds=fold)
    in_sample = score(sol, probs_to_submission(ids, ens.apply(oof)))
    nested_score = score(sol, probs_to_submission(ids, nested))
    out = Path(run) / ENSEMBLE_DIR
    ens.save(out / "ensemble.json")
    write_oof(run, "ensemble", ids, nested)
    summary = {"members": members, "single_oof": {m: round(v, 4) for m, v in singles.items()},
               "ensemble_in_sample": round(in_sample, 4), "ensemble_nested_oof": round(nested_score, 4),
               "weights": ens.weights, "temperature": ens.temperature, "candidates": report}
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    print(f"ensemble: members {members}; best single {min(singles.values()):.4f}; "
          f"fitted on all OOF {in_sample:.4f}; nested (weights from the other folds) {nested_score:.4f}")
    return {"in_sample": round(in_sample, 4), "nested_oof": round(nested_score, 4)}


__all__ = ["Ensemble", "train_ensemble"]
