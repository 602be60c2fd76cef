"""`python -m lumbar attribution`: where each model's gap to the oracle is lost — stage one (which slice,
where the crop sits) or the model itself.

Every torch model of a run is scored on its held-out studies with each fold's own weights (nothing
retrained), its inputs built four ways:
- shipped: stage one as it ships (the held-out slice selection, the fold's crop regions) — the OOF;
- true_slices: each labelled (condition, level)'s own labelled slice, the fold's crop regions;
- true_points: the labelled slices, and each crop centred on its labelled points (same size as the
  fitted box). The sequence model reads whole slices, so for it this equals true_slices;
- true_patches: as true_points, and the model's patches cut at the labelled points instead of its own
  keypoints (both models cut patches around points): what a perfect localisation gives.
Rows without a label keep stage one's choice. Scores per condition group and overall, with paired
bootstrap intervals (the same resamples of studies for every variant) of each variant minus shipped.
stage_one_share = (shipped - true_points) / (shipped - oracle): the part of the model's gap to the
oracle that stage one's choices cost.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import config as cfgmod
from ..cv import read_folds
from ..data.cache import StudyCache
from ..data.catalog import find_root, load_studies, read_labels
from ..files import write_figure, write_json, write_text
from ..layout import Run
from ..metric import TERMS, labels_to_array, study_terms, submission_to_probs, term_scores
from ..models.prior import fit_prior
from ..preprocess.placement import centre_of, make_choice, per_level
from ..preprocess.pipeline import (build_crops, cache_version, labels_for, read_preprocess_config, study_crops,
                                   study_features, true_selection)
from ..progress import bar
from .scoring import interval, read_oracle, resamples, with_overall

VARIANTS = ("shipped", "true_slices", "true_points", "true_patches")
COLUMNS = [*TERMS, "overall"]


class CentredRegions:
    """A fold's crop regions whose boxes are centred on a study's labelled points (same size)."""

    def __init__(self, regions, centres: dict[str, np.ndarray]):
        self.regions, self.centres = regions, centres

    def box(self, name: str, img: np.ndarray, centre=None) -> tuple[np.ndarray, bool]:
        c = self.centres.get(name)
        return self.regions.box(name, img, centre if c is None else tuple(c))


def labelled_centres(study, vols, selection) -> dict[str, np.ndarray]:
    """Crop name -> the mean of its labelled points on the selected slice's series (stored pixels)."""
    by_id = {sid: v for items in vols.values() for sid, v in items}
    out = {}
    for name, (sid, *_) in selection.items():
        if sid in by_id:
            pts, _ = labels_for(study, name, sid, by_id[sid])
            ok = np.isfinite(pts).all(1)
            if ok.any():
                out[name] = pts[ok].mean(0)
    return out


def selections(study, cache, shipped: dict) -> dict[str, dict]:
    """The study's slice selection per variant: shipped, and shipped overridden by the labelled slices."""
    from ..data.volumes import study_volumes

    vols = study_volumes(study, cache)
    true = true_selection(study, study_features(study, cache, vols))
    merged = dict(shipped or {})
    for name, choice in true.items():  # the labelled slice(s), centred where stage one centred it
        sid, idx = choice[:2]
        got = merged.get(name, ())
        centre = centre_of(got) if len(got) >= 4 and got[0] == sid else None
        merged[name] = make_choice(sid, idx, centre, per_level(choice))
    return {"shipped": shipped, "true": merged, "vols": vols}


def _load_fold(name: str, run: Run, cfg, k: int):
    from ..models.registry import create_model, for_inference

    net = create_model(name, for_inference(cfg))
    state = torch.load(run.fold_weights(name, k), map_location="cpu", weights_only=True)
    net.load_state_dict(state["model"])  # the whole network (the multitask model's frozen ESPCN too)
    return net.eval()


def _predict(spec, net, entries: list[dict], force: bool, views=None, batch_size: int = 8) -> np.ndarray:
    """[n, 25, 3] from a fold's network on input entries, batched as the engine batches them (the
    spec's batch keys, plus the labelled points where the entries hold them, for `force`), averaged over
    the test-time views (models/views.py; as they are if None), as the held-out predictions and the
    engine are."""
    from ..infer.engine import stack_batch
    from ..models.views import AS_IS, average

    keys = [*spec.batch_keys, *[k for k in ("points",) if k not in spec.batch_keys and k in entries[0]]]
    views = list(views or [AS_IS])
    passes = [[v.apply(e, spec.mirror, spec.shift) for e in entries] for v in views]
    probs = []
    net.force_points = force
    try:
        with torch.no_grad():
            for j, inputs in enumerate(passes):
                out = []
                for i in range(0, len(inputs), batch_size):
                    batch = stack_batch(inputs[i:i + batch_size], keys, torch.device("cpu"))
                    out.append(net(batch)["probs"].float().numpy())
                probs.append(np.concatenate(out))
    finally:
        net.force_points = False
    return average(views, probs)


