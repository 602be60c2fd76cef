"""Where everything lives in a run folder and in a weights folder: the one place that builds those paths.

A run folder (`runs/default`) holds what training writes, one folder per stage:

    folds.csv                         the study-level split every stage of the run shares
    oof/<model>.csv                   out-of-fold predictions, submission format
    <stage>/config.json, report.json, done.json (written when the stage's trainer returns)
    <model>/fold<k>/                  one fold's training: last.pt (resume), weights.pt, log.csv, curves.png
    prior/all.json, prior/fold<k>.json
    slice_select/model/               the fitted selector; slice_select/oof_selection.json
    slice_select/tasks/<fold k|all>.pkl  a finished task of the selector's cross-fit (resume), until the stage is done
    crops/regions.json, crops/regions_fold<k>.json
    superres/net.pt
    ensemble/ensemble.json

A weights folder (`weights/`) is a run's exported subset, paths relative to it (the manifest lists them):
prior.json, slice_select/model/*, crops/regions.json, crops/config.json, <model>/fold<k>.pt, ensemble.json.
"""
from __future__ import annotations

from pathlib import Path


class Run:
    """The paths of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    def stage(self, name: str) -> Path:
        return self.root / name

    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    @property
    def oof_dir(self) -> Path:
        return self.root / "oof"

    def oof(self, model: str) -> Path:
        return self.oof_dir / f"{model}.csv"

    def config(self, stage: str) -> Path:
        return self.stage(stage) / "config.json"

    def report(self, stage: str) -> Path:
        return self.stage(stage) / "report.json"

    def done(self, stage: str) -> Path:
        return self.stage(stage) / "done.json"

    def fold(self, model: str, k: int) -> Path:
        return self.stage(model) / f"fold{k}"

    def fold_weights(self, model: str, k: int) -> Path:
        return self.fold(model, k) / "weights.pt"

    def trained_folds(self, model: str) -> list[tuple[int, Path]]:
        """(fold, weights.pt) of every fold of a model that finished training, in fold order."""
        found = self.stage(model).glob("fold*/weights.pt")
        return sorted(((int(p.parent.name[4:]), p) for p in found), key=lambda kp: kp[0])

    def prior(self, k: int | None = None) -> Path:
        return self.stage("prior") / ("all.json" if k is None else f"fold{k}.json")

    @property
    def selector(self) -> Path:
        return self.stage("slice_select") / "model"

    @property
    def selector_tasks(self) -> Path:
        return self.stage("slice_select") / "tasks"

    def selector_task(self, name: str) -> Path:
        return self.selector_tasks / f"{name}.pkl"

    @property
    def oof_selection(self) -> Path:
        return self.stage("slice_select") / "oof_selection.json"

    def regions(self, k: int | None = None) -> Path:
        return self.stage("crops") / ("regions.json" if k is None else f"regions_fold{k}.json")

    @property
    def superres_net(self) -> Path:
        return self.stage("superres") / "net.pt"

    @property
    def ensemble(self) -> Path:
        return self.stage("ensemble") / "ensemble.json"


class WeightsLayout:
    """The relative paths inside a weights folder (what export writes and the manifest lists)."""
    MANIFEST = "manifest.json"
    METADATA = "dataset-metadata.json"
    PRIOR = "prior.json"
    SELECTOR = "slice_select/model"
    SELECTOR_INDEX = "slice_select/model/selector.json"
    REGIONS = "crops/regions.json"
    CROPS_CONFIG = "crops/config.json"
    ENSEMBLE = "ensemble.json"

    @staticmethod
    def fold(model: str, k: int) -> str:
        return f"{model}/fold{k}.pt"

    @staticmethod
    def config(model: str) -> str:
        return f"{model}/config.json"
