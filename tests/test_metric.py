import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss as _log_loss

from lumbar import schema
from lumbar.metric import (MetricError, labels_to_solution, probs_to_submission, score, score_groups,
                           solution_frame, submission_to_probs)

COLS = ["normal_mild", "moderate", "severe"]


def log_loss(y_true, y_pred, **kw):
    """sklearn.metrics.log_loss as Kaggle's scorer ran it (scikit-learn 1.2.2): rows clipped to
    [eps, 1 - eps] and renormalised before the loss. scikit-learn 1.5+ no longer renormalises (it warns),
    so under today's image the step is spelled out here; under 1.2.2 it is what log_loss does anyway."""
    y_pred = np.asarray(y_pred, np.float64)
    if y_pred.ndim == 2:
        eps = np.finfo(np.float64).eps
        y_pred = np.clip(y_pred, eps, 1 - eps)
        y_pred = y_pred / y_pred.sum(1, keepdims=True)
    return _log_loss(y_true, y_pred, **kw)


def reference_score(solution, submission, row_id_column_name="row_id", any_severe_scalar=1.0):
    """Kaggle's scorer for this competition, step by step as its published code runs them: each
    group's loss is sklearn.metrics.log_loss on the submitted rows as they are (log_loss clips and
    renormalises them itself); the any-severe term is log_loss on the max of the raw severe column."""
    solution = solution.sort_values(by=[row_id_column_name]).reset_index(drop=True)
    submission = submission.sort_values(by=[row_id_column_name]).reset_index(drop=True)
    submission = submission[submission[row_id_column_name].isin(solution[row_id_column_name])].reset_index(drop=True)
    assert (solution[row_id_column_name].values == submission[row_id_column_name].values).all()
    solution["study_id"] = solution[row_id_column_name].apply(lambda x: x.split("_")[0])
    solution["location"] = solution[row_id_column_name].apply(lambda x: "_".join(x.split("_")[1:-2]))
    solution["condition"] = solution["location"].apply(
        lambda x: next(c for c in ["spinal", "foraminal", "subarticular"] if c in x))
    for col in ("study_id", "location", "condition"):
        submission[col] = solution[col]
    losses, weights = [], []
    for condition in ["spinal", "foraminal", "subarticular"]:
        idx = solution.loc[solution["condition"] == condition].index.values
        losses.append(log_loss(y_true=solution.loc[idx, COLS].values, y_pred=submission.loc[idx, COLS].values,
                               sample_weight=solution.loc[idx, "sample_weight"].values))
        weights.append(1)
    labels = pd.Series(solution.loc[solution["condition"] == "spinal"].groupby("study_id")["severe"].max())
    w = pd.Series(solution.loc[solution["condition"] == "spinal"].groupby("study_id")["sample_weight"].max())
    preds = pd.Series(submission.loc[submission["condition"] == "spinal"].groupby("study_id")["severe"].max())
    # labels=[0, 1] only so that a random case without any severe study is scoreable (the scorer would raise)
    losses.append(log_loss(y_true=labels, y_pred=preds, sample_weight=w, labels=[0, 1]))
    weights.append(any_severe_scalar)
    return np.average(losses, weights=weights)


def random_case(rng, n_studies=12, missing=0.05, sharp=1.0):
    y = rng.integers(0, 3, size=(n_studies, 25))
    y[rng.random(y.shape) < missing] = -1
    ids = rng.choice(np.arange(10_000, 10_000_000), n_studies, replace=False)
    logits = rng.normal(0, 2 * sharp, size=(n_studies, 25, 3))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return solution_frame(ids, y), probs_to_submission(ids, p), ids, y, p


@pytest.mark.parametrize("seed", range(20))
def test_matches_reference_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    sol, sub, *_ = random_case(rng, n_studies=int(rng.integers(3, 40)), sharp=rng.uniform(0.2, 4))
    sub = sub.sample(frac=1.0, random_state=seed)  # row order must not matter
    for scalar in (1.0, 0.5):
        assert abs(score(sol, sub, "row_id", scalar) - reference_score(sol.copy(), sub.copy(), "row_id", scalar)) < 1e-9


def test_unnormalised_and_extreme_rows_are_clipped_and_renormalised():
    rng = np.random.default_rng(1)
    sol, sub, ids, y, p = random_case(rng)
    sub[COLS] = sub[COLS].values * rng.uniform(0.1, 10, size=(len(sub), 1))
    sub.loc[:5, COLS] = [0.0, 0.0, 1.0]
    assert abs(score(sol, sub) - reference_score(sol.copy(), sub.copy())) < 1e-9
    assert np.isfinite(score(sol, sub))


