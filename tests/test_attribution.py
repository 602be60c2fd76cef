"""The attribution report: the same held-out models on inputs from stage one and from the labels."""
import json
import shutil
import warnings

import numpy as np
import pytest

from lumbar.commands.attribution import VARIANTS, attribution, model_variants, summarise
from lumbar.data.cache import StudyCache
from lumbar.data.catalog import load_studies
from lumbar.layout import Run
from lumbar.preprocess.crops import CROP_NAMES
from lumbar.preprocess.pipeline import cache_version, study_features, true_selection


@pytest.fixture
def run_copy(trained_weights, stage_one, tmp_path):
    """A private copy of the fully trained test run (its OOF selection is rewritten by the tests)."""
    _, cache, _ = stage_one
    run = tmp_path / "run"
    shutil.copytree(trained_weights.parent / "run", run)
    return run, cache


def _write_selection(run, selection: dict) -> None:
    Run(run).oof_selection.write_text(json.dumps({str(s): {n: list(v) for n, v in sel.items()}
                                                  for s, sel in selection.items()}))


def _true_selections(data, cache) -> dict:
    c = StudyCache(cache, cache_version())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        studies = load_studies(data, "train")
    return {st.study_id: true_selection(st, study_features(st, c)) for st in studies}


@pytest.mark.parametrize("model", ["multitask", "sequence"])
def test_with_the_labels_as_the_selection_shipped_is_true_slices(model, run_copy, synth_dir):
    run, cache = run_copy
    _write_selection(run, _true_selections(synth_dir, cache))
    ids, probs = model_variants(model, synth_dir, run, str(cache))
    assert len(ids) == 10 and set(probs) == set(VARIANTS)
    np.testing.assert_allclose(probs["shipped"], probs["true_slices"], atol=1e-6)
    assert np.isfinite(probs["true_patches"]).all()
    np.testing.assert_allclose(probs["true_patches"].sum(-1), 1, atol=1e-5)


def test_a_shifted_selection_moves_only_what_stage_one_chose(run_copy, synth_dir):
    run, cache = run_copy
    truth = _true_selections(synth_dir, cache)
    ids, base = model_variants("multitask", synth_dir, run, str(cache))
    shifted = {s: {n: (v[0], max(0, v[1] - 2)) for n, v in sel.items()} for s, sel in truth.items()}
    _write_selection(run, shifted)
    _, moved = model_variants("multitask", synth_dir, run, str(cache))
    assert np.abs(moved["shipped"] - moved["true_slices"]).max() > 1e-4  # other slices, other predictions
    # where every crop has its labelled slice, the labelled variants do not depend on stage one's choice
    full = [i for i, s in enumerate(ids) if len(truth[s]) == len(CROP_NAMES)]
    assert full
    np.testing.assert_allclose(moved["true_slices"][full], base["true_slices"][full], atol=1e-6)


def test_the_share_of_the_gap_is_the_arithmetic_it_names():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (60, 25))
    oracle = np.full((60, 25, 3), 0.1)
    oracle[np.arange(60)[:, None], np.arange(25)[None], y] = 0.8  # right most of the time
    prior = np.full((60, 25, 3), 1 / 3)
    half = (prior + oracle) / 2
    s = summarise({"shipped": prior, "true_slices": half, "true_points": oracle, "true_patches": oracle}, y, oracle,
                  n_boot=200)
    assert s["stage_one_share"] == 1.0 and s["localisation_share"] == 1.0
    v = s["variants"]
    assert v["shipped"]["overall"] > v["true_slices"]["overall"] > v["true_points"]["overall"] == s["oracle"]
    d = v["true_slices"]["minus_shipped"]["overall"]
    assert d[0] < 0 and d[1] <= d[0] <= d[2] < 0  # a paired interval below zero
    assert v["shipped"]["minus_shipped"]["overall"] == [0.0, 0.0, 0.0]


def test_attribution_writes_its_files(run_copy, synth_dir, tmp_path):
    run, cache = run_copy
    res = attribution(synth_dir, run, tmp_path / "rep", str(cache), ("multitask",), n_boot=100)
    saved = json.loads((tmp_path / "rep" / "attribution.json").read_text())
    for key in ("shipped", "true_slices", "true_points", "true_patches", "oracle", "stage_one_share"):
        assert key in saved["multitask"]
    assert saved["multitask"]["shipped"] == res["multitask"]["shipped"]
    oof = json.loads((Run(run).report("multitask")).read_text())["oof_score"]
    assert abs(saved["multitask"]["shipped"] - oof) < 2e-3  # shipped is the OOF, rebuilt
    assert (tmp_path / "rep" / "attribution.png").stat().st_size > 1000
    assert "stage one's share" in (tmp_path / "rep" / "attribution.md").read_text()


def test_the_attributed_studies_are_a_seeded_draw_capped_whatever_the_number_of_studies():
    from lumbar.commands.attribution import sample_studies

    ids = list(range(1000, 3000, 2))  # 1,000 studies
    pick = sample_studies(ids, 400)
    assert len(pick) == 400 and len(set(pick.tolist())) == 400 and (np.diff(pick) > 0).all()
    shuffled = ids[::-1]  # the draw is of studies, not of positions in a list
    assert sorted(shuffled[i] for i in sample_studies(shuffled, 400)) == sorted(ids[i] for i in pick)
    assert sample_studies(ids, 0).tolist() == list(range(1000)) and len(sample_studies(ids[:50], 400)) == 50


def test_attribution_over_a_sample_of_the_held_out_studies(run_copy, synth_dir, tmp_path):
    run, cache = run_copy
    res = attribution(synth_dir, run, tmp_path / "rep", str(cache), ("multitask",), n_boot=50, max_studies=4)
    assert res["multitask"]["studies"] == 4
