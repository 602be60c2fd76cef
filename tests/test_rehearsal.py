"""The rehearsal's measuring: a process tree's peak RSS, and the table with its projections."""
import sys

from lumbar.commands.rehearsal import measured, table


def test_peak_rss_of_a_stage_process_is_measured(tmp_path):
    code = "import numpy as np; a = np.ones(400 * 2**20 // 8); print(a.sum())"  # ~400 MB
    wall, peak = measured([sys.executable, "-c", code], tmp_path / "log")
    assert 0.35 < peak < 2.0 and wall > 0
    small_wall, small = measured([sys.executable, "-c", "print(1)"], tmp_path / "log")
    assert small < peak - 0.3


def test_table_projects_every_stage_with_its_formula():
    m = {"studies": 40, "test_studies": 8, "size_scale": 1.0, "data_MB_per_study": 35.0, "cache_MB_per_study": 12.0,
         "stages": {"slice_select": {"seconds": 400.0, "s_per_study": 10.0, "peak_rss_gb": 1.2},
                    "multitask": {"seconds": 80.0, "s_per_study": 2.0, "peak_rss_gb": 1.5}},
         "predict": {"seconds": 40.0, "s_per_study": 5.0, "peak_rss_gb": 1.1},
         "inference": {"cpu fp32": {"decode": 0.5, "preprocess multitask": 1.0, "preprocess sequence": 0.3,
                                    "model multitask": 0.2, "model sequence": 0.1}}}
    text = table(m)
    assert "| train slice_select | 400 | 10.00 | 1.20 | 5.49 h = 10.00 s x 1975 (CPU) |" in text
    from lumbar.commands.rehearsal import full_epochs

    epochs = full_epochs()["multitask"]  # multitask: 2 rehearsal epochs projected to its config's epochs
    assert f"{epochs / 2:g} (epochs {epochs}/2)" in text
    assert "0.12-0.17 h = 700 x (1.80 s prep / 3 workers" in text


def test_selector_scaling_projects_with_the_measured_exponent_not_linearly():
    from lumbar.commands.scaling import exponent, project

    # t = 1e-6 n^2 for the SVM, linear for the forest
    records = [{"series_type": "Axial T2", "member": m, "rows": n, "seconds": (1e-6 * n ** 2 if m == "svm" else n / 1e3)}
               for m in ("svm", "rf") for n in (1000, 2000, 4000)]
    assert abs(exponent([(r["rows"], r["seconds"]) for r in records if r["member"] == "svm"]) - 2.0) < 1e-9
    proj = project(records, {"Axial T2": 10.0}, n_folds=5, studies=1000)  # 10,000 rows in all
    svm = proj["members"]["Axial T2 svm"]
    assert svm["exponent"] == 2.0 and svm["rows"] == 10000
    expected = 5 * 1e-6 * 8000 ** 2 + 1e-6 * 10000 ** 2  # five folds on 4/5 of the rows, then all of them
    assert abs(svm["seconds"] - expected) < 1e-6 * expected
    linear = 5 * 8 + 10
    assert abs(proj["members"]["Axial T2 rf"]["seconds"] - linear) < 1e-6
    assert abs(proj["total_s"] - expected - linear) < 1e-6 * expected


def test_rehearsal_table_names_each_members_exponent():
    m = {"studies": 4, "test_studies": 2, "size_scale": 1.0, "data_MB_per_study": 1.0, "cache_MB_per_study": 1.0,
         "stages": {}, "predict": {"seconds": 4.0, "s_per_study": 2.0, "peak_rss_gb": 1.0}, "inference": {},
         "selector_scaling": {"members": {"Axial T2 svm": {"exponent": 1.8, "rows": 69000, "seconds": 3600.0}},
                              "total_s": 3600.0}}
    assert "1.00 h = Axial T2 svm n^1.80" in table(m)
