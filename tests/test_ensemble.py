import numpy as np
import pytest

from lumbar import schema
from lumbar.data.labelmodel import LabelModel
from lumbar.infer.ensemble import GROUP_COLUMNS, Ensemble
from lumbar.metric import group_loss
from lumbar.train.ensemble import fit_ensemble
from lumbar.metric import probs_to_submission, score, solution_frame
from lumbar.models.prior import fit_prior


@pytest.fixture(scope="module")
def members():
    rng = np.random.default_rng(0)
    model = LabelModel.default()
    z = model.draw_latent(600, rng)
    y = model.draw_labels(z, rng)
    oracle = model.oracle(z)
    sharp = oracle ** 3 / (oracle ** 3).sum(-1, keepdims=True)  # informative but overconfident
    noisy = 0.5 * oracle + 0.5 * rng.dirichlet(np.ones(3), size=oracle.shape[:2])  # informative, noisy
    prior = np.broadcast_to(fit_prior(y), y.shape + (3,)).copy()
    return y, {"sharp": sharp, "noisy": noisy, "prior": prior}


def test_group_losses_add_up_to_the_metric(members):
    y, m = members
    ids = np.arange(len(y)) + 1
    p = m["noisy"]
    total = sum(group_loss(g, p[:, cols], y[:, cols]) for g, cols in GROUP_COLUMNS.items()) / 4
    assert total == pytest.approx(score(solution_frame(ids, y), probs_to_submission(ids, p)), abs=1e-9)


def test_ensemble_never_worse_than_best_single_and_round_trips(members, tmp_path):
    y, m = members
    ids = np.arange(len(y)) + 1
    sol = solution_frame(ids, y)
    ens, report = fit_ensemble(m, y)
    blended = ens.apply(m)
    assert blended.shape == (len(y), 25, 3) and np.allclose(blended.sum(-1), 1, atol=1e-5)
    singles = {k: score(sol, probs_to_submission(ids, p)) for k, p in m.items()}
    ours = score(sol, probs_to_submission(ids, blended))
    assert ours <= min(singles.values()) + 1e-9
    assert ours < min(singles.values()) - 0.005  # two complementary members: blending really helps here
    for g in schema.GROUPS:
        assert np.isclose(sum(ens.weights[g]), 1) and min(ens.weights[g]) >= 0
    assert ens.temperature["spinal"] > 1.0  # the overconfident member gets softened
    ens.save(tmp_path / "e.json")
    np.testing.assert_allclose(Ensemble.load(tmp_path / "e.json").apply(m), blended, atol=1e-6)
    with pytest.raises(KeyError, match="sharp"):
        ens.apply({"noisy": m["noisy"], "prior": m["prior"]})


@pytest.mark.slow  # processes started and killed: the suite's, not test-fast's
def test_cv_selection_keeps_a_real_blend_and_drops_a_noise_member(members):
    y, m = members
    folds = np.arange(len(y)) % 4
    ens, report = fit_ensemble(m, y, folds=folds)
    # complementary members: combining wins in CV (the stack may win too: log(sharp) = 3 log(oracle) + c)
    assert all(not report[g]["chosen"].startswith("only") for g in schema.GROUPS), report
    rng = np.random.default_rng(1)
    noise = rng.dirichlet(np.ones(3), size=y.shape).astype(np.float32)
    best = min(m, key=lambda k: score(solution_frame(np.arange(len(y)) + 1, y),
                                      probs_to_submission(np.arange(len(y)) + 1, m[k])))
    ens2, report2 = fit_ensemble({best: m[best], "noise": noise}, y, folds=folds)
    for g in schema.GROUPS:
        # the noise member gets (almost) nothing, chosen by cross-validation or by the fit itself
        assert ens2.weights[g][ens2.models.index("noise")] < 0.05, report2[g]


def test_apply_available_renormalises_over_the_members_that_predicted(members):
    y, m = members
    ens, _ = fit_ensemble(m, y)
    full = ens.apply(m)
    np.testing.assert_allclose(ens.apply_available(m), full, atol=1e-6)
    names = ens.models
    drop = names[0]
    part = ens.apply_available({k: v for k, v in m.items() if k != drop})
    assert np.allclose(part.sum(-1), 1, atol=1e-5) and np.isfinite(part).all()
    lone = Ensemble(models=names, weights={g: [1.0] + [0.0] * (len(names) - 1) for g in schema.GROUPS},
                    temperature={g: 1.0 for g in schema.GROUPS})
    # all the weight was on the absent member: the others share it equally
    rest = {k: m[k] for k in names[1:]}
    expected = np.mean([rest[k] for k in names[1:]], axis=0)
    np.testing.assert_allclose(lone.apply_available(rest), expected / expected.sum(-1, keepdims=True), atol=1e-5)


