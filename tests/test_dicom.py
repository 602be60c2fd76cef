import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from lumbar.data.dicom import DicomError, DicomWarning, read_series, read_series_stacks
from lumbar.data.synth.dicom import write_dicom
from lumbar.data.synth.phantom import SliceGeom

VARIANTS = ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
            "MR_small_RLE.dcm", "MR_small_padded.dcm"]


def _series_of(tmp_path, name, files):
    folder = tmp_path / name
    folder.mkdir()
    for i, f in enumerate(files):
        shutil.copy(f, folder / f"{i + 1}.dcm")
    return folder


def _testfile(name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return path


def test_real_mr_transfer_syntaxes_give_identical_pixels(tmp_path):
    ref = None
    for name in VARIANTS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MR_small_padded warns about its padding
            v = read_series(_series_of(tmp_path, name.replace(".", "_"), [_testfile(name)]))
        assert v.pixels.shape == (1, 64, 64) and v.pixels.dtype == np.float32
        if ref is None:
            ref = v
        np.testing.assert_array_equal(v.pixels, ref.pixels, err_msg=name)
        np.testing.assert_allclose(v.positions, ref.positions)
        np.testing.assert_allclose(v.pixel_spacing, ref.pixel_spacing)
    ds = pydicom.dcmread(_testfile("MR_small.dcm"))
    np.testing.assert_array_equal(ref.pixels[0], ds.pixel_array.astype(np.float32))
    assert ref.instance_numbers.tolist() == [int(ds.InstanceNumber)]


def test_jpeg2000_lossless_matches_when_a_decoder_is_installed(tmp_path):
    folder = _series_of(tmp_path, "j2k", [_testfile("MR_small_jp2klossless.dcm")])
    try:
        v = read_series(folder)
    except DicomError as e:  # no JPEG 2000 plugin here: the error must say which decoder to install
        assert "decoder" in str(e) and "j2k" in str(e)
        return
    ref = read_series(_series_of(tmp_path, "ref", [_testfile("MR_small.dcm")]))
    np.testing.assert_array_equal(v.pixels, ref.pixels)


def test_missing_decoder_error_names_folder_and_decoder(tmp_path, monkeypatch):
    folder = _series_of(tmp_path, "jls", [_testfile("MR_small_jpeg_ls_lossless.dcm")])
    try:
        pydicom.dcmread(folder / "1.dcm").pixel_array
        pytest.skip("a JPEG-LS decoder is installed here")
    except Exception:
        pass
    with pytest.raises(DicomError) as err:
        read_series(folder)
    msg = str(err.value)
    assert str(folder) in msg and "JPEG-LS" in msg and "install" in msg


def test_truncated_file_alone_is_a_clear_error(tmp_path):
    folder = _series_of(tmp_path, "trunc", [_testfile("MR_truncated.dcm")])
    with pytest.warns(DicomWarning, match="1.dcm"):
        with pytest.raises(DicomError, match=str(folder)):
            read_series(folder)


def test_truncated_file_among_good_ones_is_skipped_with_a_warning(tmp_path):
    folder = _series_of(tmp_path, "mix", [_testfile("MR_small.dcm"), _testfile("MR_truncated.dcm")])
    (folder / "3.dcm").write_bytes(b"not a dicom file at all")
    with pytest.warns(DicomWarning) as record:
        v = read_series(folder)
    assert len(v) == 1
    text = " ".join(str(w.message) for w in record)
    assert "2.dcm" in text and "3.dcm" in text


def test_missing_or_empty_folder_errors(tmp_path):
    with pytest.raises(DicomError, match="does not exist"):
        read_series(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="no .dcm files"):
        read_series(tmp_path / "empty")


def _sagittal(tmp_path, name, n=6, instances=None, sizes=None, spacing=1.0, slope=1.0, intercept=0.0, iop=None):
    """A tiny sagittal series written by the project's writer; pixel value = 100 * slice position index."""
    folder = tmp_path / name
    row, col = (np.array(iop[:3]), np.array(iop[3:])) if iop else (np.array([0, 1.0, 0]), np.array([0, 0, -1.0]))
    instances = instances if instances is not None else list(range(1, n + 1))
    for k in range(n):
        size = sizes[k] if sizes else 32
        sp = spacing * 32 / size  # same field of view
        g = SliceGeom(np.array([-10.0 + 4 * k, -16.0, 16.0]), row, col, sp, size, size)
        value = np.full((size, size), 100 * (k + 1), dtype=np.float64)
        value[: size // 2] += 7  # top half brighter, to check geometry survives resampling
        stored = np.round((value - intercept) / slope).astype(np.uint16)
        write_dicom(folder / f"{instances[k]}.dcm", stored, g, instances[k], 1, 2, "Sagittal T1", 3.5, slope, intercept)
    return folder


def test_sorted_by_position_not_instance_number(tmp_path):
    forward = read_series(_sagittal(tmp_path, "fwd"))
    backward = read_series(_sagittal(tmp_path, "bwd", instances=[10, 8, 7, 5, 3, 1]))
    np.testing.assert_array_equal(forward.pixels, backward.pixels)
    assert np.all(np.diff(backward.depth) > 0)
    # slice k sits at x = -10 + 4k; sagittal slices are ordered from the patient's right to left (+x)
    assert forward.normal[0] == pytest.approx(1)
    assert backward.instance_numbers.tolist() == [10, 8, 7, 5, 3, 1]
    assert backward.index_of_instance(7) == 2
    assert [float(forward.pixels[i].min()) for i in range(6)] == [100.0 * (i + 1) for i in range(6)]
    with pytest.raises(KeyError, match="no instance 99"):
        backward.index_of_instance(99)


def test_rescale_slope_intercept_applied(tmp_path):
    v = read_series(_sagittal(tmp_path, "resc", slope=2.0, intercept=-50.0))
    plain = read_series(_sagittal(tmp_path, "plain"))
    np.testing.assert_allclose(v.pixels, plain.pixels, atol=1.0)


def test_mixed_shapes_resampled_to_most_common(tmp_path):
    v = read_series(_sagittal(tmp_path, "mixed", sizes=[32, 32, 32, 32, 48, 48]))
    assert v.pixels.shape == (6, 32, 32)
    np.testing.assert_allclose(v.pixel_spacing, [1.0, 1.0])
    # the resampled slices keep their content and geometry: top half still brighter by 7
    for img in v.pixels:
        assert img[:14].mean() - img[18:].mean() == pytest.approx(7, abs=0.6)


def test_slices_of_another_plane_dropped_with_warning(tmp_path):
    folder = _sagittal(tmp_path, "two", n=5)
    other = _sagittal(tmp_path, "axial", n=2, instances=[20, 21], iop=[1, 0, 0, 0, 1, 0])
    for f in other.glob("*.dcm"):
        shutil.copy(f, folder / f.name)
    with pytest.warns(DicomWarning, match="2 slice.*another plane"):
        v = read_series(folder)
    assert len(v) == 5 and 20 not in v.instance_numbers
    with pytest.warns(DicomWarning):
        assert [len(s) for s in read_series_stacks(folder)] == [5]


def test_synthetic_series_read_back(synth_dir):
    import pandas as pd
    series = pd.read_csv(synth_dir / "train_series_descriptions.csv").iloc[0]
    v = read_series(synth_dir / "train_images" / str(series.study_id) / str(series.series_id))
    assert v.pixels.ndim == 3 and len(v) >= 10
    assert np.all(np.diff(v.depth) > 0)
    assert np.isclose(np.linalg.norm(v.normal), 1)


def test_monochrome1_and_monochrome2_copies_give_the_same_volume(tmp_path):
    from lumbar.data.synth.dicom import SeriesWriter

    rng = np.random.default_rng(0)
    values = rng.integers(0, 3000, size=(4, 24, 24)).astype(np.uint16)
    values[2] = np.minimum(values[2], 500)  # one dim slice: a per-slice inversion would shift it
    ex, ey, ez = np.eye(3)
    for name, mono1 in (("m2", False), ("m1", True)):
        writer = SeriesWriter(1, 2 if mono1 else 3, "Sagittal T1", 4.0, 1.0, -100.0, mono1=mono1)
        for k in range(4):
            g = SliceGeom(np.array([k * 4.0, 0, 0]), ey, -ez, 1.0, 24, 24)
            stored = 4095 - values[k] if mono1 else values[k]
            writer.write(tmp_path / name / f"{k + 1}.dcm", stored.astype(np.uint16), g, k + 1)
    a, b = read_series(tmp_path / "m2"), read_series(tmp_path / "m1")
    np.testing.assert_allclose(a.pixels, b.pixels, atol=1e-4)
    np.testing.assert_allclose(a.pixels, values[a.instance_numbers - 1].astype(np.float32) - 100.0, atol=1e-4)


def test_a_series_without_orientation_takes_its_plane_from_the_description(tmp_path):
    from lumbar.data.synth.dicom import SeriesWriter

    ex, ey, ez = np.eye(3)
    values = np.stack([np.full((16, 16), 100 * (k + 1), np.uint16) for k in range(5)])
    for name, drop in (("tagged", ()), ("untagged", ("ImageOrientationPatient",))):
        writer = SeriesWriter(1, 2, "Sagittal T2/STIR", 4.0, drop=drop)
        for k in range(5):  # slices from the patient's right to left, numbered that way
            g = SliceGeom(np.array([-8.0 + 4 * k, 0, 0]), ey, -ez, 1.0, 16, 16)
            writer.write(tmp_path / name / f"{k + 1}.dcm", values[k], g, k + 1)
    tagged = read_series(tmp_path / "tagged")
    untagged = read_series(tmp_path / "untagged", plane="sagittal")
    np.testing.assert_array_equal(untagged.pixels, tagged.pixels)
    np.testing.assert_allclose(np.abs(untagged.normal), [1, 0, 0])
    np.testing.assert_array_equal(untagged.instance_numbers, tagged.instance_numbers)
    # the slices' positions outrank a wrong plane: read as axial it is still a sagittal series
    as_axial = read_series(tmp_path / "untagged", plane="axial")
    np.testing.assert_allclose(as_axial.normal, untagged.normal)
    # without positions the description's plane is all there is
    for f in (tmp_path / "untagged").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f)
    with pytest.warns(DicomWarning, match="ImagePositionPatient missing"):
        no_positions = read_series(tmp_path / "untagged", plane="sagittal")
        as_axial = read_series(tmp_path / "untagged", plane="axial")
    np.testing.assert_allclose(np.abs(no_positions.normal), [1, 0, 0])
    np.testing.assert_allclose(as_axial.normal, [0, 0, -1])


def _strip(folder, name_tags):
    """Remove tags from some files of a written series: {file name: (keywords)}."""
    for name, tags in name_tags.items():
        ds = pydicom.dcmread(folder / name)
        for t in tags:
            delattr(ds, t)
        ds.save_as(folder / name)


def test_tags_some_files_lack_come_from_the_series_other_files(tmp_path):
    # An oblique series (5 degrees about x) of two matrices: a file without ImageOrientationPatient read
    # with the plane's default would start a block of its own, one without PixelSpacing read at 1 mm
    # (a 48-px slice of a 32-mm field) would be resampled at the wrong scale.
    a = np.radians(5)
    iop = [0, np.cos(a), np.sin(a), 0, np.sin(a), -np.cos(a)]
    sizes = [32, 32, 32, 32, 48, 48]
    tagged = read_series(_sagittal(tmp_path, "tagged", sizes=sizes, iop=iop))
    folder = _sagittal(tmp_path, "stripped", sizes=sizes, iop=iop)
    _strip(folder, {"2.dcm": ["ImageOrientationPatient"], "5.dcm": ["ImageOrientationPatient", "PixelSpacing"],
                    "3.dcm": ["PixelSpacing"], "6.dcm": ["PixelSpacing"]})
    with pytest.warns(DicomWarning, match=r"stripped: 2 file\(s\) without ImageOrientationPatient and 3 without"):
        v = read_series(folder, plane="sagittal")
    assert v.n_blocks == 1 and v.spacing_known
    np.testing.assert_allclose(v.orientations, tagged.orientations)
    np.testing.assert_allclose(v.positions, tagged.positions)
    np.testing.assert_allclose(v.pixel_spacing, tagged.pixel_spacing)
    np.testing.assert_allclose(v.pixels, tagged.pixels, atol=1e-4)


def test_a_series_without_pixel_spacing_takes_its_studys_field_of_view(tmp_path):
    from lumbar import schema
    from lumbar.data.volumes import TYPICAL_FOV_MM, arrays_to_volume, fill_spacing, volume_to_arrays

    t1 = read_series(_sagittal(tmp_path, "t1"))  # 32 px at 1 mm: a 32-mm field
    folder = _sagittal(tmp_path, "t2", sizes=[48] * 6)  # the same field at 2/3 mm
    truth = read_series(folder)
    _strip(folder, {f"{k}.dcm": ["PixelSpacing"] for k in range(1, 7)})
    t2 = read_series(folder, plane="sagittal")
    assert not t2.spacing_known and not arrays_to_volume(volume_to_arrays(t2)).spacing_known
    axial = read_series(folder, plane="axial")  # stands in for a lone axial series without the tag
    vols = {schema.SAG_T1: [(1, t1)], schema.SAG_T2: [(2, t2)], schema.AXIAL: [(3, axial)]}
    with pytest.warns(UserWarning, match="study 7: series 2 has no PixelSpacing; 0.667 mm from series 1"):
        fill_spacing(vols, 7)
    (_, t2), (_, axial) = vols[schema.SAG_T2][0], vols[schema.AXIAL][0]
    np.testing.assert_allclose(t2.pixel_spacing, truth.pixel_spacing, rtol=1e-5)  # the files round to 1e-6
    np.testing.assert_allclose(t2.centres, truth.centres, atol=1e-4)  # patient geometry as with the tag
    np.testing.assert_allclose(t2.to_patient(0, [[5.0, 9.0]]), truth.to_patient(0, [[5.0, 9.0]]), atol=1e-4)
    np.testing.assert_allclose(axial.pixel_spacing, [TYPICAL_FOV_MM["axial"] / 48] * 2)
    assert t2.spacing_known and axial.spacing_known
