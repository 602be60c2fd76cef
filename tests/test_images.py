"""The built kernel in each Kaggle image it may meet (docs/kaggle.md), with weights exported in the other.

Each image is a venv of its own (`make images`): kaggle-2026, today's image (Python 3.12, torch 2.10, numpy
2.0.2, scikit-learn 1.6.1, xgboost 3.2.0, ...), kaggle-2024, the competition's (numpy 1.26.4,
scikit-learn 1.2.2, xgboost 2.0.3, ...), and kaggle-next, the one a first push meets once Kaggle moves its
base (Python 3.13, torch 2.11, numpy 2.4.6, opencv 5.0.0.93, xgboost 3.4.1). Weights are exported in one and
the notebook runs offline in each: no member is dropped, every probe agrees, the input probe finds the
inputs made as at export, and the submissions agree to 1e-4."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_inference import assert_complete
from test_kernel import build_kernel, run_kernel

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("kaggle-2026", "kaggle-2024", "kaggle-next")


def image_python(name: str) -> Path:
    venv = ROOT / f".venv-{name}"
    if not (venv / ".installed").exists():
        if os.environ.get("CI"):  # CI must run both images: a missing venv is a failure there
            pytest.fail(f"{venv}: not built; `make images` builds it (make test does)")
        pytest.skip(f"{venv}: not built (`make images`)")
    return venv / "bin" / "python"


def versions(python: Path) -> dict:
    code = ("import json, platform, numpy, sklearn, xgboost, torch, cv2; print(json.dumps({'python': "
            "platform.python_version(), 'numpy': numpy.__version__, 'sklearn': sklearn.__version__, "
            "'xgboost': xgboost.__version__, 'torch': torch.__version__, 'cv2': cv2.__version__}))")
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.fixture(scope="module")
def weights_2024(synth_dir, tmp_path_factory) -> Path:
    """The tiny stack trained and exported in the 2024 image's venv."""
    py = image_python("kaggle-2024")
    root = tmp_path_factory.mktemp("w2024") / "stack"
    r = subprocess.run([str(py), str(ROOT / "tests" / "tiny_stack.py"), str(synth_dir), str(root)],
                       capture_output=True, text=True, cwd=str(ROOT / "tests"))
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "weights"


@pytest.fixture(scope="module")
def image_kernel(trained_weights, tmp_path_factory) -> Path:
    return build_kernel(trained_weights, tmp_path_factory.mktemp("kernel"))


def _kernel_in_each_image(kernel: Path, weights: Path, data: Path, tmp: Path) -> dict[str, tuple[str, pd.DataFrame]]:
    out = {}
    for name in IMAGES:
        text, sub = run_kernel(kernel, weights, data, tmp / name, python=image_python(name))
        out[name] = (text, assert_complete(sub, data).set_index("row_id").sort_index())
        info = json.loads((tmp / name / "working" / "lumbar_versions.json").read_text())
        assert info["libraries"]["sklearn"] == versions(image_python(name))["sklearn"]  # the image it met, written
        assert info["predicted"] == 3 and info["dropped"] == []
        drift = info["input_probe"]
        assert set(drift) == {"multitask", "sequence"}, f"{name}: {drift}"
        assert all(r["ok"] and r["max_abs"] <= 1e-5 for r in drift.values()), f"{name}: {drift}"
        assert "INPUT DRIFT" not in text and "input probe: multitask's inputs as at export" in text, name
    return out


def _same_everywhere(runs: dict, weights: Path) -> None:
    man = json.loads((weights / "manifest.json").read_text())
    n_probes = sum(1 for a in man["artefacts"] if a.get("probe"))
    for name, (text, _) in runs.items():
        assert "DROPPED" not in text, f"{name}: {text[-3000:]}"
        for stype in ("Sagittal T2/STIR", "Sagittal T1", "Axial T2"):
            assert f"slice selector {stype}: 4 members (rf, svm, mlp, xgb)" in text, name
        assert f"probes: {n_probes} artefacts compute what they computed at export" in text, name
        assert "'predicted': 3" in text
    (a_name, (_, a)), *others = runs.items()
    for b_name, (_, b) in others:
        assert list(a.index) == list(b.index)
        diff = np.abs(a.to_numpy() - b.to_numpy()).max()
        assert diff <= 1e-4, f"{a_name} and {b_name} submissions differ by {diff}"