@pytest.mark.slow  # nested CV over 600 studies, ~40 s: the suite's, not test-fast's
def test_a_stack_is_chosen_where_it_undoes_what_a_blend_cannot_and_not_otherwise(members, tmp_path):
    """Two members whose errors are a class-wise distortion (one says Moderate where it means Severe):
    no convex blend with a temperature can swap classes back, a stack over log-probabilities can.
    Nested CV picks the stack there, and keeps the blend for members a blend already serves."""
    y, m = members
    folds = np.arange(len(y)) % 4
    swapped = m["noisy"][..., [0, 2, 1]]  # Moderate and Severe exchanged
    skewed = m["sharp"] * np.array([1.0, 0.2, 3.0])
    skewed = skewed / skewed.sum(-1, keepdims=True)
    bent = {"swapped": swapped, "skewed": skewed}
    ens, report = fit_ensemble(bent, y, folds=folds, candidates=("only", "blend", "stack"))
    assert all(report[g]["chosen"] == "stack" for g in schema.GROUPS), report
    assert all(report[g]["cv_stack"] < report[g]["cv_blend"] - 0.01 for g in schema.GROUPS)
    out = ens.apply(bent)
    assert np.allclose(out.sum(-1), 1, atol=1e-5)
    ens.save(tmp_path / "e.json")
    np.testing.assert_allclose(Ensemble.load(tmp_path / "e.json").apply(bent), out, atol=1e-5)
    # a member missing: its stacked groups fall back to the blend over what predicted
    lone = ens.apply_available({"swapped": swapped})
    assert np.allclose(lone.sum(-1), 1, atol=1e-5)
    plain, plain_report = fit_ensemble(m, y, folds=folds, stack=False)
    assert all("cv_stack" not in r and "cv_mix" not in r and not plain.stack for r in plain_report.values())
    assert all("cv_blend" in r for r in plain_report.values())  # the blend stands in for the mix


def test_the_mix_is_the_mean_of_the_blend_and_the_stack_and_round_trips(members, tmp_path):
    """The default: every group the mix, whose probabilities are the mean of what the group's blend and
    its stack give; with "only" a candidate too, the single model where it wins in CV."""
    from lumbar.infer.ensemble import blend, stacked

    y, m = members
    folds = np.arange(len(y)) % 4
    ens, report = fit_ensemble(m, y, folds=folds)
    assert all(r["chosen"] == "mix" and set(r) == {"fitted", "cv_mix", "chosen"} for r in report.values()), report
    out = ens.apply(m)
    stack_all = np.stack([m[k] for k in ens.models]).astype(np.float64)
    for g, cols in GROUP_COLUMNS.items():
        s = stack_all[:, :, cols]
        want = 0.5 * blend(s, np.asarray(ens.weights[g]), ens.temperature[g]) + 0.5 * stacked(s, ens.stack[g])
        np.testing.assert_allclose(out[:, cols], want, atol=1e-6)
        assert ens.stack_share[g] == 0.5
    ens.save(tmp_path / "e.json")
    np.testing.assert_allclose(Ensemble.load(tmp_path / "e.json").apply(m), out, atol=1e-6)
    # one member alone: the mix's CV loss is above the single model's, which is kept
    lone, lone_report = fit_ensemble({"prior": m["prior"]}, y, folds=folds, candidates=("only", "mix"))
    for g, r in lone_report.items():
        assert r["chosen"].startswith("only") == (r["only prior"] <= r["cv_mix"]), r
    with pytest.raises(ValueError, match="candidates"):
        fit_ensemble(m, y, folds=folds, candidates=("only", "average"))


def test_a_fitted_severe_scale_recovers_how_far_severe_was_underpredicted(tmp_path):
    from lumbar.infer.ensemble import scale_severe
    from lumbar.train.ensemble import fit_severe_scale

    rng = np.random.default_rng(0)
    truth = rng.dirichlet([4.0, 2.0, 1.0], (4000, 5))  # spinal: 5 levels per study
    yy = (rng.random((4000, 5, 1)) > np.cumsum(truth, -1)).sum(-1).clip(0, 2)
    best = truth * np.array(schema.SEVERITY_WEIGHTS)  # what the weighted rows alone want (p ~ weight x truth)
    best /= best.sum(-1, keepdims=True)
    own = fit_severe_scale(best, yy, "spinal")  # > 1: the any-severe term wants severe higher still
    assert 1.0 < own < 1.6
    shy = scale_severe(best, 1 / 1.25)  # a model that says severe 1.25x too rarely
    np.testing.assert_allclose(shy.sum(-1), 1.0)
    fitted = fit_severe_scale(shy, yy, "spinal")
    assert fitted == pytest.approx(1.25 * own, rel=0.03)  # scales compose: it finds the 1.25 back
    loss = lambda k: group_loss("spinal", scale_severe(shy, k), yy)
    assert loss(fitted) < min(loss(1.0), loss(fitted * 1.1), loss(fitted / 1.1))

    # shipped in the ensemble's JSON and applied (all members, or the ones that predicted)
    p = {"a": rng.dirichlet([3, 2, 1], (6, 25)), "b": rng.dirichlet([3, 2, 1], (6, 25))}
    plain = Ensemble(models=["a", "b"], weights={g: [0.5, 0.5] for g in GROUP_COLUMNS})
    scaled = Ensemble(models=["a", "b"], weights={g: [0.5, 0.5] for g in GROUP_COLUMNS}, severe_scale={"spinal": 1.3})
    scaled.save(tmp_path / "e.json")
    back = Ensemble.load(tmp_path / "e.json")
    sp, fo = GROUP_COLUMNS["spinal"], GROUP_COLUMNS["foraminal"]
    for got, ref in ((back.apply(p), plain.apply(p)), (back.apply_available({"a": p["a"]}), plain.apply_available({"a": p["a"]}))):
        np.testing.assert_allclose(got[:, sp], scale_severe(ref[:, sp], 1.3), atol=1e-6)
        np.testing.assert_allclose(got[:, fo], ref[:, fo], atol=1e-7)  # other groups untouched


def test_fit_ensemble_fits_the_severe_scale_only_where_asked():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, (60, 25))
    oof = {m: rng.dirichlet([3, 2, 1], (60, 25)) for m in ("a", "b")}
    ens, report = fit_ensemble(oof, y, severe_scale=["spinal"])
    assert set(ens.severe_scale) == {"spinal"} and 0.5 <= ens.severe_scale["spinal"] <= 2.0
    assert report["spinal"]["severe_scale"] == ens.severe_scale["spinal"]
    assert fit_ensemble(oof, y)[0].severe_scale == {}
