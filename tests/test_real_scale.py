"""bench/real_scale.py, the driver of the run at the competition's counts: what it measures per stage and
how it kills a stage on purpose (the run itself takes hours: bench/results/real-scale/)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("real_scale", ROOT / "bench" / "real_scale.py")
rs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rs)

# Two stages as make train runs them: processes whose command lines name `lumbar train --model X`.
STAGE = ("import sys, time; big = bytearray(int(sys.argv[1]) * 2**20); big[::4096] = b'x' * len(big[::4096]); "
         "time.sleep(float(sys.argv[2]))")


def fake_train(first_mb: int = 300) -> list[str]:
    py = sys.executable
    return ["bash", "-c", f"{py} -c \"{STAGE}\" {first_mb} 2.5 lumbar train --model alpha && "
                          f"{py} -c \"{STAGE}\" 10 2.5 lumbar train --model beta"]


def test_stage_names_come_from_the_command_lines():
    assert rs.stage_of("/v/bin/python -m lumbar train --model slice_select --data d --run r") == "slice_select"
    assert rs.stage_of("/v/bin/python -m lumbar export --run r") == "export"
    assert rs.stage_of("python build_kernel.py --weights w --out k") == "build"
    assert rs.stage_of("make -o x train") is None
    assert rs.stage_of("/v/bin/python -m ipykernel_launcher -f /r/notebook700.tmp/k.json") == "notebook"
    assert rs.stage_of("/v/bin/python -m lumbar synth --out d.partial --studies 1975") == "synth"  # the data step


def test_each_stage_is_timed_and_its_memory_and_disk_measured(tmp_path):
    (tmp_path / "log").mkdir()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "f").write_bytes(b"x" * 5000)
    rec = rs.run_step(tmp_path, "train", fake_train(), {"PATH": "/usr/bin:/bin"}, {"out": folder}, tmp_path)
    assert rec["rc"] == 0 and list(rec["stages"]) == ["alpha", "beta"]
    alpha, beta = rec["stages"]["alpha"], rec["stages"]["beta"]
    # sampled once a second: each stage's seconds to a second or two, together the step's
    assert 1.0 <= alpha["seconds"] <= 7 and 1.0 <= beta["seconds"] <= 7
    assert abs(alpha["seconds"] + beta["seconds"] - rec["seconds"]) <= 2.5
    assert alpha["peak_rss_gb"] >= 0.25 > beta["peak_rss_gb"]  # the 300 MB the first stage touched
    assert alpha["disk_after"]["out"] >= 5000 and rec["disk_after"]["out"] >= 5000
    saved = json.loads((tmp_path / "measure.json").read_text())
    assert saved["train"][0]["stages"]["beta"]["seconds"] == beta["seconds"]
    assert "train: done" in (tmp_path / "events.log").read_text()
    table = rs.report(tmp_path)
    assert "| train | alpha | 1 (ok) |" in table and "| train | beta | 1 (ok) |" in table and "out 0.00 GB" in table


def test_a_stage_killed_on_purpose_stops_the_step_and_says_how_to_resume(tmp_path):
    (tmp_path / "log").mkdir()
    with pytest.raises(SystemExit) as e:
        rs.run_step(tmp_path, "train", fake_train(10), {"PATH": "/usr/bin:/bin"}, {}, tmp_path, kill=("beta", 1.0))
    assert e.value.code == 3
    events = (tmp_path / "events.log").read_text()
    assert "killed on purpose (beta after" in events and "run the same command again to resume" in events
    rec = json.loads((tmp_path / "measure.json").read_text())["train"][0]
    assert rec["stages"]["beta"]["seconds"] < 2.5  # it did not finish its sleep
    table = rs.report(tmp_path)  # the stage before the killed one had finished: it is set beside its projection
    assert "| train | alpha | 1 (ok) |" in table and "| train | beta | 1 (killed) |" in table


def test_the_folds_fallback_is_kept_in_the_state_and_reaches_make_train(tmp_path):
    assert rs.train_args({"steps": {}}) == []  # make train's defaults: 5 folds
    st = rs.State(tmp_path)
    st.d["folds"] = 2
    st.save()
    assert rs.train_args(rs.State(tmp_path).d) == ["FOLDS=2"]  # a resume without --folds keeps them


def test_a_two_fold_run_is_set_beside_the_two_fold_projection():
    assert rs.projected_seconds("multitask", 2) == rs.PROJECTED["multitask"]["curve_2fold_s"]
    assert rs.projected_seconds("multitask", 5) == rs.PROJECTED["multitask"]["rehearsal_h"] * 3600
    assert rs.projected_seconds("no_such_stage", 2) is None


def test_a_step_cut_off_keeps_what_it_measured_so_far(tmp_path, monkeypatch):
    # the record is saved while the step runs: here every 0.5 s instead of every minute
    real_wait = rs.subprocess.Popen.wait
    monkeypatch.setattr(rs.subprocess.Popen, "wait", lambda self, timeout=None: real_wait(self, 0.5 if timeout else None))
    (tmp_path / "log").mkdir()
    seen = []
    real_save = rs.os.replace

    def spy(src, dst):
        real_save(src, dst)
        if str(dst).endswith("measure.json"):
            seen.append(json.loads(open(dst).read())["train"][-1])
    monkeypatch.setattr(rs.os, "replace", spy)
    rs.run_step(tmp_path, "train", fake_train(10), {"PATH": "/usr/bin:/bin"}, {}, tmp_path)
    partial = [r for r in seen if r["rc"] is None]
    assert partial and partial[-1]["stages"]  # in flight: rc None, the stages so far with their seconds
    assert all("seconds" in st for st in partial[-1]["stages"].values())
    assert seen[-1]["rc"] == 0 and list(seen[-1]["stages"]) == ["alpha", "beta"]
    assert "running, or cut off" not in rs.report(tmp_path)  # the final record replaced the partial ones


def test_the_accuracy_step_scores_each_submission_against_the_metrics_bound(synth_dir, tmp_path):
    """The driver's accuracy step on a synthetic folder: every model's score and gap (the gap ends at the
    weighted optimum of oracle.csv, which scores its own 100%), the notebook against predict, and the curve's
    point with the bound and prior that refit it."""
    import subprocess

    import pandas as pd

    from lumbar.data.catalog import read_labels
    from lumbar.metric import labels_to_array, oracle_frame
    from lumbar.models.prior import fit_prior, save_prior

    root, weights = tmp_path / "run", tmp_path / "weights"
    save_prior(fit_prior(labels_to_array(read_labels(synth_dir))), weights / "prior.json")
    bound = oracle_frame(pd.read_csv(synth_dir / "oracle.csv"))
    labels = pd.read_csv(synth_dir / "test_labels.csv")
    bound = bound[bound["row_id"].str.split("_").str[0].astype(int).isin(labels["study_id"])]
    flat = bound.copy()
    flat[["normal_mild", "moderate", "severe"]] = [0.6, 0.25, 0.15]
    for path, frame in {root / "notebook" / "notebook_rtest100" / "working" / "submission.csv": bound,
                        root / "accuracy" / "_rtest100" / "submission.csv": bound,
                        root / "accuracy" / "_rtest100" / "per_model" / "multitask.csv": flat}.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
    out = subprocess.run([sys.executable, "-c", rs.ACCURACY, str(root), str(weights), "1975", "2", "_rtest100",
                          str(synth_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads((root / "accuracy.json").read_text())["_rtest100"]
    assert r["notebook_vs_predict_max_abs_dp"] == 0.0
    assert abs(r["models"]["ensemble"]["gap_closed"] - 1) < 1e-6  # the bound closes its own gap
    assert abs(r["models"]["ensemble"]["score"] - r["oracle"]) < 1e-6 and r["prior"] > r["oracle"]
    assert r["models"]["ensemble"]["minus_multitask"] < 0 and "minus_multitask" not in r["models"]["multitask"]
    pt = json.loads((root / "curve_point.json").read_text())
    assert (pt["n"], pt["folds"], pt["oracle"], pt["prior"]) == (1975, 2, r["oracle"], r["prior"])
    assert set(pt["models"]) == {"ensemble", "multitask"}


def test_redo_marks_only_the_named_steps_not_done(tmp_path):
    st = rs.State(tmp_path)
    st.d["steps"] = {s: "done" for s in rs.STEPS[:6]}
    st.save()
    rs.redo_steps(st, tmp_path, "score,accuracy_rtest100")
    kept = rs.State(tmp_path).d["steps"]
    assert set(kept) == {"data", "train", "kernel", "notebook_rtest100"}
    assert "redo: score, accuracy_rtest100 (done before: score, accuracy_rtest100)" in (tmp_path / "events.log").read_text()
    with pytest.raises(SystemExit, match="no step nope"):
        rs.redo_steps(st, tmp_path, "score,nope")
    assert rs.State(tmp_path).d["steps"] == kept  # a bad name changes nothing


def test_a_child_in_a_session_of_its_own_is_still_measured():
    """Jupyter starts a notebook's kernel in a new session: the step's table follows it by parentage."""
    import os
    import signal
    import subprocess
    import time

    child = "import time; time.sleep(30)  # the kernel"
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True); "
                               "time.sleep(30)"], start_new_session=True)
    try:
        for _ in range(50):
            table = rs.proc_table(parent.pid)
            if len(table) >= 2:
                break
            time.sleep(0.1)
        kernel = [pid for pid, cmd, _, _ in table if "# the kernel" in cmd and pid != parent.pid]
        assert {pid for pid, *_ in table} >= {parent.pid} and len(kernel) == 1
        assert os.getsid(kernel[0]) != parent.pid  # not in the step's session, measured all the same
        assert all(rss > 0 for _, _, rss, _ in table)
    finally:
        for pid, *_ in rs.proc_table(parent.pid):
            os.kill(pid, signal.SIGKILL)
        parent.wait()
