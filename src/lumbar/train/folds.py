"""Cross-validation of a torch model: every fold through the one training loop, a fixed schedule, OOF
predictions from the final weights (the held-out fold is scored, never used to choose)."""
from __future__ import annotations

import io
import multiprocessing
import os
import queue
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data.cache import config_hash
from ..metric import probs_to_submission, score, solution_frame
from ..models.prior import fit_prior
from ..layout import Run
from ..models.views import AS_IS, View, average, levels, model_views
from .datasets import collate, viewed
from .loop import TrainConfig, fit, is_main, pick_device, predict
from .oof import write_oof


def held_out_views(name: str, cfg) -> list[View]:
    """The test-time views a fold predicts its held-out studies through: the engine's for the model
    (its spec's mirror and shifts, the config's `tta_shift`) with cfg.tta on; as they are otherwise,
    and for a model that is not registered."""
    from ..models.registry import get_spec

    try:
        spec = get_spec(name)
    except ValueError:
        return [AS_IS]
    if not getattr(cfg, "tta", False):
        return [AS_IS]
    return model_views(spec, mirror=True, shift=getattr(cfg, "tta_shift", 0))


def held_out_probs(model, val_set, batch_size: int, device, amp: bool, views: list[View] = (AS_IS,),
                   desc: str = "oof") -> np.ndarray:
    """A fold's probabilities [n, 25, 3] for its held-out studies, as the engine predicts test studies:
    the mean over the views (each brought back to the study's own columns), so the OOF predictions the
    ensemble is fitted on are what it is applied to."""
    views = list(views)
    probs = [predict(model, val_set if v == AS_IS else viewed(val_set, v), collate, batch_size, device, amp,
                     desc=desc if v == AS_IS else f"{desc} {v.name}") for v in views]
    return average(views, probs).astype(np.float32)


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


# Config fields that change only how the held-out studies are predicted, not the weights: a finished
# fold is not retrained for them (training again with another tta_shift re-predicts the OOF alone).
PREDICTION_ONLY = ("tta", "tta_shift")


def fold_identity(cfg, train_ids: np.ndarray, train_y: np.ndarray, train_set, inputs: list[str] | None,
                  tr: np.ndarray) -> dict:
    """What a fold's weights were trained on, part by part (the loop names the part that changed): the
    config, the training studies, their labels, and their inputs (the files, and the cache entries'
    keys: they hash the crop geometry, the slice selection and the crop regions)."""
    entries = getattr(train_set, "entries", None)
    keys = getattr(entries, "keys", None)
    trained = {k: v for k, v in asdict(cfg).items() if k not in PREDICTION_ONLY}
    return {"config": config_hash(trained), "studies": config_hash(train_ids.tolist()),
            "labels": config_hash(np.asarray(train_y).tolist()),
            "inputs": config_hash([inputs[i] for i in tr] if inputs is not None else None, keys)}


def fold_processes(cfg, n_run: int) -> int:
    """How many folds train at once (TrainConfig.fold_workers; 0 decides by the machine)."""
    from ..devices import cpu_cores, cuda_count, dist_info

    if n_run <= 1 or dist_info()[1] > 1:
        return 1  # torchrun already spreads one fold over the processes
    if cfg.fold_workers > 0:
        return min(cfg.fold_workers, n_run)
    if cfg.device != "cpu" and cuda_count():
        return 1  # a forked process must not touch CUDA, and one fold fills a GPU
    return n_run if cpu_cores() > 1 else 1


