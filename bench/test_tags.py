"""Where a submission loses on a synthetic test folder: its studies grouped by what their files lack.

    python bench/test_tags.py --data rtest100 --weights weights sub_a.csv sub_b.csv ...

The real profile's test split mimics the hidden test (REAL_DATA.md): series without PixelSpacing,
ImageOrientationPatient or SliceThickness, empty series folders. The flags are read from the files
themselves (the first file of each series). For each group of studies: each submission's share of the
prior-oracle gap with its 95% interval, and each submission's score minus the first one's, paired over
the same 2,000 study resamples. A "clean" copy of the folder (the same studies with every tag written;
bench/clean_test_tags.py) scored with the same weights says what the missing tags cost.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.infer.submission import submission_frame
from lumbar.layout import WeightsLayout
from lumbar.metric import labels_to_array, score_from_terms, study_terms, submission_to_probs
from lumbar.models.prior import load_prior
from lumbar.commands.scoring import gap_closed, interval, resamples

TAGS = {"no_spacing": "PixelSpacing", "no_orientation": "ImageOrientationPatient", "no_thickness": "SliceThickness"}


def study_flags(root: Path, study_ids) -> pd.DataFrame:
    """Per test study: which tags some series' files lack, and whether a series folder is empty."""
    import pydicom

    desc = pd.read_csv(root / "test_series_descriptions.csv")
    rows = []
    for sid in study_ids:
        f = dict(study_id=sid, **{k: False for k in TAGS}, empty_series=False)
        for r in desc[desc.study_id == sid].itertuples():
            files = sorted((root / "test_images" / str(sid) / str(r.series_id)).glob("*.dcm"))
            if not files:
                f["empty_series"] = True
                continue
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            for k, tag in TAGS.items():
                f[k] |= tag not in ds
        rows.append(f)
    return pd.DataFrame(rows).set_index("study_id")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a synthetic folder (test_labels.csv, oracle.csv)")
    ap.add_argument("--weights", required=True, help="the weights folder (its prior)")
    ap.add_argument("submissions", nargs="+")
    a = ap.parse_args()
    root = Path(a.data)
    labels = pd.read_csv(root / "test_labels.csv")
    ids = labels["study_id"].tolist()
    y = labels_to_array(labels)
    subs = [pd.read_csv(s) for s in a.submissions]
    prior = submission_frame(list(subs[0]["row_id"]), {}, load_prior(Path(a.weights) / WeightsLayout.PRIOR))
    oracle = pd.read_csv(root / "oracle.csv")
    probs = [submission_to_probs(s, ids) for s in subs]
    p_prior, p_oracle = (submission_to_probs(f[f["row_id"].isin(subs[0]["row_id"])], ids) for f in (prior, oracle))
    flags = study_flags(root, ids)
    groups = {"all": np.ones(len(ids), bool)}
    groups["geometry complete"] = ~flags[list(TAGS)[:2] + ["empty_series"]].any(axis=1).to_numpy()
    groups.update({k: flags[k].to_numpy() for k in flags.columns})
    names = [Path(s).stem for s in a.submissions]
    head = "| studies | n | " + " | ".join(f"{n}: share of the gap" for n in names)
    head += "".join(f" | {n} minus {names[0]}" for n in names[1:]) + " |"
    print(head)
    print("|" + "---|" * (2 + len(names) + len(names) - 1))
    for g, m in groups.items():
        if m.sum() < 2:
            print(f"| {g} | {int(m.sum())} |" + " |" * (2 * len(names) - 1))
            continue
        counts = resamples(int(m.sum()))  # the resamples gap_closed draws, for the paired differences
        t = {n: study_terms(y[m], p[m]) for n, p in zip(names, probs)}
        boot = {n: score_from_terms(v, counts) for n, v in t.items()}
        point = {n: float(score_from_terms(v)) for n, v in t.items()}
        cells = []
        for n, p in zip(names, probs):
            s0, lo, hi = gap_closed(y[m], p[m], p_prior[m], p_oracle[m])
            cells.append(f"{100 * s0:.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%] ({point[n]:.4f})")
        for n in names[1:]:
            lo, hi = interval(boot[n] - boot[names[0]])
            cells.append(f"{point[n] - point[names[0]]:+.4f} [{lo:+.4f}, {hi:+.4f}]")
        print(f"| {g} | {int(m.sum())} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
