"""`python -m lumbar export` (the last step of `make train`): a run's inference artefacts into weights/.

The folder is also a Kaggle dataset (dataset-metadata.json): `kaggle datasets version -p weights -r zip`
uploads it. Every model artefact gets a probe (infer/probes.py): an input and what the artefact computed
on it here, which the kernel checks before it trusts the artefact in whatever image it meets. Nothing in
the folder is a pickle: the selector's members are arrays and JSON, the torch files tensors only. Every file is written through a temporary name, the manifest last, so a killed export
leaves either the old manifest (whose sha256 checks then refuse the new files) or a complete new one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .. import config as cfgmod
from ..files import atomic_path, write_json
from ..layout import Run, WeightsLayout
from ..infer import probes as P
from ..infer.ensemble import Ensemble
from ..infer.weights import MANIFEST, MANIFEST_VERSION, WeightsError, library_versions, sha256
from ..models.registry import create_model, for_inference, get_spec, predictors
from ..preprocess.slice_select import PROBES, STYPE_KEY, SliceSelector, member_path


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

    def probe(rel: str, kind: str, inputs: dict, outputs: dict) -> None:
        """The artefact's probe file, listed (with its sha256) and named in the artefact's entry."""
        prel = P.probe_rel(rel)
        P.save_probe(out / prel, inputs, outputs, kind)
        record(prel, "probe")
        next(e for e in entries if e["path"] == rel)["probe"] = prel

    def add(src: Path, rel: str, kind: str, **kw) -> None:
        _copy(src, out / rel)
        record(rel, kind, **kw)

    add(prior, W.PRIOR, "prior", cv_score=_oof_score(run.root, "prior", data))
    if (run.selector / "selector.json").exists():
        for f in sorted(run.selector.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.name != PROBES:
                add(f, f"{W.SELECTOR}/{f.name}", "slice_select")
        add(run.regions(), W.REGIONS, "crops")
        add(run.config("crops"), W.CROPS_CONFIG, "crops")
        _probe_stage_one(run, out, probe)
    models, configs = {}, {}
    for name in (spec.name for spec in predictors()):
        cfg_path = run.config(name)
        folds = run.trained_folds(name)
        if not cfg_path.exists() or not folds:
            continue
        report = _report(run, name)
        config = json.loads(cfg_path.read_text())
        fold_scores = report.get("fold_scores", [])
        spec = get_spec(name)
        net_cfg = for_inference(cfgmod.from_dict(spec.config, config, strict=False))
        crops = json.loads(run.config("crops").read_text()) if run.config("crops").exists() else {}
        for k, p in folds:
            state = torch.load(p, map_location="cpu", weights_only=True)["model"]
            # weights only: no optimiser, loadable with weights_only=True
            atomic_torch_save(state, out / W.fold(name, k))
            record(W.fold(name, k), name, fold=k, config=config,
                   cv_score=fold_scores[k] if k < len(fold_scores) else None)
            if spec.example is not None:
                net = create_model(name, net_cfg)
                net.load_state_dict(torch.load(out / W.fold(name, k), map_location="cpu", weights_only=True))
                inputs = spec.example(net_cfg, crops, k)
                probe(W.fold(name, k), "fold", inputs, P.run_fold(net, inputs))
        models[name] = {"folds": len(folds), "oof_score": report.get("oof_score"), "config": config}
        configs[name] = net_cfg
    if _probe_inputs(out, data, configs):
        record(P.INPUTS, "input_probe")
    if run.ensemble.exists():
        rep = _report(run, "ensemble")
        add(run.ensemble, W.ENSEMBLE, "ensemble", cv_score=rep.get("ensemble_nested_oof"))
        ens = Ensemble.load(out / W.ENSEMBLE)
        inputs = P.ensemble_inputs(ens)
        probe(W.ENSEMBLE, "ensemble", inputs, P.run_ensemble(ens, inputs))
    manifest = {"format": MANIFEST_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "data_fingerprint": data_fingerprint(data), "libraries": library_versions(),
                "probe_tolerances": {k: [t.atol, t.rtol] for k, t in P.TOLERANCES.items()},
                "models": models, "artefacts": entries}
    write_json(out / W.MANIFEST, manifest)
    write_json(out / W.METADATA, {"title": "lumbar-weights", "id": dataset_id or f"{kaggle_user() or PLACEHOLDER_USER}"
                                  "/lumbar-weights", "licenses": [{"name": "CC0-1.0"}]})
    return manifest


def _probe_stage_one(run: Run, out: Path, probe) -> None:
    """Each selector member's probe (the training rows kept at fit and what the fitted scikit-learn or
    XGBoost model predicted on them), checked here against the member as written: a conversion that
    predicts differently stops the export, not the kernel. Then the level localiser's and rankers'."""
    import numpy as np

    W = WeightsLayout
    folder = out / W.SELECTOR
    try:
        sel = SliceSelector.load(folder, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{e}") from None
    recorded = run.selector / PROBES
    if not recorded.exists():
        raise WeightsError(f"{recorded}: the selector was saved without its probes (an older format); "
                           "re-train it: python -m lumbar train --model slice_select")
    with np.load(recorded, allow_pickle=False) as z:
        kept = {k: z[k] for k in z.files}
    for stype, models in sel.members.items():
        key = STYPE_KEY[stype]
        for m in models:
            rel = f"{W.SELECTOR}/{member_path(folder, stype, m).name}"
            kind = "xgb" if m == "xgb" else "member"
            inputs, expected = {"rows": kept[f"{key}/rows"]}, {"proba": kept[f"{key}/{m}"]}
            worst, ok = P.check(kind, expected, P.run_member(sel, stype, m, inputs))
            if not ok:
                raise WeightsError(f"{out / rel}: as written it predicts up to {worst:.3g} away from the fitted "
                                   f"model on its probe rows (tolerance {P.TOLERANCES[kind]})")
            probe(rel, kind, inputs, expected)
    if sel.levels is not None:
        inputs = P.levels_inputs(sel.levels)
        probe(f"{W.SELECTOR}/levels.pt", "levels", inputs, P.run_levels(sel.levels, inputs))
        if sel.geometry.rankers:
            inputs = P.ranker_inputs(sel.geometry)
            probe(f"{W.SELECTOR}/levels.json", "ranker", inputs, P.run_rankers(sel.geometry, inputs))


def _probe_inputs(out: Path, data, configs: dict) -> bool:
    """The input probe (infer/probes.py): the first training study with every series type, its volumes
    reduced, and each model's input made from them by the exported stage one, as the kernel makes them.
    False (and nothing written) where no model's input could be made."""
    import warnings
    from dataclasses import replace

    from ..data.cache import StudyCache
    from ..data.catalog import load_studies
    from ..data.volumes import study_volumes
    from ..infer.inputs import StudyInputs
    from ..models.registry import model_inputs
    from ..preprocess.crops import CropRegions
    from ..preprocess.pipeline import read_preprocess_config

    W = WeightsLayout
    if not configs:
        return False
    sel = SliceSelector.load(out / W.SELECTOR) if (out / W.SELECTOR_INDEX).exists() else None
    regions = CropRegions.load(out / W.REGIONS) if (out / W.REGIONS).exists() else None
    pcfg = replace(read_preprocess_config(out), spare=0) if (out / W.CROPS_CONFIG).exists() else None
    wanted = model_inputs(configs)
    prepare = StudyInputs(sel, regions, pcfg, wanted, StudyCache(None, "input-probe"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        studies = load_studies(data, "train")
        study = next((st for st in studies if not st.missing_types), studies[0] if studies else None)
        if study is None:
            return False
        inputs = P.volumes_inputs(study.study_id, P.reduced(study_volumes(study)))
        study, vols = P.inputs_volumes(inputs)  # from the arrays the kernel will read, not the originals
        outputs = P.run_inputs(prepare, study, vols, wanted)
    if not outputs:
        return False
    P.save_probe(out / P.INPUTS, inputs, outputs, "inputs")
    return True


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
