"""Cross-validation of a torch model: every fold through the one training loop, a fixed schedule, OOF
predictions from the final weights (the held-out fold is scored, never used to choose)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data.cache import config_hash
from ..metric import probs_to_submission, score, solution_frame
from ..models.prior import fit_prior
from ..layout import Run
from .datasets import collate
from .loop import TrainConfig, fit, is_main, pick_device, predict
from .oof import write_oof


def train_config(cfg) -> TrainConfig:
    names = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: getattr(cfg, k) for k in names if hasattr(cfg, k)})


def study_inputs(studies) -> list[str]:
    """Per study, a fingerprint of the files its inputs are decoded from (series folders' file names and
    sizes): replaced or added images make a fold's inputs new, whatever the cache holds."""
    out = []
    for st in studies:
        files = sorted((r.series_id, f.name, f.stat().st_size) for recs in st.series.values() for r in recs
                       if r.path.is_dir() for f in r.path.glob("*.dcm"))
        out.append(config_hash(files))
    return out


def fold_identity(cfg, train_ids: np.ndarray, train_y: np.ndarray, train_set, inputs: list[str] | None,
                  tr: np.ndarray) -> dict:
    """What a fold's weights were trained on, part by part (the loop names the part that changed): the
    config, the training studies, their labels, and their inputs (the files, and the cache entries'
    keys: they hash the crop geometry, the slice selection and the crop regions)."""
    entries = getattr(train_set, "entries", None)
    keys = getattr(entries, "keys", None)
    return {"config": config_hash(asdict(cfg)), "studies": config_hash(train_ids.tolist()),
            "labels": config_hash(np.asarray(train_y).tolist()),
            "inputs": config_hash([inputs[i] for i in tr] if inputs is not None else None, keys)}


def cross_validate(name: str, cfg, ids: np.ndarray, y: np.ndarray, fold: np.ndarray, n_folds: int, run: Path,
                   make_sets, make_model, postprocess, on_fold=None,
                   inputs: list[str] | None = None) -> tuple[np.ndarray, list[float]]:
    """Every fold through the one loop: OOF probabilities [n, 25, 3] (post-processed with the fold's
    prior, e.g. for missing series) and each fold's score, both from the final weights of a fixed
    schedule: the held-out fold is scored, never used to choose. Folds other than cfg.only_fold are
    skipped when it is set."""
    oof = np.zeros((len(ids), 25, 3), np.float32)
    tcfg, scores = train_config(cfg), []
    for k in range(n_folds):
        if getattr(cfg, "only_fold", -1) >= 0 and k != cfg.only_fold:
            continue
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        prior = fit_prior(y[tr])
        sol = solution_frame(ids[va], y[va])
        train_set, val_set = make_sets(tr, va)
        torch.manual_seed(cfg.seed + k)
        model = make_model()
        if hasattr(model, "init_prior"):
            model.init_prior(prior)

        def evaluate(m, device, va=va, val_set=val_set, prior=prior, sol=sol) -> float:
            probs = predict(m, val_set, collate, cfg.batch_size, device, cfg.amp, desc="val")
            return score(sol, probs_to_submission(ids[va], postprocess(probs, va, prior)))

        res = fit(model, train_set, tcfg, Run(run).fold(name, k), collate, evaluate, name=f"{name} fold {k}",
                  run_key=fold_identity(cfg, ids[tr], y[tr], train_set, inputs, tr))
        if not is_main():
            continue
        device = pick_device(cfg.device)
        oof[va] = postprocess(predict(model, val_set, collate, cfg.batch_size, device, cfg.amp, desc="oof"), va, prior)
        write_oof(Run(run).fold(name, k), "oof", ids[va], oof[va])
        if on_fold is not None:
            on_fold(model, val_set, va, device)
        scores.append(score(sol, probs_to_submission(ids[va], oof[va])))
        print(f"{name} fold {k}: val score {scores[-1]:.4f} after {res.epochs_run} epochs (final weights)")
    return oof, scores