@pytest.mark.parametrize("seed", range(5))
def test_any_severe_term_reads_the_raw_severe_column(seed):
    """Rows that do not sum to 1: the group losses see them renormalised, the any-severe term sees the
    submitted severe column as it is. Renormalising before that term (an earlier version did) moves
    the score by far more than the tolerance."""
    rng = np.random.default_rng(100 + seed)
    sol, sub, ids, y, p = random_case(rng, n_studies=30)
    sub[COLS] = sub[COLS].values * rng.uniform(0.05, 0.95, size=(len(sub), 1))  # < 1: clipping leaves them
    ours = score_groups(sol, sub)
    assert abs(ours["overall"] - reference_score(sol.copy(), sub.copy())) < 1e-9
    normalised = sub.copy()
    normalised[COLS] = sub[COLS].values / sub[COLS].values.sum(1, keepdims=True)
    other = score_groups(sol, normalised)
    for g in schema.GROUPS:  # the group losses renormalise: unchanged
        assert other[g] == pytest.approx(ours[g], abs=1e-9)
    assert abs(other["any_severe_spinal"] - ours["any_severe_spinal"]) > 1e-3


def test_perfect_prediction_scores_near_zero_and_uniform_near_log3():
    rng = np.random.default_rng(2)
    sol, sub, ids, y, p = random_case(rng, missing=0)
    perfect = probs_to_submission(ids, np.eye(3)[y])
    assert score(sol, perfect) < 1e-6
    uniform = probs_to_submission(ids, np.full((len(ids), 25, 3), 1 / 3))
    groups = score_groups(sol, uniform)
    for g in schema.GROUPS:
        assert groups[g] == pytest.approx(np.log(3), abs=1e-9)


def test_missing_row_ids_are_an_error():
    rng = np.random.default_rng(3)
    sol, sub, *_ = random_case(rng)
    with pytest.raises(MetricError, match="lacks .* row ids"):
        score(sol, sub.iloc[1:])
    bad = sub.copy()
    bad.loc[0, "row_id"] = bad.loc[1, "row_id"]
    with pytest.raises(MetricError, match="duplicated"):
        score(sol, bad)
    nan = sub.copy()
    nan.loc[3, "severe"] = np.nan
    with pytest.raises(MetricError, match="finite"):
        score(sol, nan)


def test_solution_drops_missing_cells_and_weights_by_severity():
    labels = pd.DataFrame({"study_id": [11, 12]})
    for j, col in enumerate(schema.LABEL_COLUMNS):
        labels[col] = ["Normal/Mild", "Severe"] if j else [None, "Moderate"]
    sol = labels_to_solution(labels)
    assert len(sol) == 49
    assert "11_spinal_canal_stenosis_l1_l2" not in set(sol.row_id)
    row = sol.set_index("row_id").loc["12_spinal_canal_stenosis_l1_l2"]
    assert row.moderate == 1 and row.sample_weight == 2
    assert sol.set_index("row_id").loc["12_right_subarticular_stenosis_l5_s1"].sample_weight == 4