def _inputs(kind: str, study, sel: dict, regions, pcfg, fcfg, cache) -> dict[str, dict]:
    """Variant -> the study's input entry for a model reading `kind` ("crops" or "frames")."""
    from ..preprocess.frames import study_frames

    if kind == "frames":  # whole slices: no crop box to centre
        shipped = study_frames(study, fcfg, cache, sel["shipped"])
        true = study_frames(study, fcfg, cache, sel["true"])
        return {"shipped": shipped, "true_slices": true, "true_points": true, "true_patches": true}
    shipped = study_crops(study, sel["shipped"] or {}, regions, pcfg, cache, sel["vols"])
    true = study_crops(study, sel["true"], regions, pcfg, cache, sel["vols"])
    centred = build_crops(study, sel["vols"], sel["true"],
                          CentredRegions(regions, labelled_centres(study, sel["vols"], sel["true"])), pcfg)
    return {"shipped": shipped, "true_slices": true, "true_points": centred, "true_patches": centred}


# Every variant rebuilds a study's inputs from its decoded series and holds a fold's inputs at once: at 1,975
# studies that is hours and gigabytes for shares whose intervals a few hundred studies already make narrow.
MAX_STUDIES = 400


def sample_studies(study_ids: list[int], max_studies: int, seed: int = 0) -> np.ndarray:
    """The indices (sorted) of at most max_studies of the studies, drawn by their ids (0: all of them)."""
    n = len(study_ids)
    if max_studies <= 0 or n <= max_studies:
        return np.arange(n)
    order = np.argsort(np.asarray(study_ids, np.int64), kind="stable")  # the draw does not depend on file order
    return np.sort(order[np.random.default_rng(seed).choice(n, max_studies, replace=False)])


