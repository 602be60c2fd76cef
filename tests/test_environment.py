"""The suite runs in the versions the kernel meets on Kaggle: the constraints file `make setup` installed
(kaggle-2026, today's image, by default; kaggle-2024 with KAGGLE_IMAGE=kaggle-2024)."""
import os
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _image() -> str:
    marker = ROOT / ".venv" / ".installed"
    name = os.environ.get("KAGGLE_IMAGE") or (marker.read_text().strip() if marker.exists() else "")
    return name or DEFAULT_IMAGE


DEFAULT_IMAGE = "kaggle-2026"


def pins(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints" / f"{name}.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert m, f"constraints/{name}.txt: {line!r} is not NAME==VERSION"
            out[m.group(1)] = m.group(2)
    return out


def test_every_pinned_library_is_installed_at_its_pin():
    name = _image()
    if not (ROOT / ".venv" / ".installed").exists() and "KAGGLE_IMAGE" not in os.environ:
        pytest.skip("not in the venv `make setup` builds")
    wrong = {}
    for dist, want in pins(name).items():
        try:
            have = version(dist)
        except PackageNotFoundError:
            have = "missing"
        if have != want:
            wrong[dist] = (want, have)
    assert not wrong, f"installed versions differ from constraints/{name}.txt: {wrong}"


def test_the_suite_runs_in_the_versions_of_the_image_it_was_set_up_for():
    """What is serialised in training is tested where it was made: the libraries this very process
    imported are the constraint file's pins (a venv built without them fails here)."""
    import numpy
    import sklearn
    import xgboost

    if not (ROOT / ".venv" / ".installed").exists() and "KAGGLE_IMAGE" not in os.environ:
        pytest.skip("not in the venv `make setup` builds")
    p = pins(_image())
    assert (numpy.__version__, sklearn.__version__, xgboost.__version__) == (p["numpy"], p["scikit-learn"],
                                                                             p["xgboost"])


def test_make_setup_defaults_to_todays_image_and_keeps_the_2024_one():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^KAGGLE_IMAGE \?= kaggle-2026$", make, re.M)
    today, then = pins("kaggle-2026"), pins("kaggle-2024")
    # the image of today as Kaggle's docker-python / Colab base publish it (docs/kaggle.md)
    assert {k: today[k] for k in ("numpy", "scikit-learn", "xgboost", "pandas", "scikit-image", "timm",
                                  "opencv-python-headless")} == {
        "numpy": "2.0.2", "scikit-learn": "1.6.1", "xgboost": "3.2.0", "pandas": "2.2.2", "scikit-image": "0.25.2",
        "timm": "1.0.26", "opencv-python-headless": "4.13.0.92"}
    assert (then["numpy"], then["scikit-learn"], then["xgboost"]) == ("1.26.4", "1.2.2", "2.0.3")
    assert set(today) == set(then), "both images pin the same libraries"
    assert "TORCH_kaggle-2026 ?= torch==2.10.0 torchvision==0.25.0" in make
    assert re.search(r"^PYTHON_kaggle-2026 \?= .*python3\.12", make, re.M)


def _dry_run(*args: str) -> str:
    """What make would run to build a venv from nothing (-B: as if none were built), without running it."""
    r = subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_main_venvs_image_is_the_main_venv_and_another_image_borrows_only_a_same_torchs_libraries():
    """Disk is what CI runs out of (docs/kaggle.md): one full torch, not three."""
    default = _dry_run(".venv-kaggle-2026/.installed", ".venv-kaggle-2024/.installed")
    assert "ln -s .venv .venv-kaggle-2026" in default  # today's image is the main venv itself
    assert "python3.12 -m venv .venv\n" in default
    assert "nvidia* .venv-kaggle-2024/borrowed/" in default and "lumbar-borrowed.pth" in default
    # another torch in the other image: its own CUDA libraries, and the full disk check
    other = _dry_run(".venv-kaggle-2024/.installed", "TORCH_kaggle-2024=torch==2.9.1 torchvision==0.24.1")
    assert "borrowed" not in other and "torch==2.9.1" in other
    assert re.search(r"\.venv-kaggle-2024 needs about 12 GB", other)
    # the 2024 image as the main one: 2026 gets its own venv, 2024 is the main venv
    swapped = _dry_run(".venv-kaggle-2026/.installed", ".venv-kaggle-2024/.installed", "KAGGLE_IMAGE=kaggle-2024")
    assert "ln -s .venv .venv-kaggle-2024" in swapped and "python3.12 -m venv .venv-kaggle-2026" in swapped
