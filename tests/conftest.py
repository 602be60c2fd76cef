import shutil
import warnings
from pathlib import Path

import pytest

from lumbar.data.synth import SynthConfig, generate


def small_config(out, **kw) -> SynthConfig:
    """A folder small enough for unit tests: 10 train + 3 test studies at low resolution."""
    base = dict(out=str(out), studies=10, test_studies=3, seed=7, sag_size=96, axial_size=64, workers=1)
    base.update(kw)
    return SynthConfig(**base)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "competition"
    generate(small_config(out), progress=False)
    return out


@pytest.fixture
def synth_copy(synth_dir, tmp_path) -> Path:
    """A private copy to damage."""
    dst = tmp_path / "competition"
    shutil.copytree(synth_dir, dst)
    return dst
