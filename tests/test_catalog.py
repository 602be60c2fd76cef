import shutil

import numpy as np
import pandas as pd
import pytest

from lumbar import schema
from lumbar.commands.cli import main
from lumbar.data.catalog import CatalogError, load_studies, read_labels, validate


def test_load_train_studies(synth_dir):
    studies = load_studies(synth_dir, "train")
    labels = pd.read_csv(synth_dir / "train.csv")
    assert [s.study_id for s in studies] == labels.study_id.tolist()
    coords = pd.read_csv(synth_dir / "train_label_coordinates.csv")
    for st in studies:
        assert st.labels.shape == (25,) and st.labels.dtype == np.int64
        row = labels.set_index("study_id").loc[st.study_id]
        for j, col in enumerate(schema.LABEL_COLUMNS):
            expected = -1 if pd.isna(row[col]) else schema.severity_index(row[col])
            assert st.labels[j] == expected
        assert len(st.coords) == (coords.study_id == st.study_id).sum()
        for stype, records in st.series.items():
            assert stype in schema.SERIES_TYPES
            assert all(r.path.is_dir() for r in records)
    assert any(st.missing_types for st in studies)
    assert any(len(st.series_of(schema.AXIAL)) >= 2 for st in studies)


def test_load_test_studies_with_folds(synth_dir):
    studies = load_studies(synth_dir, "test", folds={})
    sample = pd.read_csv(synth_dir / "sample_submission.csv")
    assert {s.study_id for s in studies} == {schema.parse_row_id(r)[0] for r in sample.row_id}
    assert all(s.labels is None for s in studies)


def _strip_description(folder):
    """Removes SeriesDescription from every file of a series folder (a series whose files name nothing)."""
    import pydicom

    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        del ds.SeriesDescription
        ds.save_as(str(f))


def test_unknown_description_and_missing_folder_are_skipped_with_warning(synth_copy):
    path = synth_copy / "test_series_descriptions.csv"
    frame = pd.read_csv(path)
    frame.loc[0, "series_description"] = "Coronal T2"
    _strip_description(synth_copy / "test_images" / str(frame.study_id[0]) / str(frame.series_id[0]))
    shutil.rmtree(synth_copy / "test_images" / str(frame.study_id[1]) / str(frame.series_id[1]))
    frame.to_csv(path, index=False)
    with pytest.warns(UserWarning) as record:
        studies = load_studies(synth_copy, "test")
    text = " ".join(str(w.message) for w in record)
    assert "Coronal T2" in text and "does not exist" in text
    assert len(studies) == 3
    first = next(s for s in studies if s.study_id == frame.study_id[0])
    assert int(frame.series_id[0]) not in {r.series_id for rs in first.series.values() for r in rs}
    frame = frame.drop(index=1)  # the missing folder's row gone: the unknown description is the first problem
    frame.to_csv(path, index=False)
    with pytest.raises(CatalogError, match="Coronal T2"):
        load_studies(synth_copy, "test", strict=True)


def test_series_types_come_from_the_files_where_the_csv_is_wrong(synth_copy):
    from lumbar.data.catalog import series_type

    path = synth_copy / "test_series_descriptions.csv"
    right = pd.read_csv(path)
    truth = {(int(r.study_id), int(r.series_id)): r.series_description for r in right.itertuples()}
    swapped = right.copy()
    swap = {schema.SAG_T1: schema.SAG_T2, schema.SAG_T2: schema.SAG_T1}
    swapped["series_description"] = [swap.get(d, d) for d in swapped.series_description]
    assert (swapped.series_description != right.series_description).any()
    unknown = swapped.index[swapped.series_description == schema.AXIAL][0]
    swapped.loc[unknown, "series_description"] = "AX T2 FSE"  # a scanner's own wording: still typed
    dropped = swapped.index[swapped.series_description == schema.SAG_T2][0]
    gone = (int(swapped.study_id[dropped]), int(swapped.series_id[dropped]))
    swapped.drop(index=dropped).to_csv(path, index=False)  # a series folder the CSV does not list
    with pytest.warns(UserWarning) as record:
        studies = load_studies(synth_copy, "test")
    text = " ".join(str(w.message) for w in record)
    assert "the files win" in text and f"series {gone[1]} is not in the CSV" in text
    got = {(s.study_id, r.series_id): stype for s in studies for stype, rs in s.series.items() for r in rs}
    assert got == truth
    assert series_type("SAG T2 STIR") == schema.SAG_T2 and series_type("sag_t1") == schema.SAG_T1
    assert series_type("Axial T2") == schema.AXIAL and series_type("Coronal T2") is None
    assert series_type("localizer") is None


