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


@pytest.fixture(scope="session")
def stage_one(synth_dir, tmp_path_factory):
    """slice_select (every member) + crops trained on the small synthetic folder (2 folds)."""
    from lumbar.train.runner import RunConfig, train

    run = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    rc = RunConfig(n_folds=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train("slice_select", synth_dir, run, rc, [f"cache_dir={cache}", "workers=1", "levels_steps=20", "rank_epochs=5"])
        result = train("crops", synth_dir, run, rc, [f"cache_dir={cache}", "sag_size=64", "axial_size=48"])
    return run, cache, result


TINY_MULTITASK = ["epochs=1", "kp_input=48", "patch_sag=16", "patch_axial=16", "patch_input=32", "batch_size=4"]
TINY_SEQUENCE = ["epochs=1", "n_frames=5", "frame_size=32", "d_model=32", "layers=1", "heads=2", "batch_size=4",
                 "kp_size=32", "patch_side=12", "patch_input=16"]


@pytest.fixture(scope="session")
def trained_weights(synth_dir, stage_one, tmp_path_factory):
    """Every stage trained (tiny configs) on the small folder and exported: a weights folder for inference."""
    from lumbar.train.export import export_weights
    from lumbar.train.runner import RunConfig, train

    src_run, cache, _ = stage_one
    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(src_run, run)
    rc = RunConfig(n_folds=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train("prior", synth_dir, run, rc, [])
        train("multitask", synth_dir, run, rc, [f"cache_dir={cache}", *TINY_MULTITASK])
        train("sequence", synth_dir, run, rc, [f"cache_dir={cache}", *TINY_SEQUENCE])
        train("ensemble", synth_dir, run, rc, [])
    weights = run.parent / "weights"
    export_weights(run, synth_dir, weights)
    return weights
