import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lumbar import schema
from lumbar.commands.cli import main
from lumbar.data.cache import StudyCache
from lumbar.data.catalog import load_studies
from lumbar.preprocess import pipeline
from lumbar.preprocess.crops import CROP_NAMES, crop_resize, find_spine_column, map_points, unmap_points
from lumbar.preprocess.pipeline import cache_version, preprocess_study, study_features
from lumbar.preprocess.slice_select import STYPE_KEY, SliceSelector

boxes = st.tuples(st.floats(-50, 200), st.floats(-50, 200), st.floats(10, 400), st.floats(10, 400))


@settings(max_examples=200, deadline=None)
@given(box=boxes, size=st.integers(8, 256), x=st.floats(-100, 600), y=st.floats(-100, 600))
def test_map_then_unmap_is_identity(box, size, x, y):
    b = np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]])
    p = np.array([[x, y]])
    back = unmap_points(map_points(p, b, size), b, size)
    assert np.abs(back - p).max() < 0.5
    assert np.abs(back - p).max() < 1e-6  # exact up to rounding


@pytest.mark.parametrize("box,size", [((10, 20, 74, 84), 64), ((5.5, 7.25, 101.5, 103.25), 48), ((20, 30, 60, 70), 90)])
def test_crop_puts_a_dot_where_map_points_says(box, size):
    img = np.zeros((128, 128), np.float32)
    img[50, 40] = 1.0  # (x=40, y=50)
    b = np.array(box, dtype=float)
    crop = crop_resize(img[None], b, size)[0]
    expected = map_points(np.array([[40.0, 50.0]]), b, size)[0]
    peak = np.unravel_index(np.argmax(crop), crop.shape)
    assert abs(peak[1] - expected[0]) <= 1.0 and abs(peak[0] - expected[1]) <= 1.0


def test_neighbours_clamped_at_series_ends_and_block_edges():
    from lumbar.data.dicom import Volume

    def vol(blocks):
        n = len(blocks)
        return Volume(np.zeros((n, 4, 4), np.float32), np.zeros((n, 3)), np.array([0, 0, -1.0]), np.ones(2),
                      np.arange(n), np.array([1.0, 0, 0, 0, 1, 0]), blocks=np.array(blocks))
    assert vol([0] * 10).neighbours(0) == [0, 0, 1]
    assert vol([0] * 10).neighbours(9) == [8, 9, 9]
    assert vol([0]).neighbours(0) == [0, 0, 0]
    # a slice at a block's edge does not take the next block's slice (another disc) as its neighbour
    assert vol([0, 0, 0, 1, 1, 1]).neighbours(2) == [1, 2, 2]
    assert vol([0, 0, 0, 1, 1, 1]).neighbours(3) == [3, 3, 4]


def test_spine_column_found_on_synthetic_sagittal(synth_dir):
    studies = load_studies(synth_dir, "train")
    cache = StudyCache(None, "x")
    found = 0
    for study in studies:
        if not study.has_coords or not study.series_of(schema.SAG_T2):
            continue
        feats = study_features(study, cache)
        sf = feats[schema.SAG_T2][0]
        rows = study.coords[study.coords.condition == "Spinal Canal Stenosis"]
        if not len(rows) or int(rows.series_id.iloc[0]) != sf.series_id:
            continue
        v = sf.volume
        img = v.pixels[v.index_of_instance(int(rows.instance_number.iloc[0]))]
        col, prom = find_spine_column(img / img.max())
        canal_x = rows.x.mean() / img.shape[1]
        # the vertebral bodies lie just anterior (image left) of the canal, within ~1/8 of the width
        assert 0 < canal_x - col < 0.15 and prom > 1.5
        found += 1
    assert found >= 3


def test_cache_atomic_and_truncated_entry_rebuilt(tmp_path):
    cache = StudyCache(tmp_path, "v1")
    calls = []

    def build():
        calls.append(1)
        return {"a": np.arange(1000.0), "b": np.ones((3, 3))}

    first = cache.get(7, "thing", build)
    again = cache.get(7, "thing", build)
    assert len(calls) == 1 and cache.hits == 1
    np.testing.assert_array_equal(first["a"], again["a"])
    assert not [p for p in (tmp_path / "v1" / "7").iterdir() if p.name.endswith(".tmp")]
    path = cache.path(7, "thing")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a kill mid-write of a non-atomic writer
    with pytest.warns(UserWarning, match="corrupt cache entry"):
        rebuilt = cache.get(7, "thing", build)
    assert len(calls) == 2
    np.testing.assert_array_equal(rebuilt["a"], first["a"])
    assert StudyCache(tmp_path, "v2").load(7, "thing") is None  # another version never sees it


