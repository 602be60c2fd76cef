"""`make kernel` (`build_kernel.py` at the repo root calls this): the inference closure of src/lumbar + the
weights manifest -> kernel/ (one notebook).

Each module of the closure is written out by a `%%writefile` cell, byte for byte the package's source,
and imported as the package it is. Chosen over inlining because nothing is rewritten: relative
imports, module-level names and lazy imports work as they do in the repo, a name defined in two
modules cannot collide, and a traceback on Kaggle points at the same file and line as in the repo.

The notebook's first cells find the competition folder and the weights dataset under /kaggle/input by
glob (LUMBAR_KAGGLE_INPUT overrides it) and write a submission of priors embedded at build time, before
anything from the package is imported; the last cell runs `lumbar.infer.engine.predict` and writes
/kaggle/working/submission.csv (LUMBAR_KAGGLE_WORKING overrides it).
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from ..files import write_json

PKG = Path(__file__).resolve().parents[1]  # src/lumbar (this module is in its commands/)
ROOT = PKG.parents[1]  # the repository (for the commit recorded in the notebook)
ENTRY = "lumbar.infer.engine"
COMPETITION = "rsna-2024-lumbar-spine-degenerative-classification"
MACHINE_SHAPE = "NvidiaTeslaT4"  # kernel-metadata.json: the 2 x T4 machine
# kernel-metadata.json: later versions of the kernel stay on the image its first run got (Kaggle's default,
# "latest", moves them to each new image); docker_image pins one image by digest when given.
PINNING = "original"
DOCKER_IMAGE = re.compile(r"gcr\.io/kaggle-(gpu|cpu)-images/python(@sha256:[0-9a-f]{64}|:[A-Za-z0-9_.\-]+)")
KAGGLE_MODULES = {"torch", "timm", "pydicom", "numpy", "pandas", "skimage", "sklearn", "xgboost", "cv2", "scipy",
                  "tqdm", "PIL", "matplotlib"}  # what Kaggle's image has; the kernel installs nothing


class BuildError(RuntimeError):
    pass


def module_path(name: str) -> Path | None:
    rel = name.split(".")[1:]
    base = PKG.joinpath(*rel) if rel else PKG
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def _imports(name: str, path: Path) -> tuple[list[str], set[str]]:
    """Package modules and third-party top-level modules a module imports (anywhere, lazy ones too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inner, outer = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                (inner.append(a.name) if a.name.split(".")[0] == "lumbar" else outer.add(a.name.split(".")[0]))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module.split(".")[0] == "lumbar":
                    base = node.module
                else:
                    outer.add(node.module.split(".")[0])
                    continue
            else:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            inner.append(base)
            for a in node.names:  # `from .. import config`: a module, not a name
                if module_path(f"{base}.{a.name}") is not None:
                    inner.append(f"{base}.{a.name}")
    return inner, outer


def closure(entry: str = ENTRY) -> list[str]:
    """Modules the entry imports, transitively, dependencies first (the order of the cells)."""
    order: list[str] = []
    seen: set[str] = set()
    third: dict[str, set[str]] = {}

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in seen:
            return
        path = module_path(name)
        if path is None:
            raise BuildError(f"{stack[-1] if stack else entry}: imports {name}, which is not in {PKG}")
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):  # parent packages first
            visit(".".join(parts[:i]), stack + (name,))
        inner, outer = _imports(name, path)
        third[name] = outer
        for dep in inner:
            visit(dep, stack + (name,))
        order.append(name)

    visit(entry, ())
    bad = {m: sorted(o - KAGGLE_MODULES - set(sys.stdlib_module_names)) for m, o in third.items()}
    bad = {m: o for m, o in bad.items() if o}
    if bad:
        raise BuildError(f"the inference closure imports what Kaggle's image lacks: {bad}")
    return order


def _check_python310(name: str, path: Path) -> None:
    try:
        ast.parse(path.read_text(), str(path), feature_version=(3, 10))
    except SyntaxError as e:
        raise BuildError(f"{path}:{e.lineno}: not Python 3.10 syntax ({e.msg}); Kaggle runs 3.10") from None


def _rel(name: str) -> str:
    return str(module_path(name).relative_to(PKG.parent))


