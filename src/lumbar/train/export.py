"""`python -m lumbar export` (the last step of `make train`): a run's inference artefacts into weights/.

The folder is also a Kaggle dataset (dataset-metadata.json): `kaggle datasets version -p weights -r zip`
uploads it. Every file is written through a temporary name, the manifest last, so a killed export
leaves either the old manifest (whose sha256 checks then refuse the new files) or a complete new one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from ..files import atomic_path, write_json
from ..layout import Run, WeightsLayout
from ..infer.weights import MANIFEST, MANIFEST_VERSION, WeightsError, library_versions, sha256
from ..models.registry import predictors


def data_fingerprint(data: str | Path) -> str:
    """sha1 over the training CSVs (labels, series, coordinates): which data the weights learned from."""
    from ..data.catalog import find_root

    root = find_root(data)
    h = hashlib.sha1()
    for name in ("train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv"):
        p = root / name
        if p.exists():
            h.update(name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _report(run: Run, model: str) -> dict:
    p = run.report(model)
    return json.loads(p.read_text()) if p.exists() else {}


def export_weights(run: str | Path, data: str | Path, out: str | Path = "weights",
                   dataset_id: str | None = None) -> dict:
    """Copy a trained run's inference artefacts into `out` with manifest.json and dataset-metadata.json.
    Models that were not trained are left out (inference then uses what is there); the prior is required.
    Paths inside `out` are the run's (slice_select/model/, crops/), so one loader reads either."""
    import torch

    from .loop import atomic_torch_save

    run, out, W = Run(run), Path(out), WeightsLayout
    prior = run.prior()
    if not prior.exists():
        raise WeightsError(f"{prior}: no prior in this run; run `make train` (or `python -m lumbar train --model prior`) first")
    for old in _listed(out):  # files of an earlier export that this one may not rewrite
        (out / old).unlink(missing_ok=True)
    entries: list[dict] = []

    def record(rel: str, kind: str, fold: int | None = None, config: dict | None = None,
               cv_score: float | None = None) -> None:
        entries.append({"path": rel, "sha256": sha256(out / rel), "kind": kind, "fold": fold,
                        "config": config, "cv_score": cv_score})

    def add(src: Path, rel: str, kind: str, **kw) -> None:
        _copy(src, out / rel)
        record(rel, kind, **kw)

    add(prior, W.PRIOR, "prior", cv_score=_oof_score(run.root, "prior", data))
    if (run.selector / "selector.json").exists():
        for f in sorted(run.selector.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                add(f, f"{W.SELECTOR}/{f.name}", "slice_select")
        add(run.regions(), W.REGIONS, "crops")
        add(run.config("crops"), W.CROPS_CONFIG, "crops")
    models = {}
    for name in (spec.name for spec in predictors()):
        cfg_path = run.config(name)
        folds = run.trained_folds(name)
        if not cfg_path.exists() or not folds:
            continue
        report = _report(run, name)
        config = json.loads(cfg_path.read_text())
        fold_scores = report.get("fold_scores", [])
        for k, p in folds:
            state = torch.load(p, map_location="cpu", weights_only=True)["model"]
            # weights only: no optimiser, loadable with weights_only=True
            atomic_torch_save(state, out / W.fold(name, k))
            record(W.fold(name, k), name, fold=k, config=config,
                   cv_score=fold_scores[k] if k < len(fold_scores) else None)
        models[name] = {"folds": len(folds), "oof_score": report.get("oof_score"), "config": config}
    if run.ensemble.exists():
        rep = _report(run, "ensemble")
        add(run.ensemble, W.ENSEMBLE, "ensemble", cv_score=rep.get("ensemble_nested_oof"))
    manifest = {"format": MANIFEST_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "data_fingerprint": data_fingerprint(data), "libraries": library_versions(),
                "models": models, "artefacts": entries}
    write_json(out / W.MANIFEST, manifest)
    write_json(out / W.METADATA, {"title": "lumbar-weights", "id": dataset_id or f"{kaggle_user() or PLACEHOLDER_USER}"
                                  "/lumbar-weights", "licenses": [{"name": "CC0-1.0"}]})
    return manifest


PLACEHOLDER_USER = "YOUR_KAGGLE_USERNAME"


def kaggle_user() -> str | None:
    """The Kaggle user name where it is known: $KAGGLE_USERNAME, else the kaggle CLI's own kaggle.json."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    try:
        return json.loads((folder / "kaggle.json").read_text()).get("username") or None
    except (OSError, ValueError, AttributeError):
        return None


def _oof_score(run: Path, model: str, data) -> float | None:
    """A model's OOF score from its OOF file (the prior has no report)."""
    try:
        from ..data.catalog import read_labels
        from ..metric import labels_to_array, probs_to_submission, score, solution_frame
        from ..train.oof import read_oof

        labels = read_labels(data)
        ids = labels["study_id"].astype(int).to_numpy()
        p = read_oof(run, model, ids)
        return round(score(solution_frame(ids, labels_to_array(labels)), probs_to_submission(ids, p)), 4)
    except Exception:
        return None


def _listed(folder: Path) -> list[str]:
    try:
        return [a["path"] for a in json.loads((folder / MANIFEST).read_text())["artefacts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