def test_probs_round_trip():
    rng = np.random.default_rng(4)
    _, sub, ids, _, p = random_case(rng)
    back = submission_to_probs(sub.sample(frac=1.0, random_state=0), ids)
    np.testing.assert_allclose(back, p, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_study_terms_give_the_score_and_resamples_of_it(seed):
    from lumbar.metric import score_from_terms, study_terms

    rng = np.random.default_rng(200 + seed)
    sol, sub, ids, y, p = random_case(rng, n_studies=25, missing=0.1)
    p = p * rng.uniform(0.3, 0.95, size=(len(ids), 25, 1))  # unnormalised rows too
    sub = probs_to_submission(ids, p)
    terms = study_terms(y, p)
    assert float(score_from_terms(terms)) == pytest.approx(score(sol, sub), abs=1e-9)
    # a resample with repeats: the same as scoring the repeated studies under fresh ids
    pick = rng.integers(0, len(ids), size=len(ids))
    counts = np.bincount(pick, minlength=len(ids))
    new_ids = np.arange(1, len(pick) + 1) * 7
    expected = score(solution_frame(new_ids, y[pick]), probs_to_submission(new_ids, p[pick]))
    assert float(score_from_terms(terms, counts)) == pytest.approx(expected, abs=1e-9)


def test_bootstrap_intervals_and_paired_differences():
    from lumbar.metric import score_from_terms, study_terms
    from lumbar.commands.scoring import bootstrap, format_table

    rng = np.random.default_rng(9)
    n = 120
    y = rng.integers(0, 3, size=(n, 25))
    onehot = np.eye(3)[y]
    good = 0.6 * onehot + 0.4 / 3
    worse = 0.5 * onehot + 0.5 / 3
    noise = rng.uniform(0.9, 1.1, size=(n, 25, 3))
    probs = {"a": good * noise, "b": worse * noise, "oracle": 0.9 * onehot + 0.1 / 3}
    probs = {k: v / v.sum(-1, keepdims=True) for k, v in probs.items()}
    t = bootstrap(probs, y, n_boot=500)
    assert t.attrs["best_single"] == "a"  # the oracle is not a candidate
    point = {m: float(score_from_terms(study_terms(y, p))) for m, p in probs.items()}
    for m in probs:
        assert t.loc[m, "ci_low"] < point[m] < t.loc[m, "ci_high"]
    # b is worse than a on every study: its paired difference is positive and tighter than either interval
    assert 0 < t.loc["b", "vs_best_low"] < t.loc["b", "vs_best"] < t.loc["b", "vs_best_high"]
    assert t.loc["b", "vs_best_high"] - t.loc["b", "vs_best_low"] < t.loc["b", "ci_high"] - t.loc["b", "ci_low"]
    assert t.loc["a", "vs_best"] == 0
    scores = pd.DataFrame({c: [point[m] for m in probs] for c in [*schema.GROUPS, "any_severe_spinal", "overall"]},
                          index=list(probs)).join(t)
    scores.attrs["best_single"] = "a"
    text = format_table(scores)
    assert "95% CI" in text and "minus a (95% CI)" in text
    assert f"| b |" in text and f"{t.loc['b', 'vs_best']:+.4f} [" in text


def test_every_column_of_the_score_table_has_its_interval():
    from lumbar.metric import study_terms
    from lumbar.commands.scoring import COLUMNS, bootstrap, format_table

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=(80, 25))
    p = rng.dirichlet(np.ones(3), size=(80, 25))
    t = bootstrap({"m": p}, y, n_boot=300)
    terms = study_terms(y, p).sum(0)
    for j, col in enumerate(COLUMNS[:-1]):
        value = terms[j, 0] / terms[j, 1]
        assert t.loc["m", f"{col}_low"] < value < t.loc["m", f"{col}_high"], col
    table = pd.DataFrame({c: [0.5] for c in COLUMNS}, index=["m"]).join(t)
    row = next(line for line in format_table(table).splitlines() if line.startswith("| m |"))
    assert row.count("[") == len(COLUMNS) + 1  # four columns with their interval, overall's, the paired difference


def test_the_share_of_the_gap_closed_and_its_interval_over_studies():
    from lumbar.commands.scoring import gap_closed

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=(40, 25))
    onehot = np.eye(3)[y]
    prior = np.broadcast_to(np.array([0.7, 0.2, 0.1]), onehot.shape)
    oracle = 0.8 * onehot + 0.2 / 3
    assert gap_closed(y, prior, prior, oracle, n_boot=200)[0] == pytest.approx(0.0)
    assert gap_closed(y, oracle, prior, oracle, n_boot=200)[0] == pytest.approx(1.0)
    mixed = np.where(rng.random((40, 1, 1)) < 0.5, oracle, prior)  # the oracle on half the studies
    share, low, high = gap_closed(y, mixed, prior, oracle, n_boot=500)
    assert 0.2 < share < 0.8 and low < share < high
    wider = gap_closed(y[:10], mixed[:10], prior[:10], oracle[:10], n_boot=500)
    assert wider[2] - wider[1] > high - low  # fewer studies, a wider interval


def test_test_accuracy_scores_each_submission_with_its_gap_and_paired_difference(synth_dir):
    import pandas as pd

    from lumbar.commands.scoring import test_accuracy
    from lumbar.metric import labels_to_solution, score

    from lumbar.metric import oracle_frame

    oracle = oracle_frame(pd.read_csv(synth_dir / "oracle.csv"))  # the metric's bound, what test_accuracy reads
    labels = pd.read_csv(synth_dir / "test_labels.csv")
    flat = oracle.copy()
    flat[["normal_mild", "moderate", "severe"]] = [0.7, 0.2, 0.1]  # a constant "prior"
    half = oracle.copy()
    cols = ["normal_mild", "moderate", "severe"]
    half[cols] = 0.5 * oracle[cols].to_numpy() + 0.5 * flat[cols].to_numpy()
    r = test_accuracy(synth_dir, {"multitask": half, "ensemble": oracle}, flat, n_boot=200)
    assert r["test_studies"] == labels["study_id"].nunique()
    assert abs(r["oracle"] - score(labels_to_solution(labels), oracle)) < 1e-6  # the competition's metric (float32 rows)
    ens, mt = r["models"]["ensemble"], r["models"]["multitask"]
    assert abs(ens["gap_closed"] - 1) < 1e-9 and 0 < mt["gap_closed"] < 1
    assert ens["interval"][0] <= ens["score"] <= ens["interval"][1]
    assert abs(ens["minus_multitask"] - (ens["score"] - mt["score"])) < 1e-9 and ens["minus_multitask"] < 0
    lo, hi = ens["minus_multitask_interval"]
    assert lo <= ens["minus_multitask"] <= hi and "minus_multitask" not in mt


