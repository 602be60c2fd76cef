"""A recipe switch measured against a trained size of the learning curve, paired on the same test studies.

The base is one size's folder of `lumbar curve` (its data view, run, submissions). The variant copies the
run, retrains the stages the switch touches with the switch on (plus the ensemble, whose inputs moved),
exports, predicts the same test studies, and scores the difference to the base per model and for the
ensemble, with paired bootstrap intervals (`scoring.paired_difference`):

    python bench/recipe.py --base runs/curve/n00200 --test data/rtest100 --name oof_floor_0.05 \\
        --set multitask:oof_floor=0.05 --retrain multitask ensemble

`--against FOLDER --score-only` scores a trained variant against another one instead (the same switch at
another seed: `--set multitask:seed=1` on both), into `<name>_vs_<folder>.md`.

Results: `<out>/<name>.md` (negative differences are better).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.commands.curve import stage_overrides
from lumbar.files import write_text
from lumbar.infer.engine import predict
from lumbar.infer.settings import PredictConfig
from lumbar.metric import labels_to_array, probs_to_submission, score_groups, solution_frame, submission_to_probs
from lumbar.commands.scoring import paired_difference
from lumbar.train.export import export_weights
from lumbar.train.runner import RunConfig, takes, train


def reapply(base: Path, var: Path, ids: list[int]) -> None:
    """var/submission.csv: the variant's ensemble over the base's per-model test predictions and prior."""
    from lumbar.infer.ensemble import Ensemble
    from lumbar.layout import Run, WeightsLayout
    from lumbar.metric import probs_to_submission
    from lumbar.models.prior import load_prior

    ens = Ensemble.load(Run(var / "run").ensemble)
    prior = load_prior(base / "weights" / WeightsLayout.PRIOR)
    probs = {q.stem: submission_to_probs(pd.read_csv(q), ids) for q in (base / "per_model").glob("*.csv")}
    probs["prior"] = np.broadcast_to(prior, (len(ids), 25, 3))
    shutil.copytree(base / "per_model", var / "per_model", dirs_exist_ok=True)
    probs_to_submission(ids, ens.apply_available(probs)).to_csv(var / "submission.csv", index=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="a size folder of `lumbar curve` (runs/curve/n00200)")
    p.add_argument("--test", required=True, help="the folder whose test studies the base predicted")
    p.add_argument("--name", required=True, help="the variant's name (its folder under --work)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE", help="the switch (repeatable)")
    p.add_argument("--retrain", nargs="+", required=True, help="stages to retrain, in order (the ensemble last)")
    p.add_argument("--reapply", action="store_true",
                   help="only the ensemble changed: apply it to the base's per-model test predictions instead "
                        "of predicting again (what the engine's combine does, in seconds)")
    p.add_argument("--against", default=None,
                   help="score against this folder (another variant: the same switch at another seed) instead of --base")
    p.add_argument("--score-only", action="store_true", help="the variant is trained and predicted: only score it")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="runs/curve/cache")
    p.add_argument("--work", default="runs/recipe")
    p.add_argument("--out", default="bench/results/recipe")
    a = p.parse_args(argv)
    base, var = Path(a.base), Path(a.work) / a.name
    overrides = stage_overrides(a.set)
    if not a.score_only and not (var / "run").exists():
        shutil.copytree(base / "run", var / "run")
    data = base / "data"
    t0 = time.time()
    for stage in ([] if a.score_only else a.retrain):
        extra = ([f"cache_dir={a.cache}"] if takes(stage, "cache_dir") else []) + overrides.get(stage, [])
        t = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train(stage, data, var / "run", RunConfig(n_folds=a.folds, seed=a.seed), extra)
        print(f"recipe {a.name}: {stage} retrained in {time.time() - t:.0f}s", flush=True)
    labels = pd.read_csv(Path(a.test) / "test_labels.csv")
    ids, y = labels["study_id"].tolist(), labels_to_array(labels)
    if a.score_only:
        pass
    elif a.reapply:
        if set(a.retrain) != {"ensemble"}:
            sys.exit("recipe: --reapply is for a change to the ensemble alone (--retrain ensemble)")
        reapply(base, var, ids)
    else:
        export_weights(var / "run", data, var / "weights")
        predict(data, var / "weights", var / "submission.csv",
                PredictConfig(workers=1, cache_dir=a.cache, per_model_dir=str(var / "per_model")))
    ref, rows = Path(a.against) if a.against else base, []
    solution = solution_frame(ids, y)
    for model in ["ensemble"] + sorted(q.stem for q in (var / "per_model").glob("*.csv")):
        rel = "submission.csv" if model == "ensemble" else f"per_model/{model}.csv"
        if not (ref / rel).exists():
            continue
        new, old = (submission_to_probs(pd.read_csv(d / rel), ids) for d in (var, ref))
        diff, lo, hi = paired_difference(y, new, old)
        # the metric's groups of each (where a difference comes from: spinal, foraminal, subarticular)
        groups = {k: score_groups(solution, probs_to_submission(ids, q)) for k, q in (("reference", old), ("variant", new))}
        rows.append({"model": model, "difference": diff, "low": lo, "high": hi, "groups": groups})
    head = (f"{a.name}: {' '.join(a.set) or '(no switch)'}; retrained {', '.join(a.retrain)} on {base}"
            f"{f', scored against {ref}' if a.against else ''} "
            f"({len(ids)} test studies of {a.test}; {time.time() - t0:.0f}s)")
    table = "\n".join(f"| {a.name} | {r['model']} | {r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] |"
                      for r in rows)
    names = list(rows[0]["groups"]["reference"]) if rows else []
    by_group = "\n".join(f"| {r['model']} | {who} | " + " | ".join(f"{r['groups'][who][g]:.4f}" for g in names) + " |"
                          for r in rows for who in ("reference", "variant"))
    print(head + "\n" + table + "\n" + by_group)
    out = Path(a.out)
    stem = a.name + (f"_vs_{ref.name}" if a.against else "")
    write_text(out / f"{stem}.md", head + "\n\n| variant | model | minus base (95%) |\n|---|---|---|\n" + table + "\n\n"
               + "| model | | " + " | ".join(names) + " |\n|" + "---|" * (len(names) + 2) + "\n" + by_group + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"head": head, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
