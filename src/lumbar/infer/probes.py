"""Probes: every serialised artefact proves, where it loads, that it computes what it computed at export.

At export (train/export.py) each artefact is run on a small input and both are written beside it
(`probes/<artefact>.npz`, listed in manifest.json with its sha256 and the artefact's `probe` field). At
load (infer/engine.py) the artefact runs on the same input; it is accepted only if every output agrees
within its kind's tolerance, else it is dropped with a message naming the file, the library versions
on both sides and the largest difference. Library versions are information; the probe decides: a
pickle-free member that loads under another numpy and predicts the same is kept, one that loads and
predicts differently (a library that changed its arithmetic, a file edited with its sha256 updated) is not.

What each kind's probe input is, and its tolerance (|got - expected| <= atol + rtol * |expected|):
- a selector member (rf, svm, mlp, xgb, each as arrays): up to 48 training feature rows of its series
  type, the outputs those of the fitted scikit-learn / XGBoost model before it was written; rf, svm, mlp
  1e-6 (their numpy arithmetic reproduces scikit-learn's to ~1e-13), xgb 1e-5 (XGBoost sums in float32);
- the level localiser (levels.pt): a seeded random thumbnail through the first look, a patch through
  the second; its heatmap logits, 1e-3 + 1e-3 relative (a CPU fp32 convolution may sum in another order);
- a slice ranker (in levels.json): random features and patches of its shapes; its scores, as above;
- the ensemble (ensemble.json): random probabilities for every member; its output, 1e-9;
- a torch fold: a random input of the model's shapes (ModelSpec.example, the crops' sizes from the
  weights' crops config); every float output, 1e-3 + 1e-3 relative.
Probes run on the CPU in fp32 whatever device predicts, so the comparison is of the artefact, not of a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import write_npz


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float = 0.0


TOLERANCES = {"member": Tolerance(1e-6), "xgb": Tolerance(1e-5), "levels": Tolerance(1e-3, 1e-3),
              "ranker": Tolerance(1e-3, 1e-3), "ensemble": Tolerance(1e-9, 1e-9), "fold": Tolerance(1e-3, 1e-3)}
DIR = "probes"


def probe_rel(artefact: str) -> str:
    """The probe file of an artefact (its path inside the weights folder)."""
    return f"{DIR}/{artefact.replace('/', '__')}.npz"


def _compact(x: np.ndarray) -> np.ndarray:
    """Large float arrays as float16 where that loses nothing (probe inputs are made representable)."""
    x = np.asarray(x)
    if x.dtype.kind == "f" and x.size > 4096:
        half = x.astype(np.float16)
        if np.array_equal(half.astype(x.dtype), x, equal_nan=True):
            return half
    return x


def save_probe(path: str | Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], kind: str) -> None:
    """inputs and outputs as one .npz (plain arrays: read with allow_pickle=False), written atomically."""
    if kind not in TOLERANCES:
        raise ValueError(f"unknown probe kind {kind!r}; known: {sorted(TOLERANCES)}")
    arrays = {f"in/{k}": _compact(v) for k, v in inputs.items()}
    arrays.update({f"out/{k}": np.asarray(v) for k, v in outputs.items()})
    arrays["kind"] = np.asarray(kind)
    write_npz(path, arrays)


def load_probe(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """(inputs, outputs, kind): the inputs back in float32 where they were stored as float16."""
    with np.load(path, allow_pickle=False) as z:
        inputs = {k[3:]: (z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k]) for k in z.files
                  if k.startswith("in/")}
        outputs = {k[4:]: z[k] for k in z.files if k.startswith("out/")}
        kind = str(z["kind"])
    return inputs, outputs, kind


def difference(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], tol: Tolerance) -> tuple[float, bool]:
    """(the largest |got - expected| over every output, whether every element is within tolerance).
    A missing output, another shape or a non-finite value where a finite one was expected fails."""
    worst, ok = 0.0, True
    for k, want in expected.items():
        want = np.asarray(want, np.float64)
        have = np.asarray(got.get(k, np.full(0, np.nan)), np.float64)
        if have.shape != want.shape:
            return float("inf"), False
        fin = np.isfinite(want)
        if not np.array_equal(fin, np.isfinite(have)) or (want[~fin] != have[~fin]).any():
            return float("inf"), False
        d = np.abs(have[fin] - want[fin])
        if d.size:
            worst = max(worst, float(d.max()))
            ok &= bool((d <= tol.atol + tol.rtol * np.abs(want[fin])).all())
    return worst, ok


def make_representable(x: np.ndarray) -> np.ndarray:
    """x rounded to float16 and back: an input stored compactly that reads back bit for bit."""
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


# What runs an artefact on its probe's inputs, per kind; each returns {output name: array}.

def run_member(selector, stype: str, member: str, inputs: dict) -> dict[str, np.ndarray]:
    return {"proba": selector.predict_proba(stype, inputs["rows"], member=member)}


def run_levels(localiser, inputs: dict) -> dict[str, np.ndarray]:
    import torch

    out = {}
    with torch.inference_mode():
        out["coarse"] = localiser.net(torch.from_numpy(inputs["coarse"])).float().numpy()
        if localiser.fine is not None and "fine" in inputs:
            out["fine"] = localiser.fine(torch.from_numpy(inputs["fine"])).float().numpy()
    return out


def run_rankers(geometry, inputs: dict) -> dict[str, np.ndarray]:
    out = {}
    for stype in geometry.rankers:
        key = _key(stype)
        if f"{key}/features" in inputs:
            out[key] = np.asarray(geometry.ranker(stype).scores(inputs[f"{key}/features"], inputs[f"{key}/patches"]))
    return out


def run_ensemble(ensemble, inputs: dict) -> dict[str, np.ndarray]:
    return {"probs": ensemble.apply({m: inputs[m] for m in ensemble.models})}


def run_fold(net, inputs: dict) -> dict[str, np.ndarray]:
    """A network's float outputs on its probe batch, on the CPU in fp32 (moved back where it was)."""
    import torch

    device = next(net.parameters()).device
    was_training = net.training
    net = net.cpu().eval()
    try:
        batch = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
        with torch.inference_mode():
            res = net(batch)
        return {k: v.float().numpy() for k, v in res.items()
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim > 0}
    finally:
        net.to(device).train(was_training)


