"""Every stage right on the real data's geometry: angled axial blocks kept, one canonical patient
orientation (a flipped or renumbered copy of a study gives the same crops, frames and predictions),
axial heights at slice centres, labelled points carried through resampling."""
import shutil
import warnings

import numpy as np
import pandas as pd
import pydicom
import pytest

from lumbar import schema
from lumbar.data.catalog import load_studies
from lumbar.data.dicom import read_series
from lumbar.data.synth.dicom import write_dicom
from lumbar.data.synth.phantom import SliceGeom
from lumbar.data.synth.spec import StudySpec
from lumbar.data.synth.studies import make_real_study
from lumbar.data.volumes import study_volumes
from lumbar.preprocess.crops import CropRegions
from lumbar.preprocess.frames import FramesConfig, build_frames
from lumbar.preprocess.pipeline import (PreprocessConfig, build_crops, labelled_slices, naive_selection,
                                        study_features, true_selection)


def _real_study(root, spec, seed=3):
    """One real-profile study (quarter-size matrices) written as a train folder's images."""
    images = root / "train_images"
    narrowing = np.zeros(25)
    series, coords = make_real_study(images, 11, narrowing, spec, seed=seed, size_scale=0.25)
    return images / "11", pd.DataFrame(series), pd.DataFrame(coords)


