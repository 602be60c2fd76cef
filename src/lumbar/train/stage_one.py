"""Trainers of the multitask model's stage one: `train --model slice_select` and `train --model crops`."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import config as cfgmod
from ..data.cache import CachedEntries, StudyCache
from ..files import write_json
from ..layout import Run
from ..data.catalog import load_studies
from ..data.volumes import normalise, study_volumes
from ..preprocess.crops import CROP_NAMES, CROPS, CropRegions, slice_summary
from ..preprocess.stage_one import (PreprocessConfig, Selection, cache_version, crops_key, labelled_slices, labels_for,
                                   read_preprocess_config, select, study_crops, study_features, training_rows,
                                   true_selection)
from ..preprocess.slice_select import MEMBERS, SliceSelector
from ..progress import bar
from .runner import RunConfig, register, run_folds



@dataclass
class SliceSelectConfig:
    members: tuple[str, ...] = MEMBERS
    cache_dir: str = "cache"
    seed: int = 0
    workers: int = 2  # processes decoding and featurising the studies
    svm_rows: int = 6000  # the SVM member's training rows at most (its fit grows faster than n^2); 0 = all
    n_jobs: int = 0  # threads of the forest and XGBoost fits; 0 = every core


def stack_rows(rows: list) -> tuple[dict, dict]:
    X: dict[str, list] = {}
    Y: dict[str, list] = {}
    for stype, x, y in rows:
        X.setdefault(stype, []).append(x)
        Y.setdefault(stype, []).append(y)
    return {k: np.concatenate(v) for k, v in X.items()}, {k: np.concatenate(v) for k, v in Y.items()}


def _compare(truth: list[tuple[str, int, int]], chosen: Selection) -> list[tuple[str, bool, bool]]:
    """(series type, exact, within one slice) per labelled (condition, level); another series is a miss."""
    out = []
    for name, sid, idx in truth:
        stype = CROPS[name][0]
        got = chosen.get(name)
        same = got is not None and got[0] == sid
        out.append((stype, same and got[1] == idx, same and abs(got[1] - idx) <= 1))
    return out


def load_train(data, run, rc: RunConfig, cache_dir: str):
    ids, y, fold = run_folds(data, run, rc)
    folds = dict(zip(ids.tolist(), fold.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        studies = load_studies(data, "train", folds)
    return studies, StudyCache(cache_dir, cache_version())


def _features_job(args):
    study, cache_dir = args
    study_features(study, StudyCache(cache_dir, cache_version()))
    return study.study_id


def warm_cache(studies, cache: StudyCache, workers: int = 2) -> None:
    """Decode and featurise every study into the cache, in parallel processes (each writes its own
    study's entries; nothing is shared)."""
    if cache.root is None or workers <= 1:
        for st in bar(studies, desc="slice features"):
            study_features(st, cache)
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    jobs = [(st, str(cache.root.parent)) for st in studies]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for _ in bar(pool.map(_features_job, jobs, chunksize=4), total=len(jobs), desc="slice features"):
            pass


@register("slice_select", order=10, config=SliceSelectConfig)
def train_slice_select(data, run, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(SliceSelectConfig(), overrides)
    studies, cache = load_train(data, run, rc, cfg.cache_dir)
    warm_cache(studies, cache, cfg.workers)
    # geometry and features only: the pixels are dropped as each study is read (bounded memory)
    feats = {st.study_id: study_features(st, cache, keep_pixels=False) for st in bar(studies, desc="load features")}
    rows = {st.study_id: list(training_rows(st, feats[st.study_id])) for st in studies}
    methods = [*cfg.members, "ensemble", "naive"]
    records, oof = [], {}
    for k in bar(range(rc.n_folds), desc="slice selector folds"):
        X, Y = stack_rows([r for st in studies if st.fold != k for r in rows[st.study_id]])
        sel = SliceSelector(seed=cfg.seed, svm_rows=cfg.svm_rows, n_jobs=cfg.n_jobs).fit(X, Y, cfg.members)
        for st in (s for s in studies if s.fold == k):
            f = feats[st.study_id]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                chosen = {m: select(f, sel, member=None if m == "ensemble" else m, naive=m == "naive") for m in methods}
            oof[st.study_id] = chosen["ensemble"]
            truth = labelled_slices(st, f)
            for m in methods:
                for stype, exact, near in _compare(truth, chosen[m]):
                    records.append({"fold": k, "series_type": stype, "method": m, "exact": exact, "within1": near})
    X, Y = stack_rows([r for st in studies for r in rows[st.study_id]])
    full = SliceSelector(seed=cfg.seed, svm_rows=cfg.svm_rows, n_jobs=cfg.n_jobs).fit(X, Y, cfg.members)
    out = Run(run).stage("slice_select")
    full.save(Run(run).selector)
    cfgmod.save(cfg, Run(run).config("slice_select"))
    write_json(Run(run).oof_selection, {str(s): {n: list(v) for n, v in sel.items()} for s, sel in oof.items()},
               indent=None)
    rec = pd.DataFrame(records)
    # "shipped": what inference uses per series type (today the members' soft vote everywhere)
    rec = pd.concat([rec, rec[rec["method"] == SHIPPED_METHOD].assign(method="shipped")], ignore_index=True)
    report = selection_report(rec)
    report.to_csv(out / "report.csv")
    print(format_report(report))
    return {"report": str(out / "report.csv"), "selector": str(Run(run).selector)}


SHIPPED_METHOD = "ensemble"  # the selection inference makes (select() with every loaded member)


def selection_report(records: pd.DataFrame) -> pd.DataFrame:
    """Held-out accuracy (exact, within one slice) per series type and method."""
    g = records.groupby(["series_type", "method"])[["exact", "within1"]].mean()
    g["n"] = records.groupby(["series_type", "method"]).size()
    return g


def format_report(report: pd.DataFrame) -> str:
    lines = ["| series type | method | exact | within ±1 | n |", "|---|---|---|---|---|"]
    for (stype, method), r in report.iterrows():
        lines.append(f"| {stype} | {method} | {r.exact:.3f} | {r.within1:.3f} | {int(r.n)} |")
    return "\n".join(lines)


def read_oof_selection(run) -> dict[int, Selection]:
    path = Run(run).oof_selection
    if not path.exists():
        raise FileNotFoundError(f"{path}: no slice selection in this run; run `train --model slice_select` first")
    raw = json.loads(path.read_text())
    return {int(s): {n: (int(v[0]), int(v[1])) for n, v in sel.items()} for s, sel in raw.items()}


def region_samples(study, cache) -> list:
    """(crop name, what CropRegions.fit reads of the labelled slice, labelled points) for fitting crop
    regions: the slice's shape and spine column, not its pixels (memory stays flat in the studies)."""
    if not study.has_coords:
        return []
    vols = study_volumes(study, cache)
    truth = true_selection(study, study_features(study, cache, vols))
    by_id = {sid: v for items in vols.values() for sid, v in items}
    out = []
    for name, (sid, idx) in truth.items():
        px = normalise(by_id[sid].pixels[idx:idx + 1])[0]
        out.append((name, slice_summary(name, px), labels_for(study, name, sid, by_id[sid])[0]))
    return out


@dataclass
class CropsConfig(PreprocessConfig):
    cache_dir: str = "cache"


def _preprocess_config(cfg: CropsConfig) -> PreprocessConfig:
    return PreprocessConfig(sag_size=cfg.sag_size, axial_size=cfg.axial_size, margin=cfg.margin)


@register("crops", order=20, config=CropsConfig)
def train_crops(data, run, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(CropsConfig(), overrides)
    pcfg = _preprocess_config(cfg)
    oof_sel = read_oof_selection(run)
    studies, cache = load_train(data, run, rc, cfg.cache_dir)
    samples = {st.study_id: region_samples(st, cache) for st in bar(studies, desc="crop regions")}
    out = Run(run).stage("crops")
    keys, records = {}, []
    for k in range(rc.n_folds):
        regions = CropRegions.fit([s for st in studies if st.fold != k for s in samples[st.study_id]], cfg.margin)
        regions.save(Run(run).regions(k))
        for st in bar([s for s in studies if s.fold == k], desc=f"crops fold {k}", leave=False):
            entry = study_crops(st, oof_sel.get(st.study_id, {}), regions, pcfg, cache)
            keys[st.study_id] = k
            records += containment(st, entry, pcfg)
    CropRegions.fit([s for st in studies for s in samples[st.study_id]], cfg.margin).save(Run(run).regions())
    cfgmod.save(cfg, Run(run).config("crops"))
    rec = pd.DataFrame(records)
    rep = rec.groupby("crop")["inside"].agg(["mean", "size"]) if len(rec) else pd.DataFrame()
    rep.to_csv(out / "containment.csv")
    overall = float(rec["inside"].mean()) if len(rec) else float("nan")
    print(f"crops: held-out labelled points inside their crop: {overall:.4f} ({int(rec['inside'].sum()) if len(rec) else 0}/{len(rec)})")
    print(f"cache: {cache.hits} hits, {cache.misses} builds")
    return {"containment": round(overall, 4), "studies": len(keys)}


def containment(study, entry: dict, cfg: PreprocessConfig) -> list[dict]:
    """Per labelled (condition, level): is its point inside the crop of the chosen series? A point in
    a series the selector did not choose counts as outside."""
    out = []
    if not study.has_coords:
        return out
    for i, name in enumerate(CROP_NAMES):
        cols = CROPS[name][2]
        labelled = study.coords
        for j, col in enumerate(cols):
            cond = col_condition(col)
            rows = labelled[(labelled["condition"] == cond[0]) & (labelled["level"] == cond[1])]
            if not len(rows):
                continue
            pts = entry["sag_points"][i] if i < 3 else entry["axial_points"][i - 3]
            size = cfg.sag_size if i < 3 else cfg.axial_size
            p = pts[j]
            ok = bool(entry["present"][i] and int(entry["series_id"][i]) in set(rows["series_id"].astype(int))
                      and np.isfinite(p).all() and (0 <= p).all() and (p < size).all())
            out.append({"crop": name, "study_id": study.study_id, "inside": ok})
    return out


def col_condition(col: int) -> tuple[str, str]:
    from .. import schema
    name = schema.LABEL_COLUMNS[col]
    return schema.condition_name(name[:-6]), schema.LEVEL_NAMES[schema.LEVELS.index(name[-5:])]





def load_crop_entries(data, run, rc: RunConfig, cache_dir: str, cfg: PreprocessConfig | None = None):
    """(studies, crop entries) of every training study: each built from its held-out slice selection
    and its fold's crop regions, exactly as `train --model crops` cached them."""
    if cfg is None:
        cfg = read_preprocess_config(run)
    oof_sel = read_oof_selection(run)
    studies, cache = load_train(data, run, rc, cache_dir)
    regions = {k: CropRegions.load(Run(run).regions(k)) for k in range(rc.n_folds)}
    keys, kept = [], []
    for st in bar(studies, desc="load crops"):  # builds what is missing; kept in memory only without a cache
        sel = oof_sel.get(st.study_id, {})
        entry = study_crops(st, sel, regions[st.fold], cfg, cache)
        keys.append((st.study_id, crops_key(cfg, sel, regions[st.fold])))
        if cache.root is None:
            kept.append(entry)
    return studies, (CachedEntries(cache, keys) if cache.root is not None else kept)
