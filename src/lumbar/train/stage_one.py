"""Trainers of the multitask model's stage one: `train --model slice_select` and `train --model crops`."""
from __future__ import annotations

import json
from pathlib import Path
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from .. import config as cfgmod
from .. import schema
from ..data.cache import CachedEntries, StudyCache
from ..files import write_figure, write_json
from ..layout import Run
from ..data.catalog import load_studies
from ..data.volumes import arrays_to_volume, normalise, normalised, series_arrays, study_volumes
from ..preprocess.crops import CROP_NAMES, CROPS, CropRegions, slice_summary
from ..preprocess.levels import FINE_JITTER_MM, FINE_MM, LevelConfig, LevelLocaliser, stack_at, to_thumb
from ..preprocess.evidence import Scorer, acquisition_kind, candidates, features
from ..preprocess.ranker import Ranker, candidate_patches
from ..preprocess.placement import METHODS, N_LEVELS, Geometry, fit_offsets, labelled_points, make_choice, place, slice_for
from ..preprocess.stage_one import (PreprocessConfig, Selection, cache_version, crops_key, geometric, labelled_slices, labels_for, level_points, sagittal_thumbs, series_items, series_probas,
                                   preprocess_config, read_preprocess_config, select, study_crops, study_features, training_rows,
                                   true_selection)
from ..preprocess.slice_select import MEMBERS, SliceSelector
from ..progress import bar
from .runner import RunConfig, register, run_folds



@dataclass
class SliceSelectConfig:
    members: tuple[str, ...] = MEMBERS  # the slice classifiers averaged (rf, svm, mlp, xgb)
    cache_dir: str = "cache"  # the per-study cache (decoded volumes, features)
    seed: int = 0  # the members' and the level network's seed
    workers: int = 2  # processes decoding and featurising the studies
    svm_rows: int = 6000  # the SVM member's training rows at most (its fit grows faster than n^2); 0 = all
    n_jobs: int = 0  # threads of the forest and XGBoost fits; 0 = every core
    levels: bool = True  # train the level network and place slices and crops through patient space
    levels_steps: int = 150  # the level network's optimiser steps (batches of 16), whatever the number of studies
    device: str = "auto"  # where the level network trains (auto: a working GPU, else the CPU; the members: CPU)
    levels_fine: bool = True  # a second look at a finer patch around each level point
    rank_epochs: int = 20  # the axial slice ranker's epochs (a CNN over each candidate plane's patch); 0 = none
    fold_workers: int = 0  # folds fitted at once, in forked processes of one thread each; 0: one per core when
    # the level network trains on the CPU, none (in this process) when it has a GPU


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