def test_the_weighted_optimum_of_the_posterior_is_the_metrics_bound_not_the_posterior():
    """Sample weights that follow the true class move the metric's optimum off the posterior p to
    q ~ p * (1, 2, 4): labels drawn from a known posterior, scored by the competition's metric, reward it
    by several hundredths (what the synthetic folders' oracle.csv left on the table), and no reweighting
    by another power of the weights does better on the row terms."""
    from lumbar.data.labelmodel import LabelModel
    from lumbar.metric import oracle_frame, weighted_optimum

    rng = np.random.default_rng(3)
    model = LabelModel.default()
    z = model.draw_latent(4000, rng)
    y = model.draw_labels(z, rng)
    post = model.oracle(z)
    ids = list(range(1, len(y) + 1))
    sol = solution_frame(ids, y)

    def groups(p):
        return score_groups(sol, probs_to_submission(ids, p))

    best = weighted_optimum(post)
    np.testing.assert_allclose(best.sum(-1), 1.0)
    assert (np.argmax(best, -1) >= np.argmax(post, -1)).all()  # weight moves mass toward the worse classes
    b, p = groups(best), groups(post)
    assert b["overall"] < p["overall"] - 0.02
    for power in (0.5, 0.8, 1.25, 1.5):
        q = post * np.asarray(schema.SEVERITY_WEIGHTS) ** power
        other = groups(q / q.sum(-1, keepdims=True))
        for g in schema.GROUPS:
            assert b[g] <= other[g] + 2e-3, (power, g)  # the optimum up to the sample's noise
    frame = oracle_frame(probs_to_submission(ids, post))  # the frame form scoring reads
    np.testing.assert_allclose(submission_to_probs(frame, ids), best, atol=1e-6)


def test_the_oracle_bound_bench_prints_the_bound_below_the_posterior(synth_dir, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "oracle_bound.py"
    spec = importlib.util.spec_from_file_location("oracle_bound", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(synth_dir)]) == 0
    rows = {line.split(" | ")[0].strip("| "): float(line.rstrip(" |").split(" | ")[-1])
            for line in capsys.readouterr().out.splitlines() if line.startswith("| posterior") or line.startswith("| the bound")}
    assert rows["the bound: posterior x (1, 2, 4)"] < rows["posterior (oracle.csv)"]


def test_local_score_gives_each_model_its_share_of_the_gap_to_the_metrics_bound(synth_dir, tmp_path):
    from lumbar.commands.scoring import format_table, local_score
    from lumbar.data.catalog import read_labels
    from lumbar.layout import Run
    from lumbar.metric import oracle_frame

    labels = read_labels(synth_dir)
    ids = labels["study_id"].astype(int).tolist()
    bound = submission_to_probs(oracle_frame(pd.read_csv(synth_dir / "oracle.csv")), ids)
    prior = np.broadcast_to(np.array([0.6, 0.25, 0.15]), bound.shape)
    oof = Run(tmp_path / "run").oof_dir
    oof.mkdir(parents=True)
    probs_to_submission(ids, prior).to_csv(oof / "prior.csv", index=False)
    probs_to_submission(ids, 0.5 * prior + 0.5 * bound).to_csv(oof / "halfway.csv", index=False)
    table = local_score(synth_dir, tmp_path / "run", n_boot=200)
    o, p, h = (table.loc[m, "overall"] for m in ("oracle", "prior", "halfway"))
    assert table.loc["halfway", "gap"] == pytest.approx((p - h) / (p - o), abs=1e-4) and 0 < table.loc["halfway", "gap"] < 1
    assert table.loc["halfway", "gap_low"] <= table.loc["halfway", "gap"] <= table.loc["halfway", "gap_high"]
    lines = format_table(table).splitlines()
    assert lines[0].endswith("| share of the prior–oracle gap (95% CI) |")
    assert next(x for x in lines if x.startswith("| prior |")).endswith("| — |")
    assert f"| {table.loc['halfway', 'gap']:.1%} [" in next(x for x in lines if x.startswith("| halfway |"))