def test_validate_reports_every_problem_with_file_and_line(synth_copy):
    labels = pd.read_csv(synth_copy / "train.csv")
    labels.loc[2, "spinal_canal_stenosis_l3_l4"] = "Very Bad"
    labels.to_csv(synth_copy / "train.csv", index=False)
    coords = pd.read_csv(synth_copy / "train_label_coordinates.csv")
    coords.loc[0, "instance_number"] = 999
    coords.loc[1, "level"] = "L6/S2"
    coords.to_csv(synth_copy / "train_label_coordinates.csv", index=False)
    series = pd.read_csv(synth_copy / "train_series_descriptions.csv")
    gone = synth_copy / "train_images" / str(series.study_id[0]) / str(series.series_id[0])
    shutil.rmtree(gone)
    stray = synth_copy / "train_images" / str(series.study_id[1]) / "123"
    stray.mkdir()
    sample = pd.read_csv(synth_copy / "sample_submission.csv")
    sample.loc[4, "row_id"] = "garbage"
    sample.to_csv(synth_copy / "sample_submission.csv", index=False)

    texts = [p.text() for p in validate(synth_copy)]
    joined = "\n".join(texts)
    assert "train.csv:4: spinal_canal_stenosis_l3_l4: 'Very Bad'" in joined
    assert "train_label_coordinates.csv:2: instance file" in joined and "999.dcm" in joined
    assert "train_label_coordinates.csv:3: unknown level 'L6/S2'" in joined
    assert f"train_series_descriptions.csv:2: series folder {gone} does not exist" in joined
    assert f"{stray}: series on disk is not listed" in joined
    assert "sample_submission.csv:6: malformed row_id 'garbage'" in joined


def test_validate_cli_exit_codes(synth_dir, synth_copy, capsys):
    assert main(["validate", str(synth_dir)]) == 0
    (synth_copy / "train.csv").write_text("study_id,foo\n1,2\n")
    assert main(["validate", str(synth_copy)]) == 1
    out = capsys.readouterr().out
    assert "train.csv:1: header differs" in out


def test_missing_files_are_clear_errors(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("study_id\n")
    with pytest.raises(CatalogError, match="train.csv: header lacks columns"):
        read_labels(tmp_path)
    with pytest.raises(CatalogError, match="not a competition folder"):
        load_studies(tmp_path / "nowhere")
    assert main(["train", "--model", "prior", "--data", str(tmp_path / "nowhere"), "--run", str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err


def test_reading_the_files_descriptions_never_blocks_on_a_special_file(synth_copy):
    """The catalog reads a header per series in the main process: a FIFO named 0.dcm (a read that never
    returns) must be passed over, not opened."""
    import os
    import threading

    series = pd.read_csv(synth_copy / "test_series_descriptions.csv")
    r = series.iloc[0]
    os.mkfifo(synth_copy / "test_images" / str(r.study_id) / str(r.series_id) / "0.dcm")
    got = []
    t = threading.Thread(target=lambda: got.append(load_studies(synth_copy, "test")), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "load_studies blocked on a FIFO"
    study = next(s for s in got[0] if s.study_id == r.study_id)
    assert int(r.series_id) in {rec.series_id for recs in study.series.values() for rec in recs}
