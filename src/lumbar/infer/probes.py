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
  weights' crops config); every float output, 1e-3 + 1e-3 relative;
- the input probe (`probes/inputs.npz`, not an artefact's): one training study's decoded volumes, reduced
  to ~160 px, and every model's input that stage one, the crops and the frames made from them at export;
  1e-5 (float32 rounding: the preprocessing is meant to give the same bits in every image). Nothing can
  be dropped for it, since preprocessing is code, not a file: the kernel re-makes the inputs at start and
  reports the largest difference per model and array, in its log and in lumbar_versions.json, saying
  plainly where it is over tolerance (OpenCV 5's warpAffine moved the crops by 0.025 before
  data/resample.py; no artefact probe could see it).
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
              "ranker": Tolerance(1e-3, 1e-3), "ensemble": Tolerance(1e-9, 1e-9), "fold": Tolerance(1e-3, 1e-3),
              "inputs": Tolerance(1e-5)}
DIR = "probes"
INPUTS = f"{DIR}/inputs.npz"  # the input probe's file in the weights folder


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
        if not np.array_equal(fin, np.isfinite(have)) or not np.array_equal(want[~fin], have[~fin], equal_nan=True):
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


# The input probe: a study's volumes, and every model's inputs made from them.

VOLUME_FIELDS = ("q", "lo", "scale", "positions", "normal", "pixel_spacing", "instance_numbers", "orientation",
                 "thickness", "orientations", "blocks", "source_geometry", "spacing_known", "orientation_known")


def reduced(vols: dict, side: int = 160) -> dict:
    """Every series with every f-th pixel of its rows and columns (f brings the larger side near `side`),
    its pixel spacing f times larger: the same anatomy in patient space, a fraction of the bytes."""
    from dataclasses import replace

    out = {}
    for stype, items in vols.items():
        out[stype] = []
        for sid, v in items:
            f = max(1, int(round(max(v.pixels.shape[1:]) / side)))
            source = v.source_geometry.copy() if v.source_geometry is not None else None
            if source is not None:
                source[:, 9:11] *= f
            out[stype].append((sid, replace(v, pixels=np.ascontiguousarray(v.pixels[:, ::f, ::f]),
                                            pixel_spacing=v.pixel_spacing * f, source_geometry=source)))
    return out


def volumes_inputs(study_id: int, vols: dict) -> dict[str, np.ndarray]:
    """The probe's inputs: each series' cache arrays (data/volumes.volume_to_arrays) under
    vol/<series type>/<series id>/<field>, and the study id."""
    from ..data.volumes import volume_to_arrays

    out = {"study_id": np.int64(study_id)}
    for stype, items in vols.items():
        for sid, v in items:
            for k, a in volume_to_arrays(v).items():
                out[f"vol/{stype}/{sid}/{k}"] = np.asarray(a)
    return out


def inputs_volumes(inputs: dict) -> tuple[object, dict]:
    """(a Study with the probe's series, series type -> [(series id, Volume)]) back from volumes_inputs."""
    from ..data.catalog import SeriesRecord, Study
    from ..data.volumes import arrays_to_volume

    series: dict[str, dict[int, dict]] = {}
    for key, a in inputs.items():
        if key.startswith("vol/"):
            stype, sid, field = key[len("vol/"):].rsplit("/", 2)  # a series type may hold "/" (T2/STIR)
            series.setdefault(stype, {}).setdefault(int(sid), {})[field] = a
    vols = {stype: [(sid, arrays_to_volume(d, "input probe")) for sid, d in sorted(items.items())]
            for stype, items in series.items()}
    study = Study(int(inputs["study_id"]), {t: [SeriesRecord(sid, t, Path("input probe")) for sid, _ in items]
                                            for t, items in vols.items()})
    return study, vols


def run_inputs(prepare, study, vols: dict, models) -> dict[str, np.ndarray]:
    """Every model's input made from the volumes by `prepare` (infer/inputs.StudyInputs), flattened to
    <model>/<array>; a model whose input could not be made is absent."""
    item = prepare.prepare(study, vols, frozenset(models))
    out = {}
    for model, entry in item["inputs"].items():
        for k, a in entry.items():
            if isinstance(a, np.ndarray) or np.isscalar(a):
                out[f"{model}/{k}"] = np.asarray(a)
    return out


def input_drift(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per model: the largest difference over its arrays, the array it is in, and whether every array is
    within the inputs' tolerance (a missing array or another shape: infinite)."""
    tol = TOLERANCES["inputs"]
    out: dict[str, dict] = {}
    for key in sorted(expected):
        model, _, name = key.partition("/")
        worst, ok = difference({name: expected[key]}, {name: got[key]} if key in got else {}, tol)
        r = out.setdefault(model, {"max_abs": 0.0, "array": "", "ok": True, "tolerance": tol.atol})
        if worst >= r["max_abs"] and (worst > 0 or not r["array"]):
            r["max_abs"], r["array"] = worst, name
        r["ok"] &= ok
    return out


def input_lines(drift: dict[str, dict], exported_with: dict) -> list[str]:
    """The input probe's report, a line per model; a drift over tolerance said plainly."""
    from .weights import PREPROCESSING_LIBRARIES, versions_said

    lines = []
    for model, r in drift.items():
        if "message" in r:
            lines.append(f"input probe: {r['message']}")
        elif r["ok"]:
            lines.append(f"input probe: {model}'s inputs as at export (largest difference {r['max_abs']:.3g} in "
                         f"'{r['array']}', tolerance {r['tolerance']:g})")
        else:
            lines.append(f"INPUT DRIFT: {model}'s inputs differ from those made at export by up to {r['max_abs']:.3g} "
                         f"in '{r['array']}' (tolerance {r['tolerance']:g}): preprocessing computes otherwise in "
                         f"this image; it cannot be repaired here, and its predictions may move. "
                         f"{versions_said(exported_with, names=PREPROCESSING_LIBRARIES)}")
    return lines
