"""The level network's training data and reports for `train --model slice_select`: the labelled canal
slice's thumbnails, the second look's patches, the held-out level errors and their figure."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import schema
from ..data.cache import StudyCache
from ..data.volumes import series_pixels
from ..files import write_figure
from ..preprocess.levels import FINE_JITTER_MM, FINE_MM, LevelConfig, LevelLocaliser, stack_at, to_thumb
from ..preprocess.pipeline import labels_for, true_selection
from ..preprocess.placement import fit_offsets, Geometry
from ..preprocess.slice_select import SliceSelector


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


def fit_levels(sel: SliceSelector, cfg, samples: list, points: list, fine: list, desc: str) -> None:
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