def test_the_image_venvs_hold_each_images_versions():
    new, old, nxt = (versions(image_python(n)) for n in ("kaggle-2026", "kaggle-2024", "kaggle-next"))
    assert new["python"].startswith("3.12") and new["torch"].startswith("2.10")
    assert (new["numpy"], new["sklearn"], new["xgboost"], new["cv2"]) == ("2.0.2", "1.6.1", "3.2.0", "4.13.0")
    assert (old["numpy"], old["sklearn"], old["xgboost"]) == ("1.26.4", "1.2.2", "2.0.3")
    assert nxt["python"].startswith("3.13") and nxt["torch"].startswith("2.11")
    assert (nxt["numpy"], nxt["sklearn"], nxt["xgboost"], nxt["cv2"]) == ("2.4.6", "1.6.1", "3.4.1", "5.0.0")


def test_weights_exported_today_predict_the_same_in_the_2024_image(image_kernel, trained_weights, synth_dir, tmp_path):
    exported = json.loads((trained_weights / "manifest.json").read_text())["libraries"]
    assert exported["sklearn"] != versions(image_python("kaggle-2024"))["sklearn"]  # really across versions
    _same_everywhere(_kernel_in_each_image(image_kernel, trained_weights, synth_dir, tmp_path), trained_weights)


def test_weights_exported_in_the_2024_image_predict_the_same_today(image_kernel, weights_2024, synth_dir, tmp_path):
    exported = json.loads((weights_2024 / "manifest.json").read_text())["libraries"]
    assert (exported["numpy"], exported["sklearn"], exported["xgboost"]) == ("1.26.4", "1.2.2", "2.0.3")
    _same_everywhere(_kernel_in_each_image(image_kernel, weights_2024, synth_dir, tmp_path), weights_2024)


@pytest.mark.parametrize("name", IMAGES)
def test_every_pinned_library_is_the_image_venvs_own(name):
    """The 2024 venv borrows the main venv's NVIDIA libraries (Makefile, borrow_cuda): a pinned library found
    outside the image's own site-packages would run the kernel in the wrong versions."""
    wanted = dict(line.split("==") for line in (ROOT / "constraints" / f"{name}.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    code = ("import json, sys; from importlib.metadata import distribution as d; "
            f"print(json.dumps({{n: [d(n).version, str(d(n).locate_file('')).startswith(sys.prefix)] for n in {list(wanted)!r}}}))")
    found = json.loads(subprocess.run([str(image_python(name)), "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    assert {n: v for n, (v, _) in found.items()} == wanted
    assert [n for n, (_, own) in found.items() if not own] == [], f"{name}: pinned but borrowed"


def test_an_image_venv_borrows_nothing_but_nvidias_libraries_and_its_torch_runs():
    """What the 2024 venv reads from outside itself (its links resolved) is NVIDIA's wheels only (the same
    files for every Python); its torch is its own build for its Python, and imports with them."""
    code = ("import json, os, sys, torch; from importlib.metadata import distributions; "
            "home = os.path.realpath(sys.prefix) + os.sep; "
            "print(json.dumps({'torch': os.path.realpath(torch.__file__).startswith(home), "
            "'outside': sorted({d.metadata['Name'] for d in distributions() "
            "if not os.path.realpath(d._path).startswith(home)})}))")
    r = subprocess.run([str(image_python("kaggle-2024")), "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    found = json.loads(r.stdout)
    assert found["torch"], "torch is the image venv's own"
    borrowed = [n for n in found["outside"] if n != "lumbar"]  # lumbar: this repository, installed editable
    assert borrowed, "the 2024 venv borrows the main venv's CUDA libraries (the same torch release)"
    assert all(n.lower().startswith("nvidia") for n in borrowed), borrowed
