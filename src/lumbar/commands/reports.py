"""`make local-score` writes reports/: the score table (markdown + PNG), confusion matrices and
calibration curves per condition group, every model's training curves, and example studies with their
crops and predicted points."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import schema
from ..data.catalog import read_labels
from ..metric import labels_to_array
from ..layout import Run
from ..files import write_figure
from .plots import pyplot
from .scoring import format_table, local_score
from ..train.oof import list_oof, read_oof

GROUP_COLS = schema.GROUP_COLUMNS


def score_figure(table: pd.DataFrame, out: Path) -> Path:
    """Left: the score per condition group. Right: overall with its bootstrap 95% interval, and each
    model's paired difference to the best single model with its interval (0 inside it: no measured gain)."""
    plt = pyplot()
    cols = [*schema.GROUPS, "overall"]
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    width = 0.8 / len(table)
    for i, (name, row) in enumerate(table.iterrows()):
        ax[0].bar(np.arange(len(cols)) + i * width, row[cols].to_numpy(), width, label=name)
    ax[0].set_xticks(np.arange(len(cols)) + 0.4 - width / 2, cols)
    ax[0].set_ylabel("weighted log loss (lower is better)")
    ax[0].legend(fontsize=8, ncol=3)
    ax[0].set_title("OOF score per condition group")
    names = list(table.index)
    yy = np.arange(len(names))
    if "ci_low" in table.columns:
        err = np.stack([table["overall"] - table["ci_low"], table["ci_high"] - table["overall"]])
        ax[1].errorbar(table["overall"], yy, xerr=err, fmt="o", capsize=3)
        ax[1].set_yticks(yy, names)
        ax[1].set_title("overall, 95% bootstrap interval")
    if "vs_best" in table.columns:
        err = np.stack([table["vs_best"] - table["vs_best_low"], table["vs_best_high"] - table["vs_best"]])
        ax[2].errorbar(table["vs_best"], yy, xerr=err, fmt="o", capsize=3, color="C1")
        ax[2].axvline(0, color="grey", lw=0.8)
        ax[2].set_yticks(yy, names)
        ax[2].set_title(f"minus {table.attrs.get('best_single')} (paired)")
    fig.tight_layout()
    return write_figure(out, fig, 110)


def confusion_figure(oof: dict[str, np.ndarray], y: np.ndarray, out: Path) -> Path:
    """Rows: models; columns: condition groups; each a 3 x 3 count of label vs most probable class."""
    plt = pyplot()
    models = [m for m in oof if m != "prior"] or list(oof)
    fig, axes = plt.subplots(len(models), 3, figsize=(9, 2.9 * len(models)), squeeze=False)
    for r, m in enumerate(models):
        pred = oof[m].argmax(-1)
        for c, (g, cols) in enumerate(GROUP_COLS.items()):
            t, p = y[:, cols].ravel(), pred[:, cols].ravel()
            keep = t >= 0
            cm = np.zeros((3, 3), int)
            np.add.at(cm, (t[keep], p[keep]), 1)
            ax = axes[r, c]
            ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
            for i in range(3):
                for j in range(3):
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8)
            ax.set_xticks(range(3), ["N/M", "Mod", "Sev"], fontsize=7)
            ax.set_yticks(range(3), ["N/M", "Mod", "Sev"], fontsize=7)
            ax.set_title(f"{m}: {g}", fontsize=9)
            if c == 0:
                ax.set_ylabel("label")
            if r == len(models) - 1:
                ax.set_xlabel("most probable")
    fig.tight_layout()
    return write_figure(out, fig, 100)


