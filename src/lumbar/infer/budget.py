"""The time budget of a prediction run: which folds of which model run, decided against the real clock.

The run is a pipeline: worker processes prepare each study's inputs (decode, crops, frames) while the
main process runs the models' folds on batches. Per study it costs about
    max(preparation / workers, model time)          (workers > 0; their sum with workers = 0)
Both parts are measured per batch and smoothed; the first batch is left out of every decision (cold
workers, CUDA start-up, cudnn autotuning make it many times the steady state). A calibration factor,
the real wall time per study over the modelled one, corrects the model of the pipeline.

After each batch `decide` drops the test-time views first (a model's shifts, then its mirror: each
multiplies its model's time for the least accuracy; models/views.py), then folds, then models, while the
projection overruns the budget, and restores the last dropped one when the projection, with it back,
fits with a margin. The last fold of
the last model is never dropped for a projection: `should_stop` ends the run only when the real clock
leaves no time for one more batch of the cheapest configuration, and the studies left keep the prior.
"""
from __future__ import annotations

import time
from typing import Callable

SMOOTHING = 0.3  # weight of a new measurement in the moving average
RESTORE_MARGIN = 0.85  # restore a dropped fold only if the projection with it is under 85% of the budget


class Plan:
    def __init__(self, folds: dict[str, list[int]], budget: float, n_studies: int, workers: int,
                 weight_of: Callable[[str], float] = lambda m: 1.0, clock: Callable[[], float] = time.perf_counter,
                 start: float | None = None, warmup_batches: int = 1,
                 views: dict[str, list[tuple[str, int]]] | None = None):
        self.active = {m: sorted(ks) for m, ks in folds.items() if ks}
        # per model, the test-time view levels it can run at, cheapest first: [(name, passes), ...]
        # (models/views.levels: 'as is' 1, 'mirror' 2, 'shifts' 10); each model starts at its last
        self.levels = {m: list(lv) for m, lv in (views or {}).items() if m in self.active and len(lv) > 1}
        self.level = {m: len(lv) - 1 for m, lv in self.levels.items()}
        self.budget, self.n, self.workers = float(budget), int(n_studies), int(workers)
        self.weight_of, self.clock = weight_of, clock
        self.start = clock() if start is None else start
        self.warmup = warmup_batches
        self.dropped: list[tuple[str, int | None]] = []  # a stack: the last dropped is the first restored
        # (model, None): one level of that model's test-time views
        self.fold_cost: dict[tuple[str, int], float] = {}  # main-process seconds per study and pass
        self.prep_cost: dict[str, float] = {}  # worker seconds per study: "decode" and per model
        self.calibration = 1.0
        self.batches = 0
        self.done = 0

    # What runs
    def models(self) -> set[str]:
        return {m for m, ks in self.active.items() if ks}

    def elapsed(self) -> float:
        return self.clock() - self.start

    def _ema(self, table: dict, key, value: float) -> None:
        table[key] = value if key not in table else (1 - SMOOTHING) * table[key] + SMOOTHING * value

    def passes(self, model: str, level: dict[str, int] | None = None) -> int:
        """How many views of each study the model runs at its current level (or at `level`'s)."""
        if model not in self.levels:
            return 1
        return self.levels[model][(self.level if level is None else level)[model]][1]

    def views_on(self) -> dict[str, str]:
        """Per model with views to drop, the name of the level it runs at ('as is', 'mirror', 'shifts')."""
        return {m: self.levels[m][i][0] for m, i in self.level.items()}

    def per_study(self, active: dict[str, list[int]] | None = None, level: dict[str, int] | None = None) -> float:
        """Modelled wall seconds per study for a set of active folds and view levels (the current ones
        by default)."""
        active = self.active if active is None else active
        live = [m for m, ks in active.items() if ks]
        model = sum(self.fold_cost.get((m, k), 0.0) * self.passes(m, level) for m in live for k in active[m])
        prep = (self.prep_cost.get("decode", 0.0) + sum(self.prep_cost.get(m, 0.0) for m in live)) if live else 0.0
        return (max(prep / self.workers, model) if self.workers > 0 else prep + model) * self.calibration

    def projected(self, active: dict[str, list[int]] | None = None, level: dict[str, int] | None = None) -> float:
        """Elapsed time plus the remaining studies at the modelled cost."""
        return self.elapsed() + (self.n - self.done) * self.per_study(active, level)

    # Measurements
    def observe(self, n_items: int, wall: float, prep: dict[str, float], folds: dict[tuple[str, int], float]) -> None:
        """One batch: its wall time (from the end of the previous batch), the worker seconds of each
        preparation part and the main-process seconds of each fold, summed over its n_items studies."""
        self.batches += 1
        self.done += n_items
        if n_items <= 0 or self.batches <= self.warmup:
            return
        for part, s in prep.items():
            self._ema(self.prep_cost, part, s / n_items)
        for key, s in folds.items():  # the passes this batch ran: the view levels before deciding
            self._ema(self.fold_cost, key, s / n_items / self.passes(key[0]))
        modelled = self.per_study() / self.calibration
        if modelled > 0:
            self.calibration = min(4.0, max(0.25, (1 - SMOOTHING) * self.calibration
                                            + SMOOTHING * (wall / n_items) / modelled))

    # Decisions
    def decide(self) -> list[str]:
        """Drops or restores folds so that the projection fits the budget; what it did, in words."""
        said: list[str] = []
        if self.batches <= self.warmup or self.done >= self.n:
            return said
        while self.projected() > self.budget:
            before = self.projected()
            what = self._drop_one()
            if what is None:
                break
            said.append(f"projected {before:.0f}s > budget {self.budget:.0f}s: {what}")
        while self.dropped:
            m, k = self.dropped[-1]
            trial = {mm: list(ks) for mm, ks in self.active.items()}
            if k is None:
                up = {**self.level, m: self.level[m] + 1}
                if self.projected(trial, up) > RESTORE_MARGIN * self.budget:
                    break
                self.dropped.pop()
                self.level = up
                said.append(f"projection {self.projected():.0f}s fits the budget {self.budget:.0f}s again: "
                            f"restored the test-time {self.levels[m][up[m]][0]} of {m}")
                continue
            trial.setdefault(m, []).append(k)
            if self.projected(trial) > RESTORE_MARGIN * self.budget:
                break
            self.dropped.pop()
            self.active.setdefault(m, []).append(k)
            self.active[m].sort()
            said.append(f"projection {self.projected():.0f}s fits the budget {self.budget:.0f}s again: "
                        f"restored fold {k} of {m}")
        return said

    def _drop_one(self) -> str | None:
        """First a level of a model's test-time views (the costliest model's first: its shifts, then
        its mirror; they multiply a model's time for the least accuracy); then a fold of the model with
        the most folds left; with one fold each, the model the ensemble weighs least; never the last fold
        of the last model."""
        viewed = [m for m, i in self.level.items() if i > 0 and self.active.get(m)]
        if viewed:
            m = max(viewed, key=lambda m: (sum(self.fold_cost.get((m, k), 0) for k in self.active[m])
                                           * self.passes(m), m))
            name = self.levels[m][self.level[m]][0]
            self.level[m] -= 1
            self.dropped.append((m, None))
            return f"dropped the test-time {name} of {m}"
        multi = {m: ks for m, ks in self.active.items() if len(ks) > 1}
        if multi:
            m = max(multi, key=lambda m: (len(multi[m]), sum(self.fold_cost.get((m, k), 0) for k in multi[m])))
            k = self.active[m].pop()
            self.dropped.append((m, k))
            return f"dropped fold {k} of {m}"
        live = [m for m, ks in self.active.items() if ks]
        if len(live) > 1:
            m = min(live, key=self.weight_of)
            k = self.active[m].pop()
            self.dropped.append((m, k))
            return f"dropped model {m}"
        return None

    def should_stop(self, batch_size: int) -> bool:
        """True when the real clock leaves no time for one more batch of what still runs."""
        if self.done >= self.n:
            return False
        if self.elapsed() >= self.budget:
            return True
        if self.batches <= self.warmup:
            return False
        return self.elapsed() + min(batch_size, self.n - self.done) * self.per_study() > self.budget