def test_slice_select_report_and_artefacts(stage_one):
    run, cache, _ = stage_one
    report = pd.read_csv(run / "slice_select" / "report.csv")
    assert set(report.method) == {"rf", "svm", "mlp", "xgb", "ensemble", "naive", "geometry", "fused", "local", "ranked", "shipped"}
    assert set(report[report.method == "ranked"].series_type) == {schema.AXIAL}  # the ranker serves axial levels
    assert set(report.series_type) == set(schema.SERIES_TYPES)
    by = report.set_index(["series_type", "method"])
    levels = json.loads((run / "slice_select" / "model" / "levels.json").read_text())
    assert set(levels["choice"]) == {schema.AXIAL, schema.SAG_T1}  # the canal slice is always the vote's
    for stype in schema.SERIES_TYPES:  # "shipped" is what inference uses: the method chosen held out
        chosen = levels["choice"].get(stype, "ensemble")
        assert by.loc[(stype, "shipped")].tolist() == by.loc[(stype, chosen)].tolist()
        best = max(by.loc[(stype, m)].exact for m in ("ensemble", "geometry", "fused", "local", "ranked") if (stype, m) in by.index)
        assert by.loc[(stype, "shipped")].exact == best
    assert (run / "slice_select" / "levels.csv").exists()
    kinds = pd.read_csv(run / "slice_select" / "report_kinds.csv")  # the shipped rows split by acquisition
    for stype, rows in kinds.groupby("series_type"):
        assert rows.n.sum() == by.loc[(stype, "shipped")].n
        assert np.isclose((rows.exact * rows.n).sum() / rows.n.sum(), by.loc[(stype, "shipped")].exact)
    assert set(kinds.kind) <= {"block, odd", "block, even", "stack", "thin"}
    assert ((report.exact >= 0) & (report.exact <= report.within1) & (report.within1 <= 1)).all()
    manifest = json.loads((run / "slice_select" / "model" / "selector.json").read_text())
    assert "sklearn" in manifest and "xgboost" in manifest
    assert (run / "slice_select" / "model" / "axial_xgb.npz").exists()
    oof = json.loads((run / "slice_select" / "oof_selection.json").read_text())
    assert len(oof) == 10
    assert set(levels["scorers"]) <= {schema.AXIAL, schema.SAG_T1}
    if levels["choice"].get(schema.SAG_T1, "ensemble") != "ensemble":  # each T1 level's own slice and row travel on
        lengths = {len(sel["sag_t1_left"]) for sel in oof.values() if "sag_t1_left" in sel}
        assert 14 in lengths and lengths <= {2, 4, 14}  # (series, slice[, centre]) where no level points were found


def test_crops_report_and_every_study_gets_crops(stage_one, synth_dir):
    run, cache, result = stage_one
    assert 0 < result["containment"] <= 1
    selector, sel_id, regions, cfg = pipeline.load_stage_one(run)
    assert cfg.sag_size == 64
    c = StudyCache(cache, cache_version())
    for split in ("train", "test"):
        for study in load_studies(synth_dir, split):
            entry = preprocess_study(study, selector, sel_id, regions, cfg, c)
            assert entry["sag_image"].shape == (3, 3, 64, 64) and entry["axial_image"].shape == (5, 3, 48, 48)
            for i, name in enumerate(CROP_NAMES):
                stype = pipeline.CROPS[name][0]
                assert entry["present"][i] == bool(study.series_of(stype)), (study.study_id, name)
                img = entry["sag_image"][i] if i < 3 else entry["axial_image"][i - 3]
                assert np.isfinite(img.astype(np.float32)).all()
                if entry["present"][i]:
                    assert img.astype(np.float32).std() > 0.01
                else:
                    assert not img.any()
            if split == "test" or not study.has_coords:
                assert np.isnan(entry["sag_points"]).all() and np.isnan(entry["axial_points"]).all()


