"""Input preparation in worker processes, one study at a time per worker, each under a deadline.

A DataLoader cannot lose one item: a worker that hangs on a read (a FIFO, a dead network mount) stalls
the run until its timeout raises, and a worker killed for memory ends the iteration with an error. On
Kaggle either ends the notebook. Here each worker has its own pipe and holds one study; a worker past
its deadline is killed, a worker that dies is noticed from its sentinel, and in both cases that study
alone is reported as failed and a fresh worker takes the next one.

Tasks are asked for lazily (`next_task` is called when a worker is free), so what a study is prepared
for can change during the run: a model the time budget dropped is no longer prepared.

Workers are spawned, not forked: a process forked after the parent ran OpenMP code (torch building the
models) deadlocks in the child's first OpenMP call (XGBoost's predict did, every time), and a fork
after CUDA started is unsafe too. So `fn` must pickle: it holds what preparation needs, not the models.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing.connection import wait
from typing import Any, Callable, Iterator


def _serve(conn, fn: Callable[[Any], Any]) -> None:
    import sys

    if "torch" in sys.modules:  # fn brought torch (stage one's level network): one thread per worker,
        sys.modules["torch"].set_num_threads(1)  # the workers are the parallelism; more only fight
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, arg = msg
        try:
            out = (key, fn(arg), None)
        except BaseException as e:  # the study fails, the worker lives on
            out = (key, None, f"{type(e).__name__}: {e}")
        try:
            conn.send(out)
        except Exception as e:  # an unpicklable result: say so instead of dying
            conn.send((key, None, f"result not sendable ({type(e).__name__}: {e})"))


class _Slot:
    def __init__(self, ctx, fn):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, fn), daemon=True)
        self.proc.start()
        child.close()
        self.key: Any = None
        self.started = 0.0

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(5)
        except Exception:
            pass
        self.conn.close()


class StudyPool:
    """`run(next_task)` yields (key, result, error) as studies finish, in the order they finish.

    fn(arg) runs in a spawned worker (fn and arg are pickled; fn once per worker). With workers=0 it
    runs in this process, in order, with no deadline (tests, debugging)."""

    def __init__(self, fn: Callable[[Any], Any], workers: int, timeout: float, clock=time.monotonic):
        self.fn, self.workers, self.timeout, self.clock = fn, int(workers), float(timeout), clock
        self.events: list[tuple[Any, str]] = []  # (task key, what happened): timeouts and deaths

    def run(self, next_task: Callable[[], tuple[Any, Any] | None]) -> Iterator[tuple[Any, Any, str | None]]:
        if self.workers <= 0:
            while (task := next_task()) is not None:
                key, arg = task
                try:
                    yield key, self.fn(arg), None
                except Exception as e:
                    yield key, None, f"{type(e).__name__}: {e}"
            return
        ctx = mp.get_context("spawn")
        slots = [_Slot(ctx, self.fn) for _ in range(self.workers)]
        exhausted = False
        try:
            while True:
                for i, s in enumerate(slots):
                    if s.key is None and not exhausted:
                        task = next_task()
                        if task is None:
                            exhausted = True
                            break
                        s.key, s.started = task[0], self.clock()
                        try:
                            s.conn.send(task)
                        except (OSError, ValueError) as e:  # the worker is gone: a fresh one takes it
                            slots[i] = self._replace(ctx, s, task[0], f"worker lost before the task was sent ({e})")
                            slots[i].key, slots[i].started = task[0], self.clock()
                            slots[i].conn.send(task)
                busy = [s for s in slots if s.key is not None]
                if not busy:
                    return
                now = self.clock()
                wait_s = max(0.0, min(s.started + self.timeout - now for s in busy))
                ready = wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout=wait_s)
                for i, s in enumerate(slots):
                    if s.key is None:
                        continue
                    if s.conn in ready:
                        try:
                            key, result, error = s.conn.recv()
                        except (EOFError, OSError):
                            s.proc.join(2)  # the pipe closes before the process is reaped: wait for its code
                            key, result, error = s.key, None, f"worker died (exit code {s.proc.exitcode})"
                            slots[i] = self._replace(ctx, s, key, error)
                            yield key, result, error
                            continue
                        s.key = None
                        yield key, result, error
                    elif s.proc.sentinel in ready or not s.proc.is_alive():
                        s.proc.join(1)
                        key, error = s.key, f"worker died (exit code {s.proc.exitcode})"
                        slots[i] = self._replace(ctx, s, key, error)
                        yield key, None, error
                    elif self.clock() - s.started > self.timeout:
                        key, error = s.key, f"input preparation timed out after {self.timeout:.0f}s"
                        slots[i] = self._replace(ctx, s, key, f"{error}; worker killed")
                        yield key, None, error
        finally:  # also when the caller stops early: workers still busy are not waited for
            for s in slots:
                s.kill()

    def _replace(self, ctx, slot: _Slot, key, event: str) -> _Slot:
        self.events.append((key, event))
        slot.kill()
        return _Slot(ctx, self.fn)
