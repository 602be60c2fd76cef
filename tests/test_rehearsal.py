"""The rehearsal's measuring: a process tree's peak RSS, and the table with its projections."""
import sys

from lumbar.rehearsal import measured, table


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
    assert "6 (epochs 12/2)" in text  # multitask: 2 rehearsal epochs projected to its config's 12
    assert "0.12-0.17 h = 700 x (1.80 s prep / 3 workers" in text
