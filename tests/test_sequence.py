import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from lumbar import schema
from lumbar.data.cache import StudyCache
from lumbar.data.catalog import load_studies
from lumbar.data.volumes import study_volumes
from lumbar.preprocess.frames import (FramesConfig, build_frames, choose_series, even_indices, snapped_indices,
                                      study_frames)
from lumbar.train.oof import read_oof
from lumbar.train.runner import RunConfig, train

from conftest import TINY_SEQUENCE
from test_dicom import _sagittal


def test_even_indices():
    assert even_indices(10, 10).tolist() == list(range(10))
    assert even_indices(19, 10).tolist()[0] == 0 and even_indices(19, 10).tolist()[-1] == 18
    assert len(even_indices(3, 10)) == 10  # repeats when the series is short
    assert even_indices(1, 4).tolist() == [0, 0, 0, 0]


def test_snapped_indices_move_the_nearest_frame_onto_each_target():
    idx = even_indices(15, 6)  # 0 3 6 8 11 14
    assert snapped_indices(idx, [4, 10]).tolist() == [0, 4, 6, 8, 10, 14]
    assert snapped_indices(idx, [6]).tolist() == idx.tolist()  # already there
    assert snapped_indices(idx, []).tolist() == idx.tolist()


def test_frame_order_follows_position_not_instance_number(tmp_path):
    """A series whose instance numbers run backwards gives the same frames."""
    from lumbar.data.dicom import read_series

    fwd = read_series(_sagittal(tmp_path, "fwd", n=12))
    bwd = read_series(_sagittal(tmp_path, "bwd", n=12, instances=list(range(40, 28, -1))))
    cfg = FramesConfig(n_frames=6, size=16)
    a = build_frames({schema.SAG_T1: [(1, fwd)]}, cfg)
    b = build_frames({schema.SAG_T1: [(2, bwd)]}, cfg)
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_allclose(a["positions"], b["positions"])
    means = a["frames"][0].astype(np.float32).mean(axis=(1, 2))
    assert np.all(np.diff(means) > 0)  # right to left (canonical), the way slice values rise here
    assert a["mask"].tolist() == [True, False, False]
    assert not a["frames"][1:].any()


def test_merge_and_most_levels(synth_dir):
    studies = load_studies(synth_dir, "train")
    multi = next(s for s in studies if len(s.series_of(schema.AXIAL)) >= 2)
    vols = study_volumes(multi, None)[schema.AXIAL]
    px, pos, ref = choose_series(vols, "merge")
    assert len(px) == sum(len(v) for _, v in vols)
    assert np.all(np.diff(pos) >= 0)
    px2, pos2, ref2 = choose_series(vols, "most_levels")
    assert len(px2) == max(len(v) for _, v in vols if np.ptp(v.depth) == max(np.ptp(w.depth) for _, w in vols))
    with pytest.raises(ValueError, match="pick"):
        choose_series(vols, "sideways")


def test_frames_cached_and_missing_type_masked(synth_dir, tmp_path):
    studies = load_studies(synth_dir, "train")
    no_t1 = next(s for s in studies if not s.series_of(schema.SAG_T1))
    cache = StudyCache(tmp_path, "v")
    cfg = FramesConfig(n_frames=5, size=32)
    e = study_frames(no_t1, cfg, cache)
    assert e["frames"].shape == (3, 5, 32, 32)
    assert e["mask"].tolist() == [False, True, True]
    assert not e["frames"][0].any() and e["frames"][1].astype(np.float32).std() > 0.01
    again = study_frames(no_t1, cfg, cache)
    assert cache.hits == 1
    np.testing.assert_array_equal(again["frames"], e["frames"])


def test_sequence_trains_and_predicts_all_columns_without_axial(synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    series = pd.read_csv(data / "train_series_descriptions.csv")
    victim = int(series.study_id.iloc[0])
    for row in series[(series.study_id == victim) & (series.series_description == "Axial T2")].itertuples():
        shutil.rmtree(data / "train_images" / str(victim) / str(row.series_id))
    series[~((series.study_id == victim) & (series.series_description == "Axial T2"))].to_csv(
        data / "train_series_descriptions.csv", index=False)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = train("sequence", data, run, RunConfig(n_folds=2), [f"cache_dir={tmp_path / 'cache'}", *TINY_SEQUENCE])
    assert np.isfinite(res["oof_score"])
    ids = pd.read_csv(data / "train.csv").study_id.tolist()
    oof = read_oof(run, "sequence", ids)
    assert np.isfinite(oof).all() and np.allclose(oof.sum(-1), 1, atol=1e-5)
    row = oof[ids.index(victim)]
    # the model's own prediction for every column, axial ones included (no fallback filled them in)
    from lumbar.cv import read_folds
    from lumbar.metric import labels_to_array
    from lumbar.models.prior import fit_prior

    folds = read_folds(run)
    y = labels_to_array(pd.read_csv(data / "train.csv"))
    fold = np.array([folds[s] for s in ids])
    prior = fit_prior(y[fold != folds[victim]])
    sub = [j for j, c in enumerate(schema.LABEL_COLUMNS) if "subarticular" in c]
    assert np.abs(row[sub] - prior[sub]).max() > 1e-4


def test_frame_points_follow_the_labelled_slices(synth_dir, tmp_path):
    """The labelled points land on the frames near their slice, inside the frame, on the right
    series type's channels; a study without coordinates has none."""
    studies = load_studies(synth_dir, "train")
    cfg = FramesConfig(n_frames=6, size=48)
    with_coords = [s for s in studies if s.has_coords]
    e = study_frames(with_coords[0], cfg, None)
    pts = e["points"]
    assert pts.shape == (3, 6, 5, 2)
    ok = np.isfinite(pts).all(-1)
    assert ok[schema.SERIES_TYPES.index(schema.SAG_T2)].any()
    assert (pts[ok] > -1).all() and (pts[ok] < 49).all()
    assert not ok[schema.SERIES_TYPES.index(schema.AXIAL), :, 2:].any()  # axial: left/right only
    # T2: each level's canal point sits on at most a few neighbouring frames, not on all of them
    assert ok[schema.SERIES_TYPES.index(schema.SAG_T2)].sum(0).max() < 6
    without = next(s for s in studies if not s.has_coords)
    assert not np.isfinite(study_frames(without, cfg, None)["points"]).any()
