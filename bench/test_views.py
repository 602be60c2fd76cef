"""The multitask model's test-time views measured on a finished run, without retraining.

    python bench/test_views.py --data data/synthetic --run runs/default --cache cache \
        --settings tta=false tta_shift=0 tta_shift=3 tta_shift=5

Each setting is a copy of the run (its multitask folder and what that model's training reads) where
`train --model multitask <setting>` resumes every finished fold (tta and tta_shift change only the
held-out prediction: train/folds.PREDICTION_ONLY) and predicts its held-out studies through that
setting's views. Printed: each setting's multitask OOF and its paired difference to the first setting,
95% interval over 2,000 study resamples (the same resamples for all). A run trained before
PREDICTION_ONLY existed keyed its checkpoints with `tta` in the config: --legacy-key resumes those.
"""
from __future__ import annotations

import argparse
import shutil
import warnings
from pathlib import Path

import numpy as np

from lumbar.metric import score_from_terms, study_terms
from lumbar.commands.scoring import interval, resamples
from lumbar.train.oof import read_oof
from lumbar.train.runner import RunConfig, run_folds, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--cache", default="cache")
    ap.add_argument("--work", default=None, help="where the copies go (default: <run>_views)")
    ap.add_argument("--settings", nargs="+", default=["tta=false", "tta_shift=0", "tta_shift=3"])
    ap.add_argument("--legacy-key", action="store_true")
    args = ap.parse_args()
    if args.legacy_key:
        import lumbar.train.folds as folds
        folds.PREDICTION_ONLY = ("tta_shift",)
    run, work = Path(args.run), Path(args.work or f"{args.run}_views")
    ids, y, _ = run_folds(args.data, run, RunConfig())
    oof = {}
    for setting in args.settings:
        dst = work / setting.replace("=", "_")
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(run, dst, ignore=shutil.ignore_patterns("sequence", "ensemble", "kaggle"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = train("multitask", args.data, dst, RunConfig(), [f"cache_dir={args.cache}", setting])
        oof[setting] = read_oof(dst, "multitask", ids)
        print(f"{setting}: multitask OOF {res['oof_score']:.4f}", flush=True)
    counts = resamples(len(y))
    terms = {s: study_terms(y, p) for s, p in oof.items()}
    first = args.settings[0]
    base = score_from_terms(terms[first], counts)
    print(f"\n| multitask, held out through | OOF | minus {first} (95%) |\n|---|---|---|")
    for s, t in terms.items():
        v = float(score_from_terms(t))
        lo, hi = interval(score_from_terms(t, counts) - base)
        print(f"| {s} | {v:.4f} | {v - float(score_from_terms(terms[first])):+.4f} [{lo:+.4f}, {hi:+.4f}] |")


if __name__ == "__main__":
    main()
