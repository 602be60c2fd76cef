"""`make demo`: the whole system on the synthetic folder, tiny configs, one line per stage.

Every stage is skipped when its output is already there (a second run reuses what is built; delete
the run folder to start over). Ends with the kernel built, run offline on the synthetic test studies,
and its submission scored next to the prior and the oracle (the synthetic folder has test labels).
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pandas as pd

from ..layout import Run, WeightsLayout

def _summary(stage: str, run: Path, result: dict) -> str:
    """A stage's headline numbers: the scalars of its report.json, else of what its trainer returned."""
    rep, done = Run(run).report(stage), Run(run).done(stage)
    r = json.loads(rep.read_text()) if rep.exists() else (result or {})
    if not r and done.exists():
        r = json.loads(done.read_text())
    return ", ".join(f"{k}={v}" for k, v in r.items() if isinstance(v, (int, float, str)) and k != "config")[:120]


def test_scores(data, submission: Path, weights) -> dict:
    """The submission's score on the synthetic test labels, with the prior's and the oracle's, and the
    share of their gap it closes with its bootstrap interval over the test studies."""
    from ..data.catalog import find_root
    from ..infer.submission import submission_frame
    from ..metric import labels_to_array, labels_to_solution, score, submission_to_probs
    from ..models.prior import load_prior
    from .scoring import gap_closed, read_oracle

    root = find_root(data)
    labels = pd.read_csv(root / "test_labels.csv")
    sol = labels_to_solution(labels)
    sub = pd.read_csv(submission)
    prior = submission_frame(list(sub["row_id"]), {}, load_prior(Path(weights) / WeightsLayout.PRIOR))
    oracle = read_oracle(root)
    oracle = oracle[oracle["row_id"].isin(sub["row_id"])]
    ids = labels["study_id"].tolist()
    share, low, high = gap_closed(labels_to_array(labels), *(submission_to_probs(f, ids) for f in (sub, prior, oracle)))
    return {"submission": score(sol, sub), "prior": score(sol, prior), "oracle": score(sol, oracle),
            "gap_closed": share, "gap_closed_low": low, "gap_closed_high": high, "test_studies": len(ids)}


def format_test_scores(s: dict) -> str:
    """test_scores' numbers as the demo and `predict --score` print them."""
    return (f"submission {s['submission']:.4f} | prior {s['prior']:.4f} | oracle {s['oracle']:.4f} "
            f"-> closes {100 * s['gap_closed']:.0f}% of the prior-oracle gap [{100 * s['gap_closed_low']:.0f}%, "
            f"{100 * s['gap_closed_high']:.0f}%] over {s['test_studies']} test studies")


def run_demo(data, run, weights, kernel, cache: str = "cache") -> dict:
    from .kaggle import kaggle_layout, offline_prefix, run_notebook
    from .scoring import format_table, local_score
    from ..train.export import export_weights
    from ..train.runner import RunConfig, stages, takes, train

    run, t0 = Path(run), time.time()
    for name in stages():
        t = time.time()
        if Run(run).done(name).exists():
            print(f"demo: {name:<12} reused ({Run(run).done(name)}) — {_summary(name, run, {})}", flush=True)
            continue
        overrides = [f"cache_dir={cache}"] if takes(name, "cache_dir") else []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train(name, data, run, RunConfig(), overrides)
        print(f"demo: {name:<12} trained in {time.time() - t:.0f}s — {_summary(name, run, result)}", flush=True)
    export_weights(run, data, weights)
    print(f"demo: weights exported to {weights}/ (manifest.json)")
    table = local_score(data, run)
    print(format_table(table))
    from .notebook import build

    nb = build(Path(weights), Path(kernel))
    print(f"demo: kernel built: {nb}")
    t = time.time()
    inp, working = kaggle_layout(data, weights, Run(run).stage("kaggle"))
    offline = bool(offline_prefix())
    res = run_notebook(nb, inp, working, offline=offline)
    if res.returncode != 0:
        raise RuntimeError(f"the kernel failed; see {working / 'executed.ipynb'}:\n{res.stderr[-2000:]}")
    s = test_scores(data, working / "submission.csv", weights)
    print(f"demo: kernel ran {'offline' if offline else 'with network (no unshare here)'} in {time.time() - t:.0f}s; "
          f"synthetic test studies: {format_test_scores(s)}")
    print(f"demo: done in {(time.time() - t0) / 60:.1f} min")
    return s