def cross_validate(name: str, cfg, ids: np.ndarray, y: np.ndarray, fold: np.ndarray, n_folds: int, run: Path,
                   make_sets, make_model, postprocess, on_fold=None,
                   inputs: list[str] | None = None) -> tuple[np.ndarray, list[float], list]:
    """Every fold through the one loop: OOF probabilities [n, 25, 3] (post-processed with the fold's
    prior, e.g. for missing series), each fold's score, both from the final weights of a fixed schedule
    (the held-out fold is scored, never used to choose; with cfg.tta, the held-out studies are predicted
    through the model's test-time views, as the kernel does: held_out_views), and what on_fold(model, val_set, va, device)
    returned per fold. Folds other than cfg.only_fold are skipped when it is set. On a CPU the folds
    train at once in forked processes (fold_processes); the result is the same as one at a time."""
    tcfg = train_config(cfg)
    views = held_out_views(name, cfg)
    curve_views = views[:dict(levels(views)).get("mirror", 1)]

    def held_out(m, val_set, device, desc: str) -> np.ndarray:
        return held_out_probs(m, val_set, cfg.batch_size, device, cfg.amp, views, desc)

    def run_fold(k: int) -> dict | None:
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        prior = fit_prior(y[tr])
        sol = solution_frame(ids[va], y[va])
        train_set, val_set = make_sets(tr, va)
        torch.manual_seed(cfg.seed + k)
        model = make_model()
        if hasattr(model, "init_prior"):
            model.init_prior(prior)

        def evaluate(m, device) -> float:  # the curves: as is and mirrored (the shifts only for the OOF: 5x)
            probs = held_out_probs(m, val_set, cfg.batch_size, device, cfg.amp, curve_views, "val")
            return score(sol, probs_to_submission(ids[va], postprocess(probs, va, prior)))

        res = fit(model, train_set, tcfg, Run(run).fold(name, k), collate, evaluate, name=f"{name} fold {k}",
                  run_key=fold_identity(cfg, ids[tr], y[tr], train_set, inputs, tr))
        if not is_main():
            return None
        device = pick_device(cfg.device)
        probs = postprocess(held_out(model, val_set, device, "oof"), va, prior)
        write_oof(Run(run).fold(name, k), "oof", ids[va], probs)
        extra = on_fold(model, val_set, va, device) if on_fold is not None else None
        return {"probs": probs, "score": score(sol, probs_to_submission(ids[va], probs)), "epochs": res.epochs_run,
                "extra": extra}

    only = getattr(cfg, "only_fold", -1)
    ks = [k for k in range(n_folds) if only < 0 or k == only]
    workers = fold_processes(cfg, len(ks))
    if workers > 1:
        print(f"{name}: {len(ks)} folds in {workers} processes at once (fold_workers={cfg.fold_workers})", flush=True)
        done = in_processes(run_fold, ks, workers, name)
    else:
        done = {k: run_fold(k) for k in ks}
    oof = np.zeros((len(ids), 25, 3), np.float32)
    scores, extras = [], []
    for k in ks:
        if done[k] is None:  # a rank other than the main one of torchrun
            continue
        oof[fold == k] = done[k]["probs"]
        scores.append(done[k]["score"])
        extras.append(done[k]["extra"])
        print(f"{name} fold {k}: val score {scores[-1]:.4f} after {done[k]['epochs']} epochs (final weights)")
    return oof, scores, extras


class FoldError(RuntimeError):
    pass


class _Lines(io.TextIOBase):
    """A forked fold's stdout or stderr: whole lines sent to the parent, which prints them where its own
    output goes (a terminal, a log file, pytest's capture)."""

    def __init__(self, queue, stream: int):
        self.queue, self.stream, self.buf = queue, stream, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buf += text
        if "\n" in self.buf:
            head, self.buf = self.buf.rsplit("\n", 1)
            self.queue.put(("out", self.stream, head + "\n"))
        return len(text)

    def flush(self) -> None:
        if self.buf:
            self.queue.put(("out", self.stream, self.buf))
            self.buf = ""


def _fold_child(run_fold, k: int, queue) -> None:
    os.environ["LUMBAR_PROGRESS"] = "0"  # lines, not bar redraws, from a process without a terminal
    # One thread: the folds are the parallelism, and the OpenMP that torch links (libgomp) hangs in a
    # forked child that starts threads of its own once the parent has used its pool.
    torch.set_num_threads(1)
    sys.stdout, sys.stderr = _Lines(queue, 1), _Lines(queue, 2)
    try:
        result = run_fold(k)
        sys.stdout.flush(), sys.stderr.flush()
        queue.put(("done", k, result))
    except BaseException:
        sys.stdout.flush(), sys.stderr.flush()
        queue.put(("error", k, traceback.format_exc()))


def in_processes(run_fold, ks: list[int], workers: int, name: str) -> dict[int, object]:
    """run_fold(k) for every k, at most `workers` at once, each in a forked process: {k: its result}.
    Their output arrives here line by line; a fold that fails or dies raises FoldError naming it (the
    folds that finished keep their checkpoints, so running again resumes)."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    pending, running, results = list(ks), {}, {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                k = pending.pop(0)
                running[k] = ctx.Process(target=_fold_child, args=(run_fold, k, q), name=f"{name} fold {k}")
                running[k].start()
            try:
                msg = q.get(timeout=2.0)
            except queue.Empty:
                dead = {k: p.exitcode for k, p in running.items() if not p.is_alive()}
                if dead and q.empty():  # gone without a result (killed: out of memory, a signal)
                    k, code = next(iter(dead.items()))
                    raise FoldError(f"{name} fold {k}: its process ended with exit code {code} before finishing; "
                                    "the other folds' checkpoints are kept: run again to resume")
                continue
            if msg[0] == "out":
                print(msg[2], end="", file=sys.stdout if msg[1] == 1 else sys.stderr, flush=True)
            elif msg[0] == "done":
                results[msg[1]] = msg[2]
                running.pop(msg[1]).join()
            else:
                raise FoldError(f"{name} fold {msg[1]} failed:\n{msg[2]}")
    finally:
        for p in running.values():
            p.terminate()
            p.join()
    return results
