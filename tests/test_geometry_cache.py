"""A study's geometry is one small cache entry: once its slice features are cached, the slice selector's
training reads every study without decoding it again (at 1,975 studies two decodes of each cost ~500 s an
attempt, issue 42), and what it reads is what the decode gave."""
from dataclasses import fields

import numpy as np
import pytest

from conftest import real_folder
from lumbar.data.cache import StudyCache
from lumbar.data.catalog import load_studies
from lumbar.preprocess import pipeline
from lumbar.preprocess.pipeline import cache_version, features_cached, study_features
from lumbar.train import selector


@pytest.fixture(scope="module")
def real_studies(tmp_path_factory):
    root = real_folder(tmp_path_factory.mktemp("geo") / "data", studies=3, test_studies=4, seed=4)
    # the test split lacks tags (PixelSpacing, ImageOrientationPatient): the filled geometry must survive too
    return load_studies(root, "train") + load_studies(root, "test")


def test_geometry_and_features_come_back_from_the_cache_without_a_decode(real_studies, tmp_path, monkeypatch):
    cache = StudyCache(tmp_path, cache_version())
    decoded = {}
    with pytest.warns(UserWarning, match="has no PixelSpacing") as seen:  # a series whose spacing is filled
        for st in real_studies:
            assert not features_cached(st, cache)
            selector._featurise(st, cache)  # warm_cache's job: decode once, write features, thumbnails, geometry
            assert features_cached(st, cache)
            decoded[st.study_id] = study_features(st, cache, keep_pixels=False)
    assert any("no ImageOrientationPatient; its rows from" in str(w.message) for w in seen)  # and rows filled

    def no_decode(*a, **k):
        raise AssertionError("decoded again")
    monkeypatch.setattr(pipeline, "study_volumes", no_decode)
    monkeypatch.setattr(selector, "study_volumes", no_decode)
    for st in real_studies:
        selector._featurise(st, cache)  # a resumed stage's warm_cache: nothing to do
        again = study_features(st, cache, keep_pixels=False)
        assert list(again) == list(decoded[st.study_id])
        for stype in again:
            for a, b in zip(again[stype], decoded[st.study_id][stype], strict=True):
                assert a.series_id == b.series_id
                np.testing.assert_array_equal(a.features, b.features)
                assert a.volume.pixels.shape == b.volume.pixels.shape and not any(a.volume.pixels.strides)  # no pixels
                for f in fields(a.volume):
                    if f.name != "pixels":
                        np.testing.assert_array_equal(getattr(a.volume, f.name), getattr(b.volume, f.name),
                                                      err_msg=f"study {st.study_id} series {a.series_id}: {f.name}")


def test_a_study_whose_features_are_missing_is_decoded(real_studies, tmp_path):
    cache = StudyCache(tmp_path, cache_version())
    st = real_studies[0]
    selector._featurise(st, cache)
    feat = next(p for p in cache.path(st.study_id, "x").parent.iterdir() if p.name.startswith("feat_"))
    feat.unlink()
    assert not features_cached(st, cache)
    selector._featurise(st, cache)  # decodes again and writes the missing entry
    assert feat.exists() and features_cached(st, cache)


def test_only_a_geometry_reader_leaves_the_geometry_entry(real_studies, tmp_path):
    """Inference (pixels kept: crops follow) writes no geometry entry into its temporary cache; the
    selector's training, which reads geometry only, does."""
    from lumbar.data.volumes import GEOMETRY_ENTRY

    st = real_studies[0]
    kernel = StudyCache(tmp_path / "kernel", cache_version())
    study_features(st, kernel)
    assert any(n.startswith("feat_") for n in (p.name for p in kernel.path(st.study_id, "x").parent.iterdir()))
    assert not kernel.path(st.study_id, GEOMETRY_ENTRY).exists()
    reader = StudyCache(tmp_path / "reader", cache_version())
    study_features(st, reader, keep_pixels=False)
    assert reader.path(st.study_id, GEOMETRY_ENTRY).exists()