def load_train(data, run, rc: RunConfig, cache_dir: str):
    ids, y, fold = run_folds(data, run, rc)
    folds = dict(zip(ids.tolist(), fold.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        studies = load_studies(data, "train", folds)
    return studies, StudyCache(cache_dir, cache_version())


def _features_job(args):
    study, cache_dir = args
    _featurise(study, StudyCache(cache_dir, cache_version()))
    return study.study_id


def _featurise(study, cache: StudyCache) -> None:
    vols = study_volumes(study, cache)
    study_features(study, cache, vols)
    sagittal_thumbs(study, cache, vols)


def warm_cache(studies, cache: StudyCache, workers: int = 2) -> None:
    """Decode and featurise every study into the cache, in parallel processes (each writes its own
    study's entries; nothing is shared)."""
    if cache.root is None or workers <= 1:
        for st in bar(studies, desc="slice features"):
            _featurise(st, cache)
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
    thumbs = {st.study_id: sagittal_thumbs(st, cache) for st in studies} if cfg.levels else {}
    points = {st.study_id: labelled_points(st, series_items(feats[st.study_id])) for st in studies} if cfg.levels else {}
    samples = {st.study_id: level_samples(st, feats[st.study_id], thumbs[st.study_id]) for st in studies} if cfg.levels else {}
    fine = ({st.study_id: fine_sample(st, feats[st.study_id], cache) for st in bar(studies, desc="level patches")}
            if cfg.levels and cfg.levels_fine else {})
    methods = [*cfg.members, "ensemble", "naive"]
    ctx = dict(studies=studies, rows=rows, feats=feats, thumbs=thumbs, points=points, samples=samples, fine=fine,
               cfg=cfg, methods=methods, cache=cache)
    records, errors, oof, examples = [], [], {}, []
    held: dict[int, tuple] = {}  # study -> (fold, probas, level points, fold's geometry): the local scorer's inputs
    folds, full = _cross_fit(ctx, rc.n_folds, fold_workers(cfg))
    for res in folds:
        records += res["records"]
        errors += res["errors"]
        oof.update(res["oof"])
        held.update(res["held"])
        examples += res["examples"][:max(0, 6 - len(examples))]
    scorers: dict = {}
    rankers: dict = {}
    if cfg.levels and held:
        by_method, scorers, rankers = local_scorers(studies, feats, held, oof, cache, rc.n_folds, cfg)
        for method, local in by_method.items():
            for st in studies:
                if st.study_id in local:
                    oof[st.study_id][method] = local[st.study_id]
                    f = feats[st.study_id]
                    records += [{"fold": st.fold, "method": method, **r}
                                for r in _compare(labelled_slices(st, f), local[st.study_id], f)
                                if method == "local" or r["series_type"] == schema.AXIAL]
    rec = pd.DataFrame(records)
    sigma = Geometry.sigma_mm
    if cfg.levels and len(rec) and rec["method"].str.startswith("fused@").any():
        sigma, rec = pick_sigma(rec)
        oof = {s: {**v, "fused": v.get(f"fused@{sigma}", v.get("fused"))} for s, v in oof.items()}
    choice = choose_methods(rec) if cfg.levels else {}
    if cfg.levels and full.geometry is not None:
        full.geometry.choice, full.geometry.sigma_mm, full.geometry.scorers = choice, sigma, scorers
        full.geometry.rankers = rankers
    out = Run(run).stage("slice_select")
    full.save(Run(run).selector)
    cfgmod.save(cfg, Run(run).config("slice_select"))
    shipped_sel = {s: shipped(v, choice) for s, v in oof.items()}
    write_json(Run(run).oof_selection, {str(s): {n: list(v) for n, v in sel.items()} for s, sel in shipped_sel.items()},
               indent=None)
    # "shipped": what inference uses per series type (the method chosen by held-out accuracy)
    ship = [rec[(rec["series_type"] == t) & (rec["method"] == choice.get(t, SHIPPED_METHOD))] for t in rec["series_type"].unique()]
    rec = pd.concat([rec, *[r.assign(method="shipped") for r in ship]], ignore_index=True)
    report = selection_report(rec)
    report.to_csv(out / "report.csv")
    print(format_report(report))
    kinds = selection_report(rec[rec["method"] == "shipped"], by="kind")
    kinds.to_csv(out / "report_kinds.csv")
    print(format_report(kinds, "kind of acquisition (shipped)"))
    result = {"report": str(out / "report.csv"), "selector": str(Run(run).selector),
              "choice": {t: choice.get(t, SHIPPED_METHOD) for t in sorted(rec["series_type"].unique())}}
    if cfg.levels:
        result["sigma_mm"] = sigma
    if errors:
        lv = level_report(pd.DataFrame(errors))
        lv.to_csv(out / "levels.csv")
        print(format_levels(lv))
        result["levels_median_mm"] = round(float(pd.DataFrame(errors)["error_mm"].median()), 2)
    if examples:
        level_points_figure(examples, out / "levels.png")
    return result



# The folds' shared inputs, set before the fold workers fork (they read it, copy-on-write; nothing is pickled in).
_FOLD_INPUTS: dict = {}


def _held_out_fold(k: int, n_jobs: int | None = None) -> dict:
    """One fold of the selector's cross-validation: members and level network fitted on the other folds,
    every held-out study's selection by each method, its level errors and the local scorer's inputs."""
    c = _FOLD_INPUTS
    studies, feats, thumbs, points, cfg, methods, cache = (
        c[key] for key in ("studies", "feats", "thumbs", "points", "cfg", "methods", "cache"))
    records, errors, oof, examples, held = [], [], {}, [], {}
    sel = _fit_selector([st for st in studies if st.fold != k], n_jobs, f"levels fold {k}")
    for st in (s for s in studies if s.fold == k):
        f = feats[st.study_id]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # each member's probabilities once; the ensemble's are their mean (SliceSelector.predict_proba)
            member = {m: series_probas(f, sel, m) for m in cfg.members}
            probas = {sid: None if member[cfg.members[0]][sid] is None else
                      np.mean([member[m][sid] for m in cfg.members], axis=0) for sid in member[cfg.members[0]]}
            chosen = {m: select(f, sel, naive=m == "naive", probas=probas if m == "ensemble" else member.get(m))
                      for m in methods}
            placed = {}
            if sel.levels is not None:
                P = level_points(f, sel, chosen["ensemble"], probas, thumbs[st.study_id],
                                 lambda sid, st=st: series_pixels(st, sid, cache))
                errors += level_errors(st.study_id, k, P, points[st.study_id]["sag_t2"])
                if P is not None and len(examples) < 6 and np.isfinite(points[st.study_id]["sag_t2"]).all():
                    examples.append(level_example(st.study_id, f, chosen["ensemble"]["sag_t2"], thumbs[st.study_id],
                                                  P, points[st.study_id]["sag_t2"]))
                placed = {m: geometric(f, sel, chosen["ensemble"], probas, methods={schema.AXIAL: m, schema.SAG_T1: m},
                                       points=P) for m in METHODS}
                fused = {schema.AXIAL: "fused", schema.SAG_T1: "fused"}
                for sigma in SIGMAS:  # the fused choice at each weight of the distance (no points: the vote's)
                    placed[f"fused@{sigma}"] = place(chosen["ensemble"], series_items(f), probas, P,
                                                     replace(sel.geometry, sigma_mm=sigma), fused)
                chosen.update({m: placed[m] for m in placed if m.startswith("fused@")}, geometry=placed["geometry"])
                held[st.study_id] = (k, probas, P, sel.geometry)
        oof[st.study_id] = {"classifiers": chosen["ensemble"], **placed}
        truth = labelled_slices(st, f)
        for m in chosen:
            records += [{"fold": k, "method": m, **r} for r in _compare(truth, chosen[m], f)]
    return {"records": records, "errors": errors, "oof": oof, "examples": examples, "held": held}


def fold_workers(cfg: SliceSelectConfig) -> int:
    """How many folds fit at once (SliceSelectConfig.fold_workers; 0 decides by the device)."""
    if cfg.fold_workers > 0:
        return cfg.fold_workers
    from ..devices import cpu_cores, cuda_count

    if cfg.device != "cpu" and cuda_count():
        return 1  # the GPU trains the level network; a forked process must not touch CUDA
    return cpu_cores()


def _fold_worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # the folds are the parallelism


def _fit_selector(train: list, n_jobs: int | None, desc: str) -> SliceSelector:
    """Members and (with cfg.levels) the level network fitted on these studies (of _FOLD_INPUTS)."""
    c = _FOLD_INPUTS
    cfg = c["cfg"]
    X, Y = stack_rows([r for st in train for r in c["rows"][st.study_id]])
    sel = SliceSelector(seed=cfg.seed, svm_rows=cfg.svm_rows, n_jobs=n_jobs or cfg.n_jobs).fit(X, Y, cfg.members)
    if cfg.levels:
        fit_levels(sel, cfg, [c["samples"][st.study_id] for st in train], [c["points"][st.study_id] for st in train],
                   [c["fine"].get(st.study_id) for st in train], desc)
    return sel


def _fit_all(n_jobs: int | None = None) -> SliceSelector:
    """The selector inference ships: fitted on every study."""
    full = _fit_selector(_FOLD_INPUTS["studies"], n_jobs, "levels (all studies)")
    full.n_jobs = _FOLD_INPUTS["cfg"].n_jobs
    return full


def _cross_fit(inputs: dict, n_folds: int, workers: int) -> tuple[list[dict], SliceSelector]:
    """(each fold's held-out results in fold order, the selector fitted on every study): in this process,
    or (workers > 1) in that many forked processes of one thread each, so the single-threaded parts of a
    fold (the SVM, the MLP, placing the held-out studies) use every core; the final fit is one more task
    among the folds (five folds and it fill three rounds of two)."""
    _FOLD_INPUTS.clear()
    _FOLD_INPUTS.update(inputs)
    try:
        workers = min(workers, n_folds + 1)
        if workers <= 1:
            folds = list(bar((_held_out_fold(k) for k in range(n_folds)), total=n_folds, desc="slice selector folds"))
            return folds, _fit_all()
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_fold_worker_init) as pool:
            full = pool.submit(_fit_all, 1)
            futures = [pool.submit(_held_out_fold, k, 1) for k in range(n_folds)]
            folds = [f.result() for f in bar(futures, total=n_folds, desc=f"slice selector folds ({workers} processes)")]
            return folds, full.result()
    finally:
        _FOLD_INPUTS.clear()

def evidence_groups(study, f, P: np.ndarray, probas: dict, geo: Geometry, pixels_of, patches: bool = False) -> dict[str, list]:
    """The local scorer's examples from a study with level points: per labelled axial and sagittal T1
    (condition, level), its candidate planes' features, which is the labelled slice and (axial, with
    `patches`) the ranker's patch of each candidate, else None (a sagittal level's candidates come
    from the labelled series, as a side's series is chosen before its levels)."""
    items = series_items(f)
    out: dict[str, list] = {schema.AXIAL: [], schema.SAG_T1: []}
    for name, sid, idx, level in labelled_slices(study, f):
        stype, cls, _ = CROPS[name]
        if stype not in out:
            continue
        target = P[level] + np.asarray(geo.offsets.get(name, np.zeros(3)), np.float64)
        vols = items.get(stype, []) if stype == schema.AXIAL else [(s, v) for s, v in items.get(stype, []) if s == sid]
        cands = candidates(vols, target, geo.max_gap_mm)
        if len(cands) < 2:
            continue
        spacing = {s: v.pixel_spacing for s, v in vols}
        X = features(cands, pixels_of, spacing.__getitem__, probas, cls)
        pats = candidate_patches(cands, vols, pixels_of).astype(np.float16) if patches and stype == schema.AXIAL else None
        out[stype].append((X, np.array([c.series_id == sid and c.slice == idx for c in cands]), pats))
    return out


def local_scorers(studies, feats: dict, held: dict, oof: dict, cache: StudyCache, n_folds: int,
                  cfg: SliceSelectConfig) -> tuple[dict, dict, dict]:
    """The local methods held out and for shipping: their examples from every study's held-out level
    points; per fold, a scorer per series type ("local") and an axial ranker ("ranked", with
    cfg.rank_epochs) fitted on the other folds' studies select that fold's studies; then both fitted
    on every study for the shipped selector. ({method: {study: held-out selection}}, series type ->
    scorer dict, series type -> ranker dict)."""
    rank = cfg.rank_epochs > 0
    groups = {}
    for st in bar([s for s in studies if s.study_id in held and held[s.study_id][2] is not None], desc="local evidence"):
        k, probas, P, geo = held[st.study_id]
        groups[st.study_id] = evidence_groups(st, feats[st.study_id], P, probas, geo, pixels_reader(st, cache), rank)

    def fit(studies_ids, desc: str) -> tuple[dict, dict]:  # (series type -> scorer dict, -> ranker dict)
        scorers, rankers = {}, {}
        for stype in (schema.AXIAL, schema.SAG_T1):
            sc = Scorer.fit([(X, y) for s in studies_ids for X, y, _ in groups[s][stype]])
            if sc is not None:
                scorers[stype] = sc.to_dict()
        if rank:
            r = Ranker.fit([(X, P, y) for s in studies_ids for X, y, P in groups[s][schema.AXIAL]], cfg.rank_epochs,
                           seed=cfg.seed, device=cfg.device, desc=desc)
            if r is not None:
                rankers[schema.AXIAL] = r.to_dict()
        return scorers, rankers

    out: dict[str, dict] = {"local": {}, **({"ranked": {}} if rank else {})}
    for k in range(n_folds):
        scorers, rankers = fit([s for s in groups if held[s][0] != k], f"slice ranker, fold {k}")
        for st in (s for s in studies if s.fold == k and s.study_id in held):
            _, probas, P, geo = held[st.study_id]
            pixels_of = pixels_reader(st, cache)  # each series read and normalised once for both methods
            for method in out:
                out[method][st.study_id] = geometric(
                    feats[st.study_id], None, oof[st.study_id]["classifiers"], probas,
                    methods={schema.AXIAL: method, schema.SAG_T1: "local"}, points=P,
                    geometry=replace(geo, scorers=scorers, rankers=rankers), pixels_of=pixels_of)
    return (out, *fit(list(groups), "slice ranker, all studies"))


def level_samples(study, f, thumbs: dict[int, np.ndarray]):
    """The level network's example from a study: the labelled canal slice's stack, its five points in
    thumbnail pixels, and the neighbouring slices' stacks; None without labelled canal points."""
    truth = true_selection(study, f).get("sag_t2")
    if truth is None or truth[0] not in thumbs:
        return None
    sid, idx = truth
    v = next(sf.volume for sf in f[schema.SAG_T2] if sf.series_id == sid)
    pts, _ = labels_for(study, "sag_t2", sid, v)
    t = thumbs[sid]
    block = np.flatnonzero(v.blocks == v.blocks[idx])
    others = [stack_at(t, v, j) for j in (idx - 1, idx + 1) if j in block]
    return stack_at(t, v, idx), to_thumb(pts, v.pixels.shape[1:]), others


def series_pixels(study, series_id: int, cache: StudyCache) -> np.ndarray | None:
    """One series' normalised pixels [n, h, w], decoded through the cache (None if it cannot be read)."""
    a = series_arrays(study, series_id, cache)
    return None if a is None else normalised(arrays_to_volume(a))


def pixels_reader(study, cache: StudyCache):
    """series id -> its normalised pixels from the cache, each series read once."""
    memo: dict[int, np.ndarray | None] = {}

    def pixels_of(sid: int):
        if sid not in memo:
            memo[sid] = series_pixels(study, sid, cache)
        return memo[sid]
    return pixels_of


def fine_sample(study, f, cache: StudyCache):
    """The second look's example from a study: the labelled canal stack cut to its points' reach
    (every patch training may draw around them), the cut's origin, the spacing and the points."""
    truth = true_selection(study, f).get("sag_t2")
    if truth is None:
        return None
    sid, idx = truth
    v = next(sf.volume for sf in f[schema.SAG_T2] if sf.series_id == sid)
    pts, _ = labels_for(study, "sag_t2", sid, v)
    ok = np.isfinite(pts).all(1)
    px = series_pixels(study, sid, cache) if ok.any() else None
    if px is None:
        return None
    reach = (FINE_MM * 0.75 + FINE_JITTER_MM + 2) / np.array([v.pixel_spacing[1], v.pixel_spacing[0]])
    lo = np.maximum(np.floor(pts[ok].min(0) - reach), 0).astype(int)
    hi = np.minimum(np.ceil(pts[ok].max(0) + reach), [px.shape[2] - 1, px.shape[1] - 1]).astype(int)
    region = px[v.neighbours(idx, 3)][:, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1].astype(np.float16)
    return region, lo.astype(np.float64), np.asarray(v.pixel_spacing, np.float64), pts


def fit_levels(sel: SliceSelector, cfg: SliceSelectConfig, samples: list, points: list, fine: list, desc: str) -> None:
    """The level network (both looks) and the crops' offsets from the canal, fitted on these studies
    (in place)."""
    samples = [s for s in samples if s is not None]
    if len(samples) < 2:
        warnings.warn(f"slice selector: {len(samples)} studies with labelled canal points; no level network",
                      stacklevel=2)
        return
    lcfg = LevelConfig(steps=cfg.levels_steps, seed=cfg.seed, device=cfg.device)
    sel.levels = LevelLocaliser(lcfg).fit(samples, desc)
    fine = [s for s in fine if s is not None]
    if cfg.levels_fine and fine:
        sel.levels.fit_fine(fine, desc + ", second look")
    sel.geometry = Geometry(offsets=fit_offsets(points))


def level_example(study_id: int, f, canal: tuple, thumbs: dict, P: np.ndarray, truth: np.ndarray) -> dict:
    """What the levels figure draws of one held-out study: the canal slice's thumbnail and both sets
    of points projected onto it."""
    sid, idx = canal[:2]
    v = next(sf.volume for sf in f[schema.SAG_T2] if sf.series_id == sid)

    def on_slice(points):
        return to_thumb(np.stack([v.project(p)[1][idx] for p in points]), v.pixels.shape[1:])

    return {"study_id": study_id, "image": thumbs[sid][idx].astype(np.float32), "found": on_slice(P),
            "labelled": on_slice(truth), "error_mm": float(np.median(np.linalg.norm(P - truth, axis=1)))}


def level_errors(study_id: int, fold: int, P, truth: np.ndarray) -> list[dict]:
    """Per labelled level: the distance (mm) from the found point to the labelled canal point; a study
    whose points were found implausible counts as missed."""
    out = []
    for lv, t in zip(schema.LEVELS, truth):
        if not np.isfinite(t).all():
            continue
        d = P[schema.LEVELS.index(lv)] - t if P is not None else np.full(3, np.nan)
        out.append({"study_id": study_id, "fold": fold, "level": lv, "error_mm": float(np.linalg.norm(d)),
                    "lateral_mm": float(d[0]), "vertical_mm": float(d[2]), "found": P is not None})
    return out


def level_report(errors: pd.DataFrame) -> pd.DataFrame:
    """Held-out error of the level points per level: median and 90th percentile (mm), share within 5 mm."""
    g = errors.groupby("level")
    rep = pd.DataFrame({"median_mm": g["error_mm"].median(), "p90_mm": g["error_mm"].quantile(0.9),
                        "lateral_mm": g["lateral_mm"].apply(lambda e: float(e.abs().median())),
                        "vertical_mm": g["vertical_mm"].apply(lambda e: float(e.abs().median())),
                        "vertical_bias_mm": g["vertical_mm"].median(),
                        "within_5mm": g["error_mm"].apply(lambda e: float((e <= 5).mean())),
                        "found": g["found"].mean(), "n": g.size()})
    return rep.reindex([lv for lv in schema.LEVELS if lv in rep.index])


def format_levels(rep: pd.DataFrame) -> str:
    lines = ["| level | median mm | 90th pct mm | within 5 mm | median lateral mm | median vertical mm | vertical bias mm | found | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    for lv, r in rep.iterrows():
        lines.append(f"| {lv} | {r.median_mm:.1f} | {r.p90_mm:.1f} | {r.within_5mm:.3f} | {r.lateral_mm:.1f} | "
                     f"{r.vertical_mm:.1f} | {r.vertical_bias_mm:+.1f} | {r.found:.3f} | {int(r.n)} |")
    return "\n".join(lines)


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


def region_samples(study, cache) -> list:
    """(crop name, what CropRegions.fit reads of the labelled slice, labelled points) for fitting crop
    regions: the slice's shape and spine column, not its pixels (memory stays flat in the studies)."""
    if not study.has_coords:
        return []
    vols = study_volumes(study, cache)
    truth = true_selection(study, study_features(study, cache, vols))
    by_id = {sid: v for items in vols.values() for sid, v in items}
    out = []
    for name, (sid, idx, *_) in truth.items():
        px = normalise(by_id[sid].pixels[idx:idx + 1])[0]
        out.append((name, slice_summary(name, px), labels_for(study, name, sid, by_id[sid])[0]))
    return out


@dataclass
class CropsConfig(PreprocessConfig):
    cache_dir: str = "cache"  # the per-study cache the crops are written to


def _preprocess_config(cfg: CropsConfig) -> PreprocessConfig:
    return preprocess_config(asdict(cfg))


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
    rep = (rec.groupby("crop").agg(mean=("inside", "mean"), size=("inside", "size"), same_series=("same_series", "mean"))
           if len(rec) else pd.DataFrame())
    rep.to_csv(out / "containment.csv")
    overall = float(rec["inside"].mean()) if len(rec) else float("nan")
    print(f"crops: held-out labelled points inside their crop: {overall:.4f} ({int(rec['inside'].sum()) if len(rec) else 0}/{len(rec)})")
    print(f"cache: {cache.hits} hits, {cache.misses} builds")
    return {"containment": round(overall, 4), "studies": len(keys)}


def containment(study, entry: dict, cfg: PreprocessConfig) -> list[dict]:
    """Per labelled (condition, level): is its point inside the crop? A point labelled in another series
    of the crop's type counts where it was carried onto the chosen series (see labels_for); `same_series`
    says whether the chosen series is the labelled one."""
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
            same = bool(entry["present"][i] and int(entry["series_id"][i]) in set(rows["series_id"].astype(int)))
            ok = bool(entry["present"][i] and np.isfinite(p).all() and (0 <= p).all() and (p < size).all())
            out.append({"crop": name, "study_id": study.study_id, "inside": ok, "same_series": same})
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


def level_points_figure(examples: list[dict], out: str | Path) -> Path:
    """Held-out level points over the canal slice the selector chose, one panel per study: labelled
    canal points (green circles) and found ones (red crosses), in the level network's thumbnail.
    examples: {"study_id", "image" [T, T], "found" [5, 2], "labelled" [5, 2] (NaN where unlabelled),
    "error_mm" (median over its levels)}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(examples))
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), squeeze=False)
    for a, ex in zip(axes[0], examples):
        a.imshow(ex["image"], cmap="gray")
        lab, got = np.asarray(ex["labelled"]), np.asarray(ex["found"])
        a.scatter(lab[:, 0], lab[:, 1], s=30, facecolors="none", edgecolors="lime", label="labelled")
        a.scatter(got[:, 0], got[:, 1], s=30, marker="x", c="red", label="found")
        a.set_title(f"study {ex['study_id']}\nmedian error {ex['error_mm']:.1f} mm", fontsize=8)
        a.set_xticks([])
        a.set_yticks([])
    axes[0][0].legend(fontsize=7, loc="lower left")
    for a in axes[0][len(examples):]:
        a.axis("off")
    fig.suptitle("level points on held-out sagittal T2 canal slices", fontsize=9)
    fig.tight_layout()
    return write_figure(out, fig, 80)