def _key(stype: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in stype)


# Probe inputs made at export for the artefacts whose training inputs are not kept.

def levels_inputs(localiser, seed: int = 0) -> dict[str, np.ndarray]:
    from ..preprocess.levels import FINE, THUMB

    rng = np.random.default_rng(seed)
    out = {"coarse": make_representable(rng.random((1, 3, THUMB, THUMB)))}
    if localiser.fine is not None:
        out["fine"] = make_representable(rng.random((1, 3, FINE, FINE)))
    return out


def ranker_inputs(geometry, seed: int = 0, candidates: int = 5) -> dict[str, np.ndarray]:
    from ..preprocess.ranker import PATCH

    rng = np.random.default_rng(seed)
    out = {}
    for stype, d in geometry.rankers.items():
        mean, scale = np.asarray(d["mean"]), np.asarray(d["scale"])
        key = _key(stype)
        out[f"{key}/features"] = mean + scale * rng.normal(size=(candidates, len(mean)))
        out[f"{key}/patches"] = make_representable(rng.random((candidates, 3, PATCH, PATCH)))
    return out


def ensemble_inputs(ensemble, seed: int = 0, studies: int = 4) -> dict[str, np.ndarray]:
    from .. import schema

    rng = np.random.default_rng(seed)
    out = {}
    for m in ensemble.models:
        p = rng.dirichlet(np.ones(schema.N_CLASSES), size=(studies, schema.N_LABELS))
        out[m] = p.astype(np.float32)
    return out


def check(kind: str, expected: dict, got: dict) -> tuple[float, bool]:
    """difference() under the kind's tolerance."""
    return difference(expected, got, TOLERANCES[kind])