def test_second_run_reads_the_cache(stage_one, synth_dir, monkeypatch):
    run, cache, _ = stage_one
    selector, sel_id, regions, cfg = pipeline.load_stage_one(run)
    c = StudyCache(cache, cache_version())
    studies = load_studies(synth_dir, "test")
    first = [preprocess_study(s, selector, sel_id, regions, cfg, c) for s in studies]

    def no_decode(*a, **k):
        raise AssertionError("decoded again")
    monkeypatch.setattr(pipeline, "study_volumes", no_decode)
    monkeypatch.setattr(pipeline, "study_features", no_decode)
    second = [preprocess_study(s, selector, sel_id, regions, cfg, c) for s in studies]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["sag_image"], b["sag_image"])


def test_selector_round_trip_without_pickles_and_damaged_members(stage_one, synth_dir, tmp_path):
    run, cache, _ = stage_one
    model = run / "slice_select" / "model"
    assert not list(model.glob("*.pkl")), "no member is pickled"
    assert sorted(f.suffix for f in model.glob("axial_*")) == [".npz"] * 4
    sel = SliceSelector.load(model, strict=True)
    study = load_studies(synth_dir, "train")[0]
    feats = study_features(study, StudyCache(cache, cache_version()))
    sf = feats[schema.AXIAL][0]
    p = sel.predict_proba(schema.AXIAL, sf.features)
    assert p.shape == (len(sf.features), 6) and np.allclose(p.sum(1), 1, atol=1e-5)
    # the members as written predict what the fitted scikit-learn ones did on the probe rows kept at fit
    with np.load(model / "probes.npz", allow_pickle=False) as z:
        rows = z["axial/rows"]
        for m in ("rf", "svm", "mlp", "xgb"):
            np.testing.assert_allclose(sel.predict_proba(schema.AXIAL, rows, m), z[f"axial/{m}"],
                                       atol=1e-6 if m == "xgb" else 1e-9, rtol=0)  # XGBoost sums in float32
    # a damaged member: a clear error naming the file and the versions, or the others carry the vote
    broken = tmp_path / "model"
    broken.mkdir()
    for f in model.iterdir():
        broken.joinpath(f.name).write_bytes(f.read_bytes())
    (broken / "axial_rf.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(RuntimeError, match=r"axial_rf\.npz.*trained with scikit-learn \d"):
        SliceSelector.load(broken, strict=True)
    lenient = SliceSelector.load(broken)  # never raises: the member is dropped and listed
    assert len(lenient.dropped) == 1 and "axial_rf.npz" in lenient.dropped[0]
    assert list(lenient.members[schema.AXIAL]) == ["svm", "mlp", "xgb"]
    # every other member damaged too: that type has no member left and falls back to the naive rule
    (broken / "axial_xgb.npz").write_text("{not an npz")
    for m in ("svm", "mlp"):
        (broken / f"axial_{m}.npz").write_bytes(b"garbage")
    worse = SliceSelector.load(broken)
    assert schema.AXIAL not in worse.members and len(worse.dropped) == 4
    assert worse.predict_proba(schema.AXIAL, sf.features) is None
    np.testing.assert_allclose(lenient.predict_proba(schema.AXIAL, sf.features),
                               np.mean([sel.predict_proba(schema.AXIAL, sf.features, m) for m in ("svm", "mlp", "xgb")],
                                       axis=0), atol=1e-6)


def test_a_pickled_selector_is_refused_without_being_unpickled(stage_one, tmp_path):
    """Selector format 1 (pickled members): a pickle that would run code if unpickled is never opened."""
    run, _, _ = stage_one
    old = tmp_path / "model"
    old.mkdir()
    manifest = json.loads((run / "slice_select" / "model" / "selector.json").read_text())
    manifest.pop("format")
    manifest.pop("levels", None)
    (old / "selector.json").write_text(json.dumps(manifest))
    marker = tmp_path / "unpickled"

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    for stype in manifest["types"]:
        for m in ("rf", "svm", "mlp"):
            (old / f"{STYPE_KEY[stype]}_{m}.pkl").write_bytes(pickle.dumps(Bomb()))
    sel = SliceSelector.load(old)
    assert not marker.exists(), "a pickle was executed"
    assert not sel.members and len(sel.dropped) == 3 * len(manifest["types"]) + len(manifest["types"])
    assert all("re-train slice_select" in d or "xgb" in d for d in sel.dropped)
    with pytest.raises(RuntimeError, match=r"_rf\.pkl.*unpickles nothing"):
        SliceSelector.load(old, strict=True)


def test_show_figure(stage_one, synth_dir, tmp_path):
    run, cache, _ = stage_one
    study = load_studies(synth_dir, "train")[0].study_id
    out = tmp_path / "show.png"
    assert main(["show", "--data", str(synth_dir), "--study", str(study), "--out", str(out), "--run", str(run),
                 "--cache", str(cache)]) == 0
    assert out.stat().st_size > 10_000
    assert main(["show", "--data", str(synth_dir), "--study", "12345", "--out", str(out), "--run", str(run)]) == 2


def test_show_finds_a_test_study_in_a_folder_without_train_csv(stage_one, synth_copy, tmp_path):
    run, cache, _ = stage_one
    (synth_copy / "train.csv").unlink()
    study = load_studies(synth_copy, "test")[0].study_id
    out = tmp_path / "test_study.png"
    assert main(["show", "--data", str(synth_copy), "--study", str(study), "--out", str(out), "--run", str(run),
                 "--cache", str(cache)]) == 0
    assert out.stat().st_size > 10_000


def test_training_holds_geometry_and_keys_not_pixels(stage_one, synth_dir, tmp_path):
    from lumbar.data.cache import CachedEntries, take

    run, cache, _ = stage_one
    c = StudyCache(cache, cache_version())
    study = load_studies(synth_dir, "train")[0]
    full = study_features(study, c)
    light = study_features(study, c, keep_pixels=False)
    for stype in full:
        for a, b in zip(full[stype], light[stype]):
            assert b.volume.pixels.shape == a.volume.pixels.shape and b.volume.pixels.strides == (0, 0, 0)
            np.testing.assert_array_equal(a.features, b.features)
            np.testing.assert_array_equal(a.volume.positions, b.volume.positions)
    # the selection made from geometry and features alone is the same
    assert pipeline.select(full, None) == pipeline.select(light, None)

    entries = CachedEntries(c, [(study.study_id, f"feat_{full[schema.AXIAL][0].series_id}")])
    np.testing.assert_array_equal(entries[0]["x"], full[schema.AXIAL][0].features)
    assert len(take(entries, [0, 0])) == 2 and isinstance(take(entries, [0]), CachedEntries)
    missing = CachedEntries(c, [(study.study_id, "no_such_entry")])
    with pytest.raises(FileNotFoundError, match="no_such_entry.npz: cache entry missing"):
        missing[0]


def test_the_svm_sample_keeps_the_labelled_slices_and_its_cap():
    import numpy as np

    from lumbar.preprocess.slice_select import cpu_jobs, svm_sample

    y = np.zeros(10000, int)
    y[::20] = np.arange(500) % 5 + 1  # 500 level slices among 9,500 others
    rows = svm_sample(y, 3000, seed=0)
    assert len(rows) == 3000 and len(np.unique(rows)) == 3000
    assert set(np.flatnonzero(y)) <= set(rows.tolist())  # every labelled slice kept
    assert np.array_equal(rows, svm_sample(y, 3000, seed=0))  # reproducible
    assert np.array_equal(svm_sample(y, 0, 0), np.arange(10000)) and len(svm_sample(y[:100], 3000, 0)) == 100
    assert len(svm_sample(np.ones(5000, int), 3000, 0)) == 3000  # no others: the cap filled with labelled slices
    assert cpu_jobs(0) >= 1 and cpu_jobs(3) == 3


def test_points_labelled_in_another_series_of_the_type_are_carried_through_patient_space(synth_dir):
    """A study with two sagittal T1 series has its foramina labelled in one: the other's crop gets the
    same patient points, on its own pixel grid, where its planes reach them; none where they do not."""
    from dataclasses import replace

    from lumbar.data.volumes import study_volumes

    study = next(s for s in load_studies(synth_dir, "train") if len(s.coords))
    (sid, v), = study_volumes(study).get(schema.SAG_T1)[:1]
    own, inst = pipeline.labels_for(study, "sag_t1_left", sid, v)
    assert np.isfinite(own).all() and (inst > 0).all()
    r, c = v.orientations[0, :3], v.orientations[0, 3:]
    shift = (5 * r * v.pixel_spacing[1] + 3 * c * v.pixel_spacing[0])  # the other grid starts 5 columns right, 3 rows down
    half_slice = 0.4 * float(np.median(np.abs(np.diff(v.depth)))) * np.cross(r, c)
    other = replace(v, positions=v.positions + shift + half_slice, source_geometry=None, orientations=None)
    # the same rows as the labels of `sid`, asked of a series that holds none of them
    carried, inst2 = pipeline.labels_for(study, "sag_t1_left", -1, other, {sid: v})
    assert np.allclose(carried, own - [5, 3], atol=1e-6) and (inst2 == -1).all()
    nothing, _ = pipeline.labels_for(study, "sag_t1_left", -1, other)  # without the other series: no points
    assert np.isnan(nothing).all()
    beyond = (len(v) + 2) / 0.4 * half_slice  # every plane past the series' last one
    far = replace(v, positions=v.positions + beyond, source_geometry=None, orientations=None)
    assert np.isnan(pipeline.labels_for(study, "sag_t1_left", -1, far, {sid: v})[0]).all()


@pytest.mark.slow
def test_folds_fitted_in_worker_processes_give_the_serial_result(synth_dir, tmp_path):
    """fold_workers=2 forks two one-thread processes for the selector's folds and its final fit: the same
    report, held-out selection (in fold order) and shipped selector as fitting them one by one."""
    import warnings

    from lumbar.train.runner import RunConfig, train
    from lumbar.train.selector import SliceSelectConfig, fold_workers

    assert fold_workers(SliceSelectConfig(device="cpu")) >= 1 and fold_workers(SliceSelectConfig(fold_workers=3)) == 3
    got = {}
    for w in (1, 2):
        run = tmp_path / f"run{w}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train("slice_select", synth_dir, run, RunConfig(n_folds=2, seed=0),
                  [f"cache_dir={tmp_path / 'cache'}", "workers=1", "levels_steps=10", "members=rf,xgb",
                   f"fold_workers={w}"])
        out = run / "slice_select"
        got[w] = [(out / name).read_text() for name in ("report.csv", "report_kinds.csv", "levels.csv", "oof_selection.json",
                                                         "model/selector.json")]
        got[w].append(sorted(p.name for p in (out / "model").iterdir()))
    assert got[1] == got[2]
    assert len(json.loads(got[2][3])) == 10  # every study held out once


