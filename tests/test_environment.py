"""The suite runs in the versions the kernel meets on Kaggle: the constraints file `make setup` installed."""
import os
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _image() -> str:
    marker = ROOT / ".venv" / ".installed"
    name = os.environ.get("KAGGLE_IMAGE") or (marker.read_text().strip() if marker.exists() else "")
    return name or "kaggle-2024"


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


def test_the_suite_runs_in_the_versions_the_kernel_will_load_pickles_with():
    """What is pickled or serialised in training must load in Kaggle's image: the libraries this very
    process imported are the constraint file's pins (a venv built without them fails here)."""
    import numpy
    import sklearn
    import xgboost

    p = pins("kaggle-2024")
    assert (numpy.__version__, sklearn.__version__, xgboost.__version__) == (p["numpy"], p["scikit-learn"],
                                                                             p["xgboost"])
