"""The held-out slice selection of `train --model slice_select`: its rows, its comparison with the labelled
slices, the fused choice's distance weight, the method per series type, and the reports."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .. import schema
from ..layout import Run
from ..preprocess.crops import CROPS
from ..preprocess.evidence import acquisition_kind
from ..preprocess.pipeline import Selection
from ..preprocess.placement import make_choice, METHODS, N_LEVELS, slice_for


def stack_rows(rows: list) -> tuple[dict, dict]:
    X: dict[str, list] = {}
    Y: dict[str, list] = {}
    for stype, x, y in rows:
        X.setdefault(stype, []).append(x)
        Y.setdefault(stype, []).append(y)
    return {k: np.concatenate(v) for k, v in X.items()}, {k: np.concatenate(v) for k, v in Y.items()}


def _compare(truth: list[tuple[str, int, int, int]], chosen: Selection, f: dict) -> list[dict]:
    """Per labelled (condition, level) of a study with slice features f: its series type, the kind of
    acquisition its labelled slice is in (evidence.acquisition_kind), and whether the choice shows that
    level (on its own slice where it has one) on the labelled slice (exact) or within one; another
    series is a miss."""
    volumes = {sf.series_id: sf.volume for items in f.values() for sf in items}
    out = []
    for name, sid, idx, level in truth:
        got = chosen.get(name)
        same = got is not None and got[0] == sid
        at = slice_for(got, level) if same else -10
        out.append({"series_type": CROPS[name][0], "kind": acquisition_kind(volumes[sid], idx),
                    "exact": same and at == idx, "within1": same and abs(at - idx) <= 1})
    return out

SIGMAS = (1.0, 1.5, 2.0, 3.0, 4.5)  # mm: the distance weights the fused choice is tried with


def pick_sigma(records: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """The distance weight whose fused choice is best held out on axial slices (the type it serves);
    its records become the method "fused", the others are printed and dropped from the report."""
    tried = records[records["method"].str.startswith("fused@")]
    axial = tried[tried["series_type"] == schema.AXIAL]
    scan = (axial if len(axial) else tried).groupby("method")["exact"].mean()
    best = scan.idxmax()
    print("fused choice, held-out axial exact per sigma: "
          + ", ".join(f"{m.split('@')[1]} mm {v:.3f}" for m, v in scan.items()))
    rest = records[~records["method"].str.startswith("fused@")]
    return float(best.split("@")[1]), pd.concat([rest, tried[tried["method"] == best].assign(method="fused")],
                                                 ignore_index=True)


def choose_methods(records: pd.DataFrame) -> dict[str, str]:
    """Per series type, the slice method with the best held-out exact rate (ties: within one slice,
    then the classifiers); the sagittal T2 canal slice is always the classifiers' (the levels are found on it)."""
    out = {}
    for stype, r in records[records["method"].isin(METHODS)].groupby("series_type"):
        if stype == schema.SAG_T2:
            continue
        m = r.groupby("method")[["exact", "within1"]].mean()
        m["pref"] = [-METHODS.index(i) for i in m.index]
        out[stype] = m.sort_values(["exact", "within1", "pref"], ascending=False).index[0]
    return out


def shipped(variants: dict, choice: dict[str, str]) -> Selection:
    """A held-out study's shipped selection: per crop, the variant its series type chose (the
    classifiers' slices centred on the level points where there are points)."""
    out = {}
    for name, (stype, _, _) in CROPS.items():
        source = variants.get(choice.get(stype, "ensemble")) or variants.get("ensemble") or variants["classifiers"]
        if name in source:
            out[name] = source[name]
    return out


SHIPPED_METHOD = "ensemble"  # the selection inference makes (select() with every loaded member)


def selection_report(records: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Held-out accuracy (exact, within one slice) per series type and method (or kind of acquisition)."""
    g = records.groupby(["series_type", by])[["exact", "within1"]].mean()
    g["n"] = records.groupby(["series_type", by]).size()
    return g


def format_report(report: pd.DataFrame, second: str = "method") -> str:
    lines = [f"| series type | {second} | exact | within ±1 | n |", "|---|---|---|---|---|"]
    for (stype, method), r in report.iterrows():
        lines.append(f"| {stype} | {method} | {r.exact:.3f} | {r.within1:.3f} | {int(r.n)} |")
    return "\n".join(lines)


def read_oof_selection(run) -> dict[int, Selection]:
    path = Run(run).oof_selection
    if not path.exists():
        raise FileNotFoundError(f"{path}: no slice selection in this run; run `train --model slice_select` first")
    raw = json.loads(path.read_text())
    return {int(s): {n: make_choice(v[0], v[1], v[2:4] if len(v) >= 4 else None,
                                    (v[4:4 + N_LEVELS], v[4 + N_LEVELS:]) if len(v) >= 4 + 2 * N_LEVELS else None)
                     for n, v in sel.items()} for s, sel in raw.items()}
