"""The selector's scikit-learn members as arrays (preprocess/members.py): the same probabilities as the
fitted estimators, read back without pickle, refusing another kind or format."""
import warnings

import numpy as np
import pytest

from lumbar.preprocess.members import load_member, portable, save_member
from lumbar.preprocess.slice_select import _make_member


def _data(k: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = (rng.normal(size=(n, 40)) + 0.4 * y[:, None]).astype(np.float32)  # float32, as slice_features
    return X, y


@pytest.mark.parametrize("k", [2, 3, 6])
@pytest.mark.parametrize("member", ["rf", "svm", "mlp", "xgb"])
def test_portable_members_predict_what_scikit_learn_predicts(member, k, tmp_path):
    X, y = _data(k, 240, k)
    Xt, _ = _data(k, 80, 100 + k)
    model = _make_member(member, k, 0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an MLP that has not converged in 400 steps on noise
        model.fit(X, y)
    want = model.predict_proba(Xt)
    save_member(portable(member, model, X[:48]), tmp_path / f"{member}.npz")
    got = load_member(member, tmp_path / f"{member}.npz").predict_proba(Xt)
    assert got.shape == want.shape
    # to rounding (the SVM's kernel sums in another order; XGBoost sums in float32), not merely close
    np.testing.assert_allclose(got, want, atol=1e-6 if member == "xgb" else 1e-10, rtol=0)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    # and on the training rows themselves (the forest's leaves there are pure)
    np.testing.assert_allclose(load_member(member, tmp_path / f"{member}.npz").predict_proba(X),
                               model.predict_proba(X), atol=1e-6 if member == "xgb" else 1e-10, rtol=0)


def test_xgboost_member_with_missing_values_takes_each_splits_default_branch(tmp_path):
    X, y = _data(3, 300, 1)
    X[::7, 3] = np.nan  # XGBoost learns a default direction per split for missing values
    model = _make_member("xgb", 3, 0, 1).fit(X, y)
    Xt, _ = _data(3, 60, 2)
    Xt[::3, :5] = np.nan
    m = portable("xgb", model, X[:48])
    np.testing.assert_allclose(m.predict_proba(Xt), model.predict_proba(Xt), atol=1e-6, rtol=0)


def test_a_member_file_of_another_kind_is_refused(tmp_path):
    X, y = _data(3, 120, 0)
    rf = _make_member("rf", 3, 0, 1).fit(X, y)
    save_member(portable("rf", rf), tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"m\.npz: holds PortableForest .*expected PortableMLP"):
        load_member("mlp", tmp_path / "m.npz")
    # the arrays matter: a changed leaf changes the prediction (what a probe then catches)
    m = load_member("rf", tmp_path / "m.npz")
    before = m.predict_proba(X)
    m.a["proba"][:] = m.a["proba"][:, ::-1]
    assert np.abs(m.predict_proba(X) - before).max() > 0.1