def _cell(kind: str, source: str) -> dict:
    cell = {"cell_type": kind, "metadata": {}, "source": source.splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


SETUP = '''\
# Where things are. Kaggle has moved its mounts before: find them by glob, never by a fixed path.
import glob, os, sys, time
T0 = time.time()
INPUT = os.environ.get("LUMBAR_KAGGLE_INPUT", "/kaggle/input")
WORKING = os.environ.get("LUMBAR_KAGGLE_WORKING", "/kaggle/working")
SUBMISSION = os.path.join(WORKING, "submission.csv")
SRC = os.path.join(WORKING, "lumbar_src")


def find_dir(marker):
    hits = sorted(glob.glob(os.path.join(INPUT, "**", marker), recursive=True), key=len)
    return os.path.dirname(hits[0]) if hits else None


DATA = find_dir("test_series_descriptions.csv")
WEIGHTS = find_dir("manifest.json")
for sub in MODULE_DIRS:
    os.makedirs(os.path.join(SRC, sub), exist_ok=True)
for rel in EMPTY_MODULES:  # %%writefile needs a body: the package's empty files are made here
    open(os.path.join(SRC, rel), "w").close()
print(f"competition folder: {DATA}\\nweights: {WEIGHTS}\\nsource: {SRC}")
'''

FALLBACK = '''\
# A valid submission before anything else can fail: the priors embedded at build time, one row per
# row id of sample_submission.csv (pandas only; the package is not imported yet). The last cell calls
# it again if, whatever happened, no submission.csv exists at the end.
import pandas as pd

COLUMNS = PRIOR_COLUMNS


def write_fallback():
    try:
        _sample = pd.read_csv(os.path.join(DATA, "sample_submission.csv")) if DATA else None
        if _sample is not None and len(_sample):
            _rows = []
            for rid in _sample["row_id"]:
                col = rid.split("_", 1)[1]
                _rows.append([rid, *PRIOR[COLUMNS.index(col)]])
            os.makedirs(WORKING, exist_ok=True)
            pd.DataFrame(_rows, columns=["row_id", "normal_mild", "moderate", "severe"]).to_csv(
                SUBMISSION + ".tmp", index=False)
            os.replace(SUBMISSION + ".tmp", SUBMISSION)
            print(f"fallback submission of priors: {len(_rows)} rows")
    except Exception as e:  # the engine writes its own priors too; this one is only the first net
        print(f"fallback submission not written: {e!r}")


write_fallback()
'''


VERSIONS = '''\
# The library versions the weights were exported with next to the installed ones, before anything is
# loaded. Information only: each artefact's probe decides whether it is used (a member that loads under
# another scikit-learn and predicts the same is kept; one that predicts otherwise is dropped, and said).
# The same versions go to lumbar_versions.json beside the submission: the public run shows which image it met.
import json, platform, re
VERSIONS_FILE = os.path.join(WORKING, "lumbar_versions.json")


def write_versions(**extra):
    try:
        _env = {k: v for k, v in os.environ.items()
                if k.startswith("KAGGLE_") and not re.search("TOKEN|SECRET|KEY|PASS|AUTH|CRED", k)}
        _info = {"python": platform.python_version(), "libraries": library_versions(), "environment": _env,
                 "weights_exported_with": _manifest.get("libraries", {}), "built_from": BUILT_FROM, **extra}
        os.makedirs(WORKING, exist_ok=True)
        with open(VERSIONS_FILE + ".tmp", "w") as _f:
            json.dump(_info, _f, indent=1, default=str)
        os.replace(VERSIONS_FILE + ".tmp", VERSIONS_FILE)
    except Exception as e:
        print(f"versions file not written: {e!r}")


_manifest = {}
try:
    _manifest = json.load(open(os.path.join(WEIGHTS, "manifest.json"))) if WEIGHTS else {}
    _table, _problems = version_report(_manifest.get("libraries", {}))
    print(_table)
    print("\\n".join(f"VERSION DIFFERENCE: {p}" for p in _problems) or "versions: no difference that matters")
except Exception:
    traceback.print_exc()
write_versions()
'''

IMPORT = '''\
# The package as written above, not any other copy that may be importable here. Guarded like every
# cell that can fail: a notebook that raises scores as an error whatever submission.csv holds.
import traceback
predict = None
try:
    for _name in [m for m in sys.modules if m == "lumbar" or m.startswith("lumbar.")]:
        del sys.modules[_name]
    sys.path.insert(0, SRC)
    import lumbar
    from lumbar.infer.engine import PredictConfig, predict
    from lumbar.infer.weights import library_versions, version_report
    assert os.path.realpath(lumbar.__file__).startswith(os.path.realpath(SRC)), lumbar.__file__
    print(f"lumbar {lumbar.__version__} from {os.path.dirname(lumbar.__file__)}")
except BaseException:
    traceback.print_exc()
    print("the package did not import; the fallback submission stands")
    predict = None
    def version_report(_):
        return "versions: not compared (the package did not import)", []

    def library_versions():
        import importlib
        out = {}
        for _m in ("numpy", "sklearn", "xgboost", "torch", "timm", "pandas", "pydicom", "skimage", "cv2", "scipy"):
            try:
                out[_m] = str(importlib.import_module(_m).__version__)
            except Exception:
                out[_m] = "missing"
        return out
'''

RUN = '''\
# Inference. The budget is what is left of 8 hours (Kaggle stops a notebook at 9). Everything is caught:
# the engine rewrites submission.csv atomically as it goes (and once more when it fails), so what
# stands after an exception is its last complete version, priors at the least.
import shutil
try:
    budget = float(os.environ.get("LUMBAR_TIME_BUDGET", 8 * 3600)) - (time.time() - T0)
    if predict is None or DATA is None or WEIGHTS is None:
        print(f"nothing to run (package imported: {predict is not None}, competition folder {DATA}, "
              f"weights {WEIGHTS}); the fallback submission stands")
    else:
        cfg = PredictConfig(batch_size=int(os.environ.get("LUMBAR_BATCH_SIZE", 8)),
                            workers=min(4, max(1, (os.cpu_count() or 1) - 1)), time_budget=budget,
                            study_timeout=float(os.environ.get("LUMBAR_STUDY_TIMEOUT", 600)),
                            fallback_prior=PRIOR, fault=os.environ.get("LUMBAR_FAULT", ""))
        summary = predict(DATA, WEIGHTS, SUBMISSION, cfg)
        print({k: summary[k] for k in ("studies", "predicted", "failed", "seconds", "device")})
        for _line in summary["dropped"]:
            print(f"DROPPED: {_line}")
        write_versions(predicted=summary["predicted"], studies=summary["studies"], device=summary["device"],
                       dropped=summary["dropped"], loaded=summary["loaded"], probes_agreed=len(summary["probed"]),
                       input_probe=summary.get("input_probe", {}))
except BaseException:
    traceback.print_exc()
    print("predict raised; the last submission.csv it wrote stands")
finally:
    if not os.path.exists(SUBMISSION):
        write_fallback()
    shutil.rmtree(SRC, ignore_errors=True)  # keep the notebook's output to submission.csv
'''


def dataset_id(weights: Path, given: str = "", ask: bool | None = None) -> str:
    """The weights dataset's Kaggle id: `given`, the weights' dataset-metadata.json unless it holds the
    placeholder, the Kaggle user name where it is known, or asked for on a terminal. When it becomes
    known here, the weights folder's dataset-metadata.json is corrected too (the dataset is created
    from it). Otherwise the placeholder stays, with a warning saying how to set it."""
    from ..train.export import PLACEHOLDER_USER, kaggle_user

    meta_path = weights / "dataset-metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    found = given or (meta.get("id") if PLACEHOLDER_USER not in meta.get("id", PLACEHOLDER_USER) else "")
    if not found and kaggle_user():
        found = f"{kaggle_user()}/lumbar-weights"
    if not found and (sys.stdin.isatty() if ask is None else ask):
        user = input("Kaggle user name (the weights dataset is <user>/lumbar-weights): ").strip()
        found = f"{user}/lumbar-weights" if user else ""
    if not found:
        print(f"build_kernel: WARNING: the weights dataset id is unknown ({PLACEHOLDER_USER}/lumbar-weights); set "
              "KAGGLE_USERNAME (or ~/.kaggle/kaggle.json) or pass DATASET=user/name, then build again",
              file=sys.stderr)
        return f"{PLACEHOLDER_USER}/lumbar-weights"
    if "/" not in found:
        raise BuildError(f"dataset id {found!r}: expected <user>/<dataset>")
    if meta and meta.get("id") != found:
        write_json(meta_path, {**meta, "id": found})
    return found


def build(weights: Path, out: Path, dataset: str = "", ask: bool | None = False, docker_image: str = "") -> Path:
    """The notebook and kernel-metadata.json in `out`. `ask`: whether an unknown dataset id is asked for
    (None: when on a terminal, as `make kernel` does; the demo never asks). `docker_image`: a Kaggle image
    (gcr.io/kaggle-gpu-images/python@sha256:...) the kernel is pinned to."""
    weights, out = Path(weights), Path(out)
    if docker_image and not DOCKER_IMAGE.fullmatch(docker_image):
        raise BuildError(f"docker image {docker_image!r}: expected gcr.io/kaggle-gpu-images/python@sha256:<64 hex> "
                         "(`kaggle kernels pull -p DIR -m <user>/<kernel>` writes the one a kernel ran on into "
                         "DIR/kernel-metadata.json)")
    manifest = weights / "manifest.json"
    if not manifest.exists():
        raise BuildError(f"{manifest}: no trained weights; run `make train` (real data) or `make demo` "
                         "(synthetic) first")
    man = json.loads(manifest.read_text())
    prior = json.loads((weights / "prior.json").read_text())
    mods = closure()
    for m in mods:
        _check_python310(m, module_path(m))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    dirs = sorted({str(Path(_rel(m)).parent) for m in mods})
    empty = [_rel(m) for m in mods if not module_path(m).read_text()]
    models = ", ".join(f"{k} ({v['folds']} folds, CV {v['oof_score']})" for k, v in man.get("models", {}).items())
    cells = [
        _cell("markdown", f"# lumbar inference\n\nBuilt by `make kernel` from commit `{commit}`; weights exported "
                          f"{man.get('created', '?')} (training data {man.get('data_fingerprint', '?')}); models: "
                          f"{models or 'prior only'}.\n\nThe package's inference modules follow, one `%%writefile` "
                          "cell each, then one cell that runs inference."),
        _cell("code", f"MODULE_DIRS = {dirs!r}\nEMPTY_MODULES = {empty!r}\n" + SETUP),
        _cell("code", f"PRIOR_COLUMNS = {prior['columns']!r}\nPRIOR = {prior['probs']!r}\n" + FALLBACK),
    ]
    for m in mods:
        rel = _rel(m)
        if rel in empty:
            continue
        cells.append(_cell("markdown", f"## `{rel}`"))
        cells.append(_cell("code", f"%%writefile {{SRC}}/{rel}\n" + module_path(m).read_text()))
    cells += [_cell("markdown", "## Import the package written above"), _cell("code", IMPORT),
              _cell("markdown", "## Library versions: trained with, installed here"),
              _cell("code", f"BUILT_FROM = {commit!r}\n" + VERSIONS),
              _cell("markdown", "## Predict"), _cell("code", RUN)]
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i}"
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "lumbar-inference.ipynb"
    write_json(path, nb)
    dataset = dataset_id(weights, dataset, ask)
    user = dataset.split("/")[0]
    # The T4 machine (2 x 16 GB): without a machine shape Kaggle may give a P100, which current torch
    # builds no longer run (the notebook would then predict on the CPU after its smoke test).
    meta = {"id": f"{user}/lumbar-inference", "title": "lumbar-inference", "code_file": path.name,
            "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": True,
            "enable_tpu": False, "machine_shape": MACHINE_SHAPE, "enable_internet": False,
            "dataset_sources": [dataset], "competition_sources": [COMPETITION], "kernel_sources": [],
            "docker_image_pinning_type": PINNING}
    if docker_image:
        meta["docker_image"] = docker_image
    write_json(out / "kernel-metadata.json", meta)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="weights")
    p.add_argument("--out", default="kernel")
    p.add_argument("--dataset", default="", help="the weights dataset's Kaggle id, user/name (default: from "
                                                 "weights/dataset-metadata.json or $KAGGLE_USERNAME)")
    p.add_argument("--docker-image", default="", help="pin the kernel to this Kaggle image, "
                   "gcr.io/kaggle-gpu-images/python@sha256:... (read it off a kernel that ran: kaggle kernels pull "
                   "-p DIR -m USER/KERNEL, then DIR/kernel-metadata.json); without it the kernel stays on the image "
                   "its first run gets (docker_image_pinning_type original)")
    a = p.parse_args(argv)
    try:
        path = build(Path(a.weights), Path(a.out), a.dataset, ask=None, docker_image=a.docker_image)
    except BuildError as e:
        print(f"build_kernel: {e}", file=sys.stderr)
        return 2
    print(f"build_kernel: {path} ({len(closure())} modules) and {path.parent / 'kernel-metadata.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
