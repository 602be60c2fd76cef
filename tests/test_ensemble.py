import numpy as np
import pytest

from lumbar import schema
from lumbar.data.labelmodel import LabelModel
from lumbar.infer.ensemble import GROUP_COLUMNS, Ensemble, fit_ensemble, group_loss
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
