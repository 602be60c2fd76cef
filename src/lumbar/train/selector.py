"""`train --model slice_select`: the slice selector's members on every fold, the level network, the local
scorers and rankers, and the held-out selection each later stage reads (oof selection, reports)."""
from __future__ import annotations

import pickle
import shutil
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .. import config as cfgmod, schema
from ..data.cache import StudyCache
from ..data.volumes import keep_geometry, pixels_reader, series_pixels, study_volumes
from ..files import write_bytes, write_json
from ..layout import Run
from ..preprocess.crops import CROPS
from ..preprocess.evidence import candidates, features, Scorer
from ..preprocess.pipeline import (cache_version, features_cached, geometric, labelled_slices, level_points,
                                   sagittal_thumbs, select, series_items, series_probas, study_features,
                                   training_rows)
from ..preprocess.placement import Geometry, labelled_points, METHODS, place
from ..preprocess.ranker import candidate_patches, Ranker
from ..preprocess.slice_select import MEMBERS, SliceSelector
from ..progress import bar
from .levels import (fine_sample, fit_levels, format_levels, level_errors, level_example, level_points_figure,
                     level_report, level_samples)
from .runner import load_train, register, request_of, RunConfig
from .selection import (_compare, choose_methods, format_report, pick_sigma, selection_report, shipped,
                        SHIPPED_METHOD, SIGMAS, stack_rows)


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
    rank_steps: int = 3000  # its optimiser steps at most, whatever the number of studies (20 epochs at 1,975 studies
    # were 13,460 steps, 6 fits of 25-40 min on a CPU core; up to ~400 studies 20 epochs stay under the cap); 0 = no cap
    fold_workers: int = 0  # folds fitted at once, in forked processes of one thread each; 0: one per core when
    # the level network trains on the CPU, none (in this process) when it has a GPU

def _features_job(args):
    study, cache_dir = args
    _featurise(study, StudyCache(cache_dir, cache_version()))
    return study.study_id


def _featurise(study, cache: StudyCache) -> None:
    if features_cached(study, cache):  # a resumed stage: nothing to decode
        return
    vols = study_volumes(study, cache)
    study_features(study, cache, vols)
    sagittal_thumbs(study, cache, vols)
    keep_geometry(study, cache, vols)  # what load_features reads instead of decoding again


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
    tasks = FinishedTasks(Run(run), {**request_of(data, rc, overrides), "cache": cache_version()})
    folds, full = _cross_fit(ctx, rc.n_folds, fold_workers(cfg), tasks)
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
    tasks.clear()  # the stage's own files now hold everything (done.json follows)
    return result


class FinishedTasks:
    """The cross-fit's finished tasks (each fold, and the fit on every study) in the run folder, each
    written atomically as it returns, with the request it answered (data, folds, seed, overrides, the
    cache's version): a run killed in the middle of the stage (an hour of CPU at the competition's size)
    loads those on resume and fits only the rest. Pickled, as the fold workers return them: they are read
    back only by the run that wrote them, and removed when the stage is done (weights carry no pickle)."""

    def __init__(self, run: Run, request: dict):
        self.run, self.request = run, request

    def load(self, name: str):
        path = self.run.selector_task(name)
        if not path.exists():
            return None
        try:
            saved = pickle.loads(path.read_bytes())
        except Exception:  # a file from other code or damaged: fit that task again
            return None
        return saved["result"] if saved.get("request") == self.request else None

    def save(self, name: str, result) -> None:
        write_bytes(self.run.selector_task(name), pickle.dumps({"request": self.request, "result": result}))

    def clear(self) -> None:
        shutil.rmtree(self.run.selector_tasks, ignore_errors=True)


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


def _cross_fit(inputs: dict, n_folds: int, workers: int, tasks: FinishedTasks | None = None
               ) -> tuple[list[dict], SliceSelector]:
    """(each fold's held-out results in fold order, the selector fitted on every study): in this process,
    or (workers > 1) in that many forked processes of one thread each, so the single-threaded parts of a
    fold (the SVM, the MLP, placing the held-out studies) use every core; the final fit is one more task
    among the folds (five folds and it fill three rounds of two). With `tasks`, each task is saved as it
    returns and one saved for the same request is not fitted again."""
    names = [f"fold{k}" for k in range(n_folds)] + ["all"]
    got = {n: r for n in names if tasks is not None and (r := tasks.load(n)) is not None}
    if got:
        print(f"slice selector: {', '.join(got)} reused from an earlier run of this stage "
              f"({tasks.run.selector_tasks}); fitting {', '.join(n for n in names if n not in got) or 'nothing'}")

    def finished(name: str, result) -> None:
        got[name] = result
        if tasks is not None:
            tasks.save(name, result)

    _FOLD_INPUTS.clear()
    _FOLD_INPUTS.update(inputs)
    try:
        todo = [n for n in names if n not in got]
        workers = min(workers, len(todo))
        if workers <= 1:
            for n in bar(todo, desc="slice selector folds"):
                finished(n, _fit_all() if n == "all" else _held_out_fold(int(n[4:])))
        else:
            import multiprocessing
            from concurrent.futures import as_completed, ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                     initializer=_fold_worker_init) as pool:
                # the fit on every study, the longest task, first: it runs beside the folds, not after them
                futures = {(pool.submit(_fit_all, 1) if n == "all" else pool.submit(_held_out_fold, int(n[4:]), 1)): n
                           for n in sorted(todo, key=lambda n: n != "all")}
                for f in bar(as_completed(futures), total=len(futures),
                             desc=f"slice selector folds ({workers} processes)"):
                    finished(futures[f], f.result())
        return [got[f"fold{k}"] for k in range(n_folds)], got["all"]
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
                           seed=cfg.seed, device=cfg.device, desc=desc, max_steps=cfg.rank_steps)
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