def calibration_figure(oof: dict[str, np.ndarray], y: np.ndarray, out: Path, bins: int = 10) -> Path:
    """Per group and class: predicted probability (binned) against the observed frequency, per model."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 3, figsize=(9, 8.4))
    edges = np.linspace(0, 1, bins + 1)
    for r, (g, cols) in enumerate(GROUP_COLS.items()):
        t = y[:, cols].ravel()
        keep = t >= 0
        for c, cls in enumerate(schema.SEVERITIES):
            ax = axes[r, c]
            ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls=":")
            for m, p in oof.items():
                pc = p[:, cols, c].ravel()[keep]
                hit = (t[keep] == c).astype(float)
                which = np.clip(np.digitize(pc, edges) - 1, 0, bins - 1)
                xs, ys = [], []
                for b in range(bins):
                    sel = which == b
                    if sel.sum() >= 5:
                        xs.append(pc[sel].mean())
                        ys.append(hit[sel].mean())
                ax.plot(xs, ys, marker="o", ms=3, label=m)
            ax.set_title(f"{g}: {cls}", fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            if r == 2:
                ax.set_xlabel("predicted probability")
            if c == 0:
                ax.set_ylabel("observed frequency")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return write_figure(out, fig, 100)


def curves_figure(run: Path, out: Path) -> Path | None:
    """reports/curves.png (curves_axes), or None when no model of the run has a log."""
    drawn = curves_axes(run)
    if drawn is None:
        return None
    fig, _ = drawn
    return write_figure(out, fig, 100)


def curves_axes(run: Path):
    """(figure, axes [2, models]) of every trained model's per-fold training curves from its log.csv
    files: the training loss on the top row, the validation measure (named by the log: the competition
    metric, or -PSNR for the super-resolution net) on the bottom row; one quantity per axis."""
    logs = {}
    for d in sorted(p for p in run.iterdir() if p.is_dir()):
        files = sorted(d.glob("fold*/log.csv")) or sorted(d.glob("log.csv"))
        if files:
            logs[d.name] = files
    if not logs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, len(logs), figsize=(4.2 * len(logs), 6.2), squeeze=False)
    for j, (name, files) in enumerate(logs.items()):
        val_name = "validation score (competition metric)"
        for f in files:
            log = pd.read_csv(f)
            tag = f.parent.name if f.parent.name.startswith("fold") else "all"
            axes[0, j].plot(log["epoch"], log["train_loss"], lw=1, marker=".", label=tag)
            scored = log[log["val_score"].notna()]  # eval_every > 1 scores only some epochs
            axes[1, j].plot(scored["epoch"], scored["val_score"], lw=1, marker=".", label=tag)
            if "val_name" in log.columns and isinstance(log["val_name"].iloc[0], str):
                val_name = log["val_name"].iloc[0]
        axes[0, j].set_title(name)
        axes[0, j].set_ylabel("training loss")
        axes[1, j].set_ylabel(val_name)
        for ax in axes[:, j]:
            ax.set_xlabel("epoch")
            ax.legend(fontsize=6, ncol=2, title="fold", title_fontsize=6)
    fig.tight_layout()
    return fig, axes


def example_figures(data, run: Path, out: Path, cache_dir: str | None, n: int = 2) -> list[Path]:
    """The show figure for a few held-out studies, with the predicted points (red) of the first
    registered model that predicts points on the crops, from the fold that did not train on them."""
    import torch

    from .. import config as cfgmod
    from ..data.cache import StudyCache
    from ..data.catalog import load_studies
    from ..data.volumes import study_volumes
    from ..models.registry import create_model, for_inference, predictors
    from .plots import show_study
    from ..preprocess.pipeline import cache_version, load_stage_one, preprocess_study

    try:
        selector, sel_id, regions, pcfg = load_stage_one(run)
    except FileNotFoundError:
        return []
    folds = pd.read_csv(Run(run).folds).set_index("study_id")["fold"].to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        studies = [s for s in load_studies(data, "train") if s.has_coords][:n]
    cache = StudyCache(cache_dir, cache_version()) if cache_dir else None
    spec = next((s for s in predictors() if s.points is not None and Run(run).config(s.name).exists()), None)
    cfg = for_inference(cfgmod.load(spec.config, Run(run).config(spec.name), strict=False)) if spec else None
    paths = []
    for st in studies:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entry = preprocess_study(st, selector, sel_id, regions, pcfg, cache)
        predicted = None
        ckpt = Run(run).fold_weights(spec.name, folds.get(st.study_id, 0)) if spec else None
        if ckpt is not None and ckpt.exists():
            net = create_model(spec.name, cfg)
            net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
            predicted = spec.points(net.eval(), entry)
        paths.append(show_study(st, study_volumes(st, cache), entry, out / f"example_{st.study_id}.png", predicted))
    return paths


def write_reports(data, run, out="reports", cache_dir: str | None = None, examples: int = 2,
                  table: pd.DataFrame | None = None) -> list[Path]:
    """score.md and the figures in `out`; `table`: local_score's, where the caller has it (its bootstraps
    are not redone)."""
    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if table is None:
        table = local_score(data, run)
    (out / "score.md").write_text(format_table(table) + "\n")
    paths = [out / "score.md", score_figure(table, out / "score.png")]
    labels = read_labels(data)
    ids = labels["study_id"].astype(np.int64).to_numpy()
    y = labels_to_array(labels)
    oof = {m: read_oof(run, m, ids) for m in list_oof(run)}
    paths += [confusion_figure(oof, y, out / "confusion.png"), calibration_figure(oof, y, out / "calibration.png")]
    c = curves_figure(run, out / "curves.png")
    if c is not None:
        paths.append(c)
    paths += example_figures(data, run, out, cache_dir, examples)
    return paths
