"""The time budget's decisions, driven by a fake clock and made-up costs (no model runs)."""
import pytest

from lumbar.infer.budget import Plan


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def simulate(plan: Plan, clock: Clock, cost_of, batch_size: int, first_batch_extra: float = 0.0,
             prep_per_study: float = 0.0) -> list[dict]:
    """Runs batches until every study is done or the plan stops; each batch advances the fake clock by
    what the active folds cost (cost_of[(model, fold)] seconds per study) plus preparation."""
    history = []
    while plan.done < plan.n and not plan.should_stop(batch_size):
        n = min(batch_size, plan.n - plan.done)
        folds = {(m, k): cost_of[(m, k)] * n for m, ks in plan.active.items() for k in ks}
        prep = {"decode": prep_per_study * n} if prep_per_study else {}
        wall = sum(folds.values()) + prep_per_study * n / max(plan.workers, 1)
        if plan.batches == 0:
            wall += first_batch_extra
        clock.t += wall
        history.append({m: list(ks) for m, ks in plan.active.items()})
        plan.observe(n, wall, prep, folds)
        plan.decide()
    return history


def test_a_slow_first_batch_drops_nothing_the_steady_state_affords():
    clock = Clock()
    folds = {"a": [0, 1, 2], "b": [0, 1]}
    cost = {("a", k): 0.2 for k in range(3)} | {("b", k): 0.3 for k in range(2)}  # 1.2 s per study in all
    n = 100
    plan = Plan(folds, budget=3 * n * 1.2, n_studies=n, workers=0, clock=clock, start=0.0)
    # The first batch costs 20x the steady state (cold start): projected from it, 100 studies would take
    # 8x the budget; the steady state fits.
    history = simulate(plan, clock, cost, batch_size=8, first_batch_extra=19 * 8 * 1.2)
    assert plan.done == n
    assert all(h == folds for h in history), "a fold was dropped"
    assert plan.dropped == []


def test_three_times_the_steady_need_of_one_model_finishes_every_study_with_it():
    clock = Clock()
    n, per_study = 200, 0.5  # one model of 5 folds at 0.1 s each
    folds = {"a": [0, 1, 2, 3, 4]}
    cost = {("a", k): per_study / 5 for k in range(5)}
    plan = Plan(folds, budget=3 * n * per_study, n_studies=n, workers=0, clock=clock, start=0.0)
    history = simulate(plan, clock, cost, batch_size=8, first_batch_extra=30.0)
    assert plan.done == n and clock.t <= plan.budget
    assert all(h == folds for h in history)


def test_over_budget_drops_folds_then_the_lighter_model_and_restores_when_it_recovers():
    clock = Clock()
    folds = {"a": [0, 1], "b": [0, 1]}
    cost = {("a", 0): 1.0, ("a", 1): 1.0, ("b", 0): 1.0, ("b", 1): 1.0}  # 4 s per study
    n = 100
    weights = {"a": 0.8, "b": 0.2}
    plan = Plan(folds, budget=n * 1.5, n_studies=n, workers=0, weight_of=weights.get, clock=clock, start=0.0)
    simulate(plan, clock, cost, batch_size=5)
    assert plan.done == n and clock.t <= plan.budget
    # two folds could not all run: the lighter-weighted model went first once folds were down to one each
    assert ("b", 0) in plan.dropped or ("b", 1) in plan.dropped
    assert plan.active["a"], "the heavier model keeps a fold"


def test_drops_are_undone_when_the_projection_recovers():
    clock = Clock()
    plan = Plan({"a": [0, 1, 2, 3]}, budget=1000.0, n_studies=400, workers=0, clock=clock, start=0.0)
    slow = {("a", k): 1.0 for k in range(4)}
    for _ in range(3):  # slow batches (4 s per study): folds dropped
        clock.t += 4.0 * 10
        plan.observe(10, 4.0 * 10, {}, {key: 10 * c for key, c in slow.items() if key[1] in plan.active["a"]})
        plan.decide()
    assert len(plan.active["a"]) < 4
    dropped_then = len(plan.dropped)
    for _ in range(30):  # the device speeds up 50x: the dropped folds come back
        n = 10
        folds = {("a", k): 0.02 * n for k in plan.active["a"]}
        clock.t += sum(folds.values())
        plan.observe(n, sum(folds.values()), {}, folds)
        plan.decide()
    assert len(plan.dropped) < dropped_then and plan.active["a"] == [0, 1, 2, 3]


def test_priors_only_when_the_real_clock_runs_out():
    clock = Clock()
    n = 100
    plan = Plan({"a": [0, 1], "b": [0]}, budget=50.0, n_studies=n, workers=0, clock=clock, start=0.0)
    cost = {("a", 0): 1.0, ("a", 1): 1.0, ("b", 0): 1.0}  # even one fold of one model needs 100 s
    simulate(plan, clock, cost, batch_size=4)
    assert plan.models(), "the last fold of the last model is never dropped for a projection"
    assert sum(len(ks) for ks in plan.active.values()) == 1
    assert plan.should_stop(4) and clock.t <= plan.budget
    assert 0.3 * n <= plan.done < n  # it kept predicting until the clock, not until the projection, said stop


def test_preparation_in_workers_is_counted_in_parallel():
    plan = Plan({"a": [0]}, budget=100.0, n_studies=10, workers=4, clock=Clock(), start=0.0)
    plan.observe(2, 10.0, {"decode": 2.0}, {("a", 0): 2.0})  # warm-up: ignored
    plan.observe(2, 2.0, {"decode": 8.0, "a": 0.0}, {("a", 0): 1.0})
    # 4 s of preparation per study over 4 workers vs 0.5 s of model per study: preparation bounds it
    assert plan.per_study() == pytest.approx(1.0 * plan.calibration)