def model_variants(name: str, data, run, cache_dir: str, max_studies: int = MAX_STUDIES
                   ) -> tuple[list[int], dict[str, np.ndarray]]:
    """(study ids, variant -> held-out probabilities [n, 25, 3]) of one torch model of a run, on at most
    max_studies of its held-out studies (a seeded draw, the same for every model; 0: all)."""
    from ..models.registry import get_spec
    from ..preprocess.crops import CropRegions
    from ..train.runner import CONFIGS
    from ..train.selection import read_oof_selection
    from ..train.folds import held_out_views

    spec, r = get_spec(name), Run(run)
    if spec.inputs not in ("crops", "frames"):
        raise ValueError(f"attribution: model {name!r} reads {spec.inputs!r}; variants exist for crops and frames")
    folds = read_folds(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        studies = [s for s in load_studies(data, "train", folds) if s.fold >= 0]
    studies = [studies[i] for i in sample_studies([s.study_id for s in studies], max_studies)]
    cache = StudyCache(cache_dir, cache_version())
    shipped_sel = read_oof_selection(run)
    y = np.stack([s.labels for s in studies])
    fold = np.array([s.fold for s in studies])
    cfg = cfgmod.load(CONFIGS[name], r.config(name))
    pcfg = read_preprocess_config(run) if spec.inputs == "crops" else None
    fcfg = spec.input_config(cfg) if spec.inputs == "frames" else None
    out = {v: np.zeros((len(studies), 25, 3), np.float32) for v in VARIANTS}
    for k in sorted(set(fold.tolist())):
        va = np.flatnonzero(fold == k)
        prior = fit_prior(y[fold != k])
        net = _load_fold(name, r, cfg, k)
        regions = CropRegions.load(r.regions(k)) if spec.inputs == "crops" else None
        entries: dict[str, list] = {v: [] for v in VARIANTS}
        for i in bar(va, desc=f"{name} fold {k} inputs", leave=False):
            sel = selections(studies[i], cache, shipped_sel.get(studies[i].study_id))  # None: frames' naive rule
            for v, e in _inputs(spec.inputs, studies[i], sel, regions, pcfg, fcfg, cache).items():
                entries[v].append(e)
        for v in VARIANTS:
            p = _predict(spec, net, entries[v], force=v == "true_patches", views=held_out_views(name, cfg))
            out[v][va] = spec.postprocess(p, entries[v], prior) if spec.postprocess is not None else p
    return [s.study_id for s in studies], out


def summarise(probs: dict[str, np.ndarray], y: np.ndarray, oracle: np.ndarray | None, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Per variant: the score per metric term and overall, with intervals; each variant minus shipped
    (paired, the same resamples); the oracle's score and stage one's share of the gap to it."""
    counts = resamples(len(y), n_boot, seed)

    def columns(p: np.ndarray, c=None) -> np.ndarray:  # [..., 5]: the four terms and overall
        return with_overall(term_scores(study_terms(y, p), c))

    point = {v: columns(p) for v, p in probs.items()}
    boots = {v: columns(p, counts) for v, p in probs.items()}
    res: dict = {"variants": {}}
    for v in probs:
        row = {c: round(float(point[v][j]), 4) for j, c in enumerate(COLUMNS)}
        row["overall_ci"] = [round(x, 4) for x in interval(boots[v][:, -1])]
        d = boots[v] - boots["shipped"]
        row["minus_shipped"] = {c: [round(float(point[v][j] - point["shipped"][j]), 4),
                                    *[round(x, 4) for x in interval(d[:, j])]] for j, c in enumerate(COLUMNS)}
        res["variants"][v] = row
    if oracle is not None:
        o = columns(oracle)
        res["oracle"] = round(float(o[-1]), 4)
        gap = point["shipped"][-1] - o[-1]
        res["stage_one_share"] = round(float((point["shipped"][-1] - point["true_points"][-1]) / gap), 4) if gap > 0 else None
        res["localisation_share"] = (round(float((point["shipped"][-1] - point["true_patches"][-1]) / gap), 4)
                                     if gap > 0 else None)
    return res


def attribution(data, run, out, cache_dir: str = "cache", models: tuple[str, ...] | None = None,
                n_boot: int = 1000, max_studies: int = MAX_STUDIES) -> dict:
    """attribution.json (per model: shipped, true_slices, true_points, true_patches, oracle,
    stage_one_share and the intervals, over at most max_studies held-out studies), attribution.md and
    attribution.png in `out`."""
    from ..models.registry import predictors

    root = find_root(data)
    labels = read_labels(root)
    r, out = Run(run), Path(out)
    models = tuple(models or [s.name for s in predictors() if s.inputs in ("crops", "frames")
                               and r.config(s.name).exists() and r.fold_weights(s.name, 0).exists()])
    result: dict = {}
    for name in models:
        ids, probs = model_variants(name, data, run, cache_dir, max_studies)
        index = labels.set_index(labels["study_id"].astype(int))
        y = labels_to_array(index.loc[ids].reset_index(drop=True))
        bound = read_oracle(root)
        oracle = submission_to_probs(bound, ids) if bound is not None else None
        s = summarise(probs, y, oracle, n_boot)
        result[name] = {v: s["variants"][v]["overall"] for v in VARIANTS}
        result[name].update({"oracle": s.get("oracle"), "stage_one_share": s.get("stage_one_share"),
                             "localisation_share": s.get("localisation_share"), "studies": len(ids), "detail": s})
    write_json(out / "attribution.json", result)
    write_text(out / "attribution.md", format_markdown(result) + "\n")
    figure(result, out / "attribution.png")
    return result


def format_markdown(result: dict) -> str:
    lines = ["| model | variant | " + " | ".join(COLUMNS) + " | 95% CI | minus shipped (95% CI) |",
             "|---|---|" + "---|" * (len(COLUMNS) + 2)]
    for name, r in result.items():
        for v in VARIANTS:
            row = r["detail"]["variants"][v]
            d = row["minus_shipped"]["overall"]
            lines.append(f"| {name} | {v} | " + " | ".join(f"{row[c]:.4f}" for c in COLUMNS)
                         + f" | [{row['overall_ci'][0]:.4f}, {row['overall_ci'][1]:.4f}] | "
                         + ("—" if v == "shipped" else f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]") + " |")
        if r.get("oracle") is not None:
            lines.append(f"| {name} | oracle | | | | | {r['oracle']:.4f} | | stage one's share of the gap: "
                         f"{r['stage_one_share']:.1%}; with patches at the labelled points: {r['localisation_share']:.1%} |")
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    """One panel per model: overall score per variant with its interval, the oracle as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(result)), figsize=(4.5 * max(1, len(result)), 3.4), squeeze=False)
    for ax, (name, r) in zip(axes[0], result.items()):
        rows = [r["detail"]["variants"][v] for v in VARIANTS]
        mid = [x["overall"] for x in rows]
        err = np.array([[m - x["overall_ci"][0], x["overall_ci"][1] - m] for m, x in zip(mid, rows)]).T
        ax.errorbar(range(len(VARIANTS)), mid, yerr=err, fmt="o", capsize=4)
        if r.get("oracle") is not None:
            ax.axhline(r["oracle"], color="C2", ls="--", label="oracle")
            ax.legend(loc="upper right")
        ax.set_xticks(range(len(VARIANTS)), [v.replace("_", "\n") for v in VARIANTS])
        ax.set_ylabel("OOF score (competition metric, lower is better)")
        ax.set_title(f"{name}: inputs from stage one vs the labels")
    fig.tight_layout()
    write_figure(path, fig, 90)
