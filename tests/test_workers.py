"""Input preparation in workers: a hang or a dead worker costs one study, never the run."""
import os
import time

import pytest

from lumbar.infer.workers import StudyPool


def work(arg):
    kind, value = arg
    if kind == "hang":
        time.sleep(1000)
    if kind == "die":
        os._exit(137)
    if kind == "raise":
        raise ValueError("bad study")
    return value * 2


def tasks(items):
    it = iter(enumerate(items))
    return lambda: next(it, None)


@pytest.mark.slow  # processes started and killed: the suite's, not test-fast's
def test_every_study_comes_back_once_whatever_happens_to_its_worker():
    items = [("ok", 1), ("hang", 0), ("ok", 2), ("die", 0), ("raise", 0), ("ok", 3), ("ok", 4)]
    # The deadline is far above what a spawned worker needs to start and double a number on a loaded
    # machine: only the hang can reach it (the test asserts what happens, not how fast).
    pool = StudyPool(work, workers=2, timeout=20.0)
    got = {k: (r, e) for k, r, e in pool.run(tasks(items))}
    assert sorted(got) == list(range(len(items)))
    assert [got[k][0] for k in (0, 2, 5, 6)] == [2, 4, 6, 8]
    assert "timed out" in got[1][1] and got[1][0] is None
    assert "worker died" in got[3][1] and "137" in got[3][1]
    assert "ValueError: bad study" in got[4][1]
    assert dict(pool.events)[1].startswith("input preparation timed out") and "died" in dict(pool.events)[3]


def test_tasks_are_asked_for_lazily_so_the_caller_can_stop():
    asked = []

    def next_task():
        if len(asked) >= 3:
            return None
        asked.append(len(asked))
        return len(asked) - 1, ("ok", len(asked))

    out = list(StudyPool(work, workers=1, timeout=10).run(next_task))
    assert [k for k, _, _ in out] == [0, 1, 2]


def test_in_process_mode_keeps_order_and_reports_errors():
    out = list(StudyPool(work, workers=0, timeout=1).run(tasks([("ok", 1), ("raise", 0), ("ok", 5)])))
    assert [(k, r) for k, r, _ in out] == [(0, 2), (1, None), (2, 10)]
    assert "bad study" in out[1][2]
