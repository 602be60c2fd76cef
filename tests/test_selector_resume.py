"""The slice selector's cross-fit resumes task by task: at the competition's size its folds are an hour of
CPU, and a run killed among them used to fit every fold again."""
import sys

import pytest

from lumbar.layout import Run
from lumbar.train import selector


class Killed(RuntimeError):
    pass


KILL_AT: list = []  # the task that "is killed" (forked workers see it too)
CALLS: list = []  # what this process fitted (the serial path)


def fake_fold(k, n_jobs=None):
    """A cheap stand-in for one fold's fit (module level: the fork pool pickles it by name)."""
    if f"fold{k}" in KILL_AT:
        raise Killed(f"fold{k}")
    CALLS.append(f"fold{k}")
    return {"fold": k, "records": [k] * 3}


def fake_fit_all(n_jobs=None):
    if "all" in KILL_AT:
        raise Killed("all")
    CALLS.append("all")
    return {"fitted": "every study"}


def fake_tasks(monkeypatch, calls: list, kill_at: str | None = None):
    """The cheap stand-ins in place of the selector's tasks, recording what was fitted in `calls`."""
    KILL_AT[:] = [kill_at] if kill_at else []
    monkeypatch.setattr(sys.modules[__name__], "CALLS", calls)
    monkeypatch.setattr(selector, "_held_out_fold", fake_fold)
    monkeypatch.setattr(selector, "_fit_all", fake_fit_all)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_cross_fit_resumes_with_the_tasks_it_finished(tmp_path, monkeypatch, workers):
    run = Run(tmp_path / "run")
    request = {"data": "/d", "n_folds": 3, "seed": 0, "overrides": [], "cache": 3}
    calls: list = []
    fake_tasks(monkeypatch, calls, kill_at="fold2")
    with pytest.raises(Killed):
        selector._cross_fit({}, 3, workers, selector.FinishedTasks(run, request))
    saved = {p.stem for p in run.selector_tasks.glob("*.pkl")}
    assert {"fold0", "fold1"} <= saved and "fold2" not in saved  # each saved as it returned

    calls.clear()
    fake_tasks(monkeypatch, calls)
    folds, full = selector._cross_fit({}, 3, workers, selector.FinishedTasks(run, request))
    if workers == 1:
        assert calls == [n for n in ("fold2", "all") if n not in saved]  # only what was not finished
    assert "fold0" not in calls and "fold1" not in calls
    assert [f["fold"] for f in folds] == [0, 1, 2] and folds[1]["records"] == [1, 1, 1]
    assert full == {"fitted": "every study"}

    # another request (here other overrides) fits everything again: its results replace the files
    other = selector.FinishedTasks(run, {**request, "overrides": ["svm_rows=100"]})
    selector._cross_fit({}, 3, workers, other)
    names = ("fold0", "fold1", "fold2", "all")
    assert all(other.load(n) is not None for n in names)
    assert all(selector.FinishedTasks(run, request).load(n) is None for n in names)
    other.clear()
    assert not run.selector_tasks.exists()


def test_a_damaged_task_file_is_fitted_again(tmp_path, monkeypatch):
    run = Run(tmp_path / "run")
    tasks = selector.FinishedTasks(run, {"data": "/d"})
    calls: list = []
    fake_tasks(monkeypatch, calls)
    selector._cross_fit({}, 2, 1, tasks)
    run.selector_task("fold1").write_bytes(b"not a pickle")
    calls.clear()
    selector._cross_fit({}, 2, 1, tasks)
    assert calls == ["fold1"]


def test_the_trained_stage_leaves_no_task_files(stage_one):
    run, _, result = stage_one
    assert (Run(run).selector / "manifest.json").exists() or Run(run).selector.exists()
    assert not Run(run).selector_tasks.exists()
