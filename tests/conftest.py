import shutil
from pathlib import Path

import pytest

from lumbar.data.synth import SynthConfig, generate
from tiny_stack import TINY_MULTITASK, TINY_SEQUENCE, train_models, train_stage_one  # noqa: F401 (tests import them)


def small_config(out, **kw) -> SynthConfig:
    """A folder small enough for unit tests: 10 train + 3 test studies at low resolution."""
    base = dict(out=str(out), studies=10, test_studies=3, seed=7, sag_size=96, axial_size=64, workers=1)
    base.update(kw)
    return SynthConfig(**base)


def real_folder(out, **kw) -> Path:
    """A real-profile folder at a quarter of the real matrix sizes (8 train + 5 test studies unless told)."""
    base = dict(out=str(out), studies=8, test_studies=5, seed=3, profile="real", size_scale=0.25, workers=1)
    base.update(kw)
    generate(SynthConfig(**base), progress=False)
    return Path(out)


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


@pytest.fixture(scope="session")
def stage_one(synth_dir, tmp_path_factory):
    """slice_select (every member) + crops trained on the small synthetic folder (2 folds)."""
    run = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    return run, cache, train_stage_one(synth_dir, run, cache)


@pytest.fixture(scope="session")
def trained_weights(synth_dir, stage_one, tmp_path_factory):
    """Every stage trained (tiny configs) on the small folder and exported: a weights folder for inference."""
    src_run, cache, _ = stage_one
    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(src_run, run)
    return train_models(synth_dir, run, cache, run.parent / "weights")