def test_an_axial_series_of_five_angled_blocks_keeps_every_slice(tmp_path):
    folder, series, coords = _real_study(tmp_path, StudySpec(n_axial=1, axial_kinds={0: "blocks"}))
    axial_id = int(series[series.series_description == schema.AXIAL].series_id.iloc[0])
    files = list((folder / str(axial_id)).glob("*.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing dropped, nothing to warn about
        v = read_series(folder / str(axial_id), "axial")
    assert len(v) == len(files)
    assert v.n_blocks == 5
    assert all(np.all(np.diff(v.blocks) >= 0) for _ in [0])  # blocks contiguous, in order
    heights = [v.centres[v.blocks == b, 2].mean() for b in range(5)]
    assert np.all(np.diff(heights) < 0)  # head to feet
    # each level's labelled slice lies in its own block, and so does the slice the naive rule chooses
    rows = coords[(coords.series_id == axial_id)]
    for r in rows.itertuples():
        k = schema.LEVEL_NAMES.index(r.level)
        assert v.blocks[v.index_of_instance(r.instance_number)] == k
    sel = naive_selection({schema.AXIAL: [(axial_id, v)]})
    for k, lv in enumerate(schema.LEVELS):
        sid, idx = sel[f"axial_{lv}"]
        assert sid == axial_id and v.blocks[idx] == k
    # the slice centres, not the corners, give each block's height: a tilted block's corner is off
    corner_err = np.abs(v.positions[:, 2] - v.centres[:, 2]).max()
    assert corner_err > 5.0


def _transform_study(src, dst, flip: bool, reverse: bool, coords: pd.DataFrame, study_id: int,
                     new_id: int) -> pd.DataFrame:
    """A copy of a study's series with the row direction reversed (pixels mirrored, orientation and
    position rewritten to describe the same anatomy) and/or the instance numbers reversed; the
    coordinate rows rewritten to match."""
    out = coords[coords.study_id == study_id].copy()
    out["study_id"] = new_id
    for series_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(series_dir.glob("*.dcm"))
        insts = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
        lo, hi = min(insts), max(insts)
        (dst / series_dir.name).mkdir(parents=True)
        sid = int(series_dir.name)
        for f in files:
            ds = pydicom.dcmread(f)
            inst = int(ds.InstanceNumber)
            if flip:
                arr = ds.pixel_array[:, ::-1].copy()
                row = np.array([float(x) for x in ds.ImageOrientationPatient[:3]])
                ipp = np.array([float(x) for x in ds.ImagePositionPatient])
                ipp = ipp + row * (arr.shape[1] - 1) * float(ds.PixelSpacing[1])
                ds.ImageOrientationPatient = [f"{x:.10g}" for x in (*(-row), *ds.ImageOrientationPatient[3:])]
                ds.ImagePositionPatient = [f"{x:.10g}" for x in ipp]
                ds.PixelData = arr.astype(arr.dtype).tobytes()
                m = (out.series_id == sid) & (out.instance_number == inst)
                out.loc[m, "x"] = arr.shape[1] - 1 - out.loc[m, "x"]
            new_inst = lo + hi - inst if reverse else inst
            ds.InstanceNumber = new_inst
            ds.save_as(dst / series_dir.name / f"{new_inst}.dcm")
        if reverse:
            m = out.series_id == sid
            out.loc[m, "instance_number"] = lo + hi - out.loc[m, "instance_number"]
    return out


@pytest.fixture(scope="module")
def mirrored(synth_dir, tmp_path_factory):
    """The small synthetic folder with, as extra train and test studies, copies of one labelled train
    study and of one test study: mirrored (row direction reversed) and renumbered (instances reversed)."""
    data = tmp_path_factory.mktemp("mirror") / "competition"
    shutil.copytree(synth_dir, data)
    coords = pd.read_csv(data / "train_label_coordinates.csv")
    train = pd.read_csv(data / "train.csv")
    desc = {split: pd.read_csv(data / f"{split}_series_descriptions.csv") for split in ("train", "test")}
    src_train = int(coords.study_id.iloc[0])
    src_test = int(desc["test"].study_id.iloc[0])
    copies = {}
    for split, src in (("train", src_train), ("test", src_test)):
        for k, (flip, reverse) in enumerate(((True, False), (False, True))):
            new = 900_000 + 10 * (split == "test") + k
            rows = _transform_study(data / f"{split}_images" / str(src), data / f"{split}_images" / str(new),
                                    flip, reverse, coords, src, new)
            if split == "train":
                coords = pd.concat([coords, rows])
                train = pd.concat([train, train[train.study_id == src].assign(study_id=new)])
            d = desc[split]
            desc[split] = pd.concat([d, d[d.study_id == src].assign(study_id=new)])
            copies[(split, "flip" if flip else "reverse")] = new
    coords.to_csv(data / "train_label_coordinates.csv", index=False)
    train.to_csv(data / "train.csv", index=False)
    for split, d in desc.items():
        d.to_csv(data / f"{split}_series_descriptions.csv", index=False)
    sample = pd.read_csv(data / "sample_submission.csv")
    extra = [f"{sid}_{c}" for sid in (copies[("test", "flip")], copies[("test", "reverse")])
             for c in schema.LABEL_COLUMNS]
    pd.concat([sample, pd.DataFrame({"row_id": extra, **{c: 1 / 3 for c in schema.PROB_COLUMNS}})]).to_csv(
        data / "sample_submission.csv", index=False)
    return data, src_train, src_test, copies


def _inputs(study):
    vols = study_volumes(study, None)
    feats = study_features(study, None, vols)
    sel = true_selection(study, feats) if study.has_coords else naive_selection(vols)
    crops = build_crops(study, vols, sel, CropRegions(), PreprocessConfig(sag_size=64, axial_size=48))
    frames = build_frames(vols, FramesConfig(n_frames=5, size=32), study.coords if study.has_coords else None, sel)
    return vols, feats, sel, crops, frames


def test_a_mirrored_or_renumbered_copy_gives_the_same_crops_frames_and_points(mirrored):
    data, src, _, copies = mirrored
    studies = {s.study_id: s for s in load_studies(data, "train")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _inputs(studies[src])
        for kind in ("flip", "reverse"):
            got = _inputs(studies[copies[("train", kind)]])
            for stype in ref[0]:
                for (_, a), (_, b) in zip(ref[0][stype], got[0][stype]):
                    np.testing.assert_allclose(a.pixels, b.pixels, atol=1e-4)
                    np.testing.assert_allclose(a.positions, b.positions, atol=1e-3)
                for a, b in zip(ref[1][stype], got[1][stype]):
                    np.testing.assert_allclose(a.features, b.features, atol=1e-4)
            assert ref[2].keys() == got[2].keys()  # the same (series, slice) per crop (and levels' slices and rows)
            for name in ref[2]:
                np.testing.assert_allclose(np.asarray(ref[2][name], float), np.asarray(got[2][name], float), atol=1e-3)
            assert sorted(labelled_slices(studies[src], ref[1])) == sorted(
                labelled_slices(studies[copies[("train", kind)]], got[1]))
            for key in ("sag_image", "axial_image"):
                np.testing.assert_allclose(ref[3][key].astype(np.float32), got[3][key].astype(np.float32), atol=1e-3)
            for key in ("sag_points", "axial_points"):  # labelled points followed the mirror (left still left)
                assert np.isfinite(ref[3][key]).any()
                np.testing.assert_allclose(ref[3][key], got[3][key], atol=1e-3, equal_nan=True)
            np.testing.assert_allclose(ref[4]["frames"].astype(np.float32), got[4]["frames"].astype(np.float32),
                                       atol=1e-3)
            np.testing.assert_allclose(ref[4]["points"], got[4]["points"], atol=1e-3, equal_nan=True)


def test_a_mirrored_or_renumbered_test_study_gets_the_same_predictions(mirrored, trained_weights, tmp_path):
    from lumbar.infer.engine import PredictConfig, predict

    data, _, src, copies = mirrored
    predict(data, trained_weights, tmp_path / "sub.csv", PredictConfig(workers=0))
    sub = pd.read_csv(tmp_path / "sub.csv").set_index("row_id")
    cols = list(schema.PROB_COLUMNS)

    def rows(sid):
        return sub.loc[[f"{sid}_{c}" for c in schema.LABEL_COLUMNS], cols].to_numpy()
    prior = rows(src)
    for kind in ("flip", "reverse"):
        np.testing.assert_allclose(rows(copies[("test", kind)]), prior, atol=1e-4)


def test_a_resampled_slice_keeps_its_labelled_point_on_the_same_anatomy(tmp_path):
    """A series of 32² slices with one slice at 48² over the same field of view: a bright dot drawn at
    a point of the 48² file lands, after resampling to 32², where `from_source` puts that point."""
    folder = tmp_path / "mixed"
    ey, ez = np.array([0, 1.0, 0]), np.array([0, 0, -1.0])
    dot = (29.0, 13.0)  # (x, y) in the 48² slice's own pixels
    for k in range(5):
        size = 48 if k == 2 else 32
        sp = 32.0 / size
        img = np.full((size, size), 100, np.uint16)
        if k == 2:
            yy, xx = np.mgrid[:size, :size]
            img += (900 * np.exp(-((xx - dot[0]) ** 2 + (yy - dot[1]) ** 2) / 4.0)).astype(np.uint16)
        g = SliceGeom(np.array([-8.0 + 4 * k, -16.0, 16.0]), ey, ez * 1.0, sp, size, size)
        write_dicom(folder / f"{k + 1}.dcm", img, g, k + 1, 1, 2, "Sagittal T1", 3.5, 1.0, 0.0)
    v = read_series(folder, "sagittal")
    assert v.pixels.shape == (5, 32, 32)
    i = v.index_of_instance(3)
    x, y = v.from_source(i, dot)[0]
    # canonical rows run head -> feet: this series' columns ran feet -> head, so rows were flipped too
    yy, xx = np.mgrid[:32, :32]
    w = np.clip(v.pixels[i] - 100, 0, None)
    peak = np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    np.testing.assert_allclose(peak, [x, y], atol=0.35)
    # the same patient point from both grids
    p_src = np.array([-8.0 + 8, -16.0, 16.0]) + dot[0] * (32 / 48) * ey + dot[1] * (32 / 48) * ez
    p_vol = v.positions[i] + x * v.orientations[i, :3] * v.pixel_spacing[1] + y * v.orientations[i, 3:] * v.pixel_spacing[0]
    np.testing.assert_allclose(p_vol, p_src, atol=1e-4)  # PixelSpacing is a decimal string in the file


def _without_orientation(series, dst):
    """A copy of a series folder whose files lack ImageOrientationPatient, as some hidden-test files do."""
    shutil.copytree(series, dst)
    for f in dst.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.ImageOrientationPatient
        ds.save_as(f)
    return dst


def test_a_series_with_no_orientation_in_any_file_takes_it_from_its_slices_positions(tmp_path):
    # The hidden test lacks ImageOrientationPatient; the plane's default orientation would put five
    # angled discs in one block and a rotated sagittal series' edges centimetres off.
    folder, series, _ = _real_study(tmp_path, StudySpec(n_axial=1, axial_kinds={0: "blocks"}))
    for desc, plane in ((schema.AXIAL, "axial"), (schema.SAG_T2, "sagittal")):
        sid = int(series[series.series_description == desc].series_id.iloc[0])
        tagged = read_series(folder / str(sid), plane)
        stripped = _without_orientation(folder / str(sid), tmp_path / f"stripped_{plane}")
        with pytest.warns(UserWarning, match="taken from the slices' positions"):
            v = read_series(stripped, plane)
        assert v.n_blocks == tagged.n_blocks == (5 if plane == "axial" else 1)
        np.testing.assert_array_equal(v.instance_numbers, tagged.instance_numbers)
        np.testing.assert_allclose(v.pixels, tagged.pixels)
        # each slice's normal is its file's; only a rotation within the plane is not seen
        normals = lambda u: np.cross(u.orientations[:, :3], u.orientations[:, 3:])
        np.testing.assert_allclose(normals(v), normals(tagged), atol=1e-4)  # positions rounded in the files
        assert np.abs(v.centres - tagged.centres).max() < 0.3 * np.abs(tagged.centres - tagged.positions).max()


def test_a_series_without_orientation_turns_its_rows_like_the_studys_other_series(tmp_path):
    # Positions give a slice's normal, not how the image turns within its plane; the study's rotation
    # (a few degrees) left there moves the image's far side by millimetres. The sagittal T2 takes its
    # rows from the T1 of the same normal, the axial series from the patient's left (the T1's normal).
    from lumbar.data.volumes import fill_orientation

    folder, series, _ = _real_study(tmp_path, StudySpec(n_axial=1, axial_kinds={0: "blocks"}), seed=5)
    vols, truth = {}, {}
    for desc, plane in ((schema.SAG_T1, "sagittal"), (schema.SAG_T2, "sagittal"), (schema.AXIAL, "axial")):
        sid = int(series[series.series_description == desc].series_id.iloc[0])
        truth[desc] = read_series(folder / str(sid), plane)
        src = folder / str(sid)
        if desc != schema.SAG_T1:
            src = _without_orientation(src, tmp_path / f"stripped_{plane}_{sid}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vols[desc] = [(sid, read_series(src, plane))]
    assert not vols[schema.SAG_T2][0][1].orientation_known and vols[schema.SAG_T1][0][1].orientation_known
    before = {d: np.abs(vols[d][0][1].centres - truth[d].centres).max() for d in (schema.SAG_T2, schema.AXIAL)}
    with pytest.warns(UserWarning, match="its rows from series"):
        fill_orientation(vols, 11)
    for d in (schema.SAG_T2, schema.AXIAL):
        v = vols[d][0][1]
        assert v.orientation_known
        np.testing.assert_allclose(v.orientations, truth[d].orientations, atol=1e-3)
        after = np.abs(v.centres - truth[d].centres).max()
        assert after < 0.1 < before[d], (d, before[d], after)
        np.testing.assert_allclose(v.from_source(0, [[3.0, 4.0]]), truth[d].from_source(0, [[3.0, 4.0]]), atol=0.01)