def test_decoded_volumes_stay_in_memory_unless_asked_and_read_the_same(synth_dir, tmp_path, monkeypatch):
    """The cache writes a study's features but not its decoded volumes (as large as its DICOM) by default;
    LUMBAR_CACHE_VOLUMES=1 writes them. The volumes are the same arrays either way, and a stage that reads
    one series' pixels (data/volumes.series_pixels) decodes it when it is not on disk."""
    from lumbar.data.cache import volumes_kept
    from lumbar.data.volumes import study_volumes
    from lumbar.data.volumes import series_pixels

    study = load_studies(synth_dir, "train")[0]
    lean = StudyCache(tmp_path / "lean", cache_version())
    vols = study_volumes(study, lean)
    study_features(study, lean, vols)
    written = {p.name for p in lean.root.rglob("*.npz")}
    assert written and not [n for n in written if n.startswith("vol_")]
    monkeypatch.setenv("LUMBAR_CACHE_VOLUMES", "1")
    assert volumes_kept()
    full = StudyCache(tmp_path / "full", cache_version())
    kept = study_volumes(study, full)
    assert len([p for p in full.root.rglob("vol_*.npz")]) == sum(len(v) for v in study.series.values())
    reread = study_volumes(study, StudyCache(tmp_path / "full", cache_version()))  # from disk now
    for stype, items in vols.items():
        for (sid, a), (_, b), (_, c) in zip(items, kept[stype], reread[stype]):
            assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.pixels, c.pixels)
            assert np.array_equal(series_pixels(study, sid, lean), series_pixels(study, sid, full))
    monkeypatch.setenv("LUMBAR_CACHE_VOLUMES", "yes")
    with pytest.raises(ValueError, match="LUMBAR_CACHE_VOLUMES"):
        StudyCache(tmp_path, "v")
