"""numpy 1 and numpy 2 must prepare the same model inputs.

Kaggle's 2024 image runs numpy 1.26.4, today's runs 2.0.2, and NEP 50 changed how a float32 array meets a
float64 numpy scalar: float32 under numpy 1, float64 under numpy 2. One such line (the volume
normalisation) moved a normalised slice by its last bit, that moved HOG orientation bins, and the kernel's
submissions differed between the two images by 3.6e-3 (bench/results/kaggle-images). numpy's
"weak_and_warn" promotion state (numpy 1.24 to 2.1) warns wherever the two rules give different dtypes;
here every such warning is an error, raised through whatever `warnings` filters the code sets, over the
kernel's whole path (decode, stage one, crops, frames, models, probes) on both synthetic profiles."""
import warnings
from contextlib import contextmanager

import numpy as np
import pytest

from conftest import real_folder
from lumbar.data.volumes import normalise
from lumbar.infer.engine import predict
from lumbar.infer.settings import PredictConfig

needs_weak_and_warn = pytest.mark.skipif(not hasattr(np, "_set_promotion_state"),
                                         reason="this numpy has no promotion state to warn with")


@contextmanager
def promotion_changes_raise(monkeypatch):
    state = np._get_promotion_state()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*result dtype changed.*")
        # The code silences UserWarnings in places (DICOM chatter); numpy's warning is one.
        monkeypatch.setattr(warnings, "simplefilter", lambda *a, **k: None)
        monkeypatch.setattr(warnings, "filterwarnings", lambda *a, **k: None)
        np._set_promotion_state("weak_and_warn")
        try:
            yield
        finally:
            np._set_promotion_state(state)
            monkeypatch.undo()


@needs_weak_and_warn
def test_the_harness_catches_a_promotion_change(monkeypatch):
    with promotion_changes_raise(monkeypatch), pytest.raises(UserWarning, match="result dtype changed"):
        warnings.simplefilter("ignore")  # what the code does around DICOM reads: must not hide it
        np.ones(3, np.float32) - np.float64(0.5)


@needs_weak_and_warn
def test_normalise_is_float32_under_both_rules(monkeypatch):
    pixels = np.random.default_rng(0).normal(300, 80, (3, 40, 40)).astype(np.float32)
    with promotion_changes_raise(monkeypatch):
        out = normalise(pixels)
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1.5


@pytest.fixture(scope="module")
def real_test_dir(tmp_path_factory):
    return real_folder(tmp_path_factory.mktemp("real_promotion") / "competition", studies=2, test_studies=3, seed=5)


@needs_weak_and_warn
@pytest.mark.parametrize("profile", ["default", "real"])
def test_the_kernels_path_has_no_numpy_version_dependent_dtype(profile, request, trained_weights, tmp_path,
                                                               monkeypatch):
    data = request.getfixturevalue("synth_dir" if profile == "default" else "real_test_dir")
    with promotion_changes_raise(monkeypatch):
        summary = predict(data, trained_weights, tmp_path / "submission.csv",
                          PredictConfig(workers=0, device="cpu"))
    assert summary["failures"] == {}, summary["failures"]  # a raised warning fails the study here
    assert summary["predicted"] == summary["studies"] == 3
    assert summary["dropped"] == []  # ... and drops an artefact whose probe raised
