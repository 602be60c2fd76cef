"""The posterior in a synthetic folder's oracle.csv against the metric's bound (its weighted optimum), per
metric term: `python bench/oracle_bound.py FOLDER [--test]` (--test: the folder's test studies)."""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from lumbar import schema
from lumbar.commands.scoring import with_overall
from lumbar.data.catalog import find_root, read_labels
from lumbar.metric import labels_to_array, study_terms, submission_to_probs, term_scores, TERMS, weighted_optimum


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--test", action="store_true", help="score the test studies (test_labels.csv)")
    a = ap.parse_args(argv)
    root = find_root(a.folder)
    labels = pd.read_csv(root / "test_labels.csv") if a.test else read_labels(root)
    ids = labels["study_id"].astype(int).tolist()
    y, post = labels_to_array(labels), submission_to_probs(pd.read_csv(root / "oracle.csv"), ids)
    w = np.asarray(schema.SEVERITY_WEIGHTS)
    rows = {"posterior (oracle.csv)": post, "the bound: posterior x (1, 2, 4)": weighted_optimum(post)}
    for power in (0.75, 1.25):
        q = post * w ** power
        rows[f"posterior x (1, 2, 4)^{power}"] = q / q.sum(-1, keepdims=True)
    print(f"{len(ids)} studies of {root}\n\n| prediction | " + " | ".join([*TERMS, "overall"]) + " |")
    print("|---" * (len(TERMS) + 2) + "|")
    for name, p in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in with_overall(term_scores(study_terms(y, p)))) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
