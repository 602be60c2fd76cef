"""The slice selector's members as arrays: a RandomForest, an SVM, an MLP and XGBoost's trees that predict
from their numbers with numpy, no pickle, no library's file format.

A scikit-learn pickle is the library's private layout: the RandomForests of 1.2.2 do not load under 1.6.1
at all (their node records gained a field), and unpickling runs whatever code the file names (the weights
are a dataset anyone with the link can replace). The fitted numbers are what the members are: the trees'
nodes, the MLP's matrices, the SVM's support vectors and Platt coefficients. Written as `.npz` (read with
allow_pickle=False) plus a few scalars, they load and predict the same under any numpy, and the probes
(infer/probes.py) check that they predict what the fitted scikit-learn model predicted.

Each class reproduces the estimator's own arithmetic, step for step where the order of operations
matters (StandardScaler's float32 rounding, libsvm's pairwise coupling), so the probabilities agree with
scikit-learn's to ~1e-12, not merely "closely": a tie between two slices must break the same way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import write_npz

FORMAT = 1  # the layout of the arrays below; a reader refuses another


def _standardise(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, emphasis: tuple[int, float]) -> np.ndarray:
    """StandardScaler then slice_select.Emphasise, in their arithmetic: the scaler works in place in the
    input's dtype (float32 features: each step rounded to float32), Emphasise copies to float64."""
    X = np.array(X, copy=True)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    np.subtract(X, mean, out=X, casting="same_kind")
    np.divide(X, scale, out=X, casting="same_kind")
    X = X.astype(np.float64)
    n, factor = emphasis
    if n:
        X[:, -n:] *= factor
    return X


def _pipeline_parts(pipe) -> tuple[np.ndarray, np.ndarray, tuple[int, float], object]:
    """(mean, scale, (n, factor) of Emphasise, the final estimator) of make_pipeline(StandardScaler(),
    Emphasise(), estimator); refuses any other shape of pipeline."""
    steps = [s for _, s in pipe.steps]
    names = [type(s).__name__ for s in steps]
    if names[:2] != ["StandardScaler", "Emphasise"] or len(steps) != 3:
        raise ValueError(f"a pipeline of {names}; the portable members read StandardScaler, Emphasise, estimator")
    sc, em = steps[0], steps[1]
    mean = np.asarray(sc.mean_ if sc.with_mean else np.zeros(sc.n_features_in_), np.float64)
    scale = np.asarray(sc.scale_ if sc.with_std else np.ones(sc.n_features_in_), np.float64)
    return mean, scale, (int(em.n), float(em.factor)), steps[2]


def _leaves(a: dict, X: np.ndarray, go_left) -> np.ndarray:
    """[n, trees] the leaf each row reaches in each tree of a node table (roots, left, right, feature;
    -1 children at a leaf): every row walks every tree at once, one level per step.
    go_left(values at the nodes' features, nodes) decides the branch."""
    n, t = len(X), len(a["roots"])
    node = np.broadcast_to(a["roots"], (n, t)).copy()
    rows = np.broadcast_to(np.arange(n)[:, None], (n, t))
    while True:
        inner = a["left"][node] >= 0
        if not inner.any():
            return node
        v = X[rows, np.where(inner, a["feature"][node], 0)]
        node = np.where(inner, np.where(go_left(v, node), a["left"][node], a["right"][node]), node)


class _Portable:
    def __init__(self, arrays: dict[str, np.ndarray]):
        self.a = arrays

    @property
    def classes_(self) -> np.ndarray:
        return self.a["classes"]


class PortableForest(_Portable):
    """A RandomForestClassifier as one node table over all trees: each tree's root, and per node its
    children, feature, threshold and class probabilities (a leaf's value normalised, as predict_proba)."""

    @classmethod
    def from_sklearn(cls, rf) -> "PortableForest":
        left, right, feat, thr, prob, roots = [], [], [], [], [], []
        base = 0
        n_classes = int(rf.n_classes_)
        for est in rf.estimators_:
            t = est.tree_
            l, r = t.children_left.astype(np.int64), t.children_right.astype(np.int64)
            left.append(np.where(l >= 0, l + base, -1))
            right.append(np.where(r >= 0, r + base, -1))
            feat.append(t.feature.astype(np.int64))
            thr.append(t.threshold.astype(np.float64))
            v = np.asarray(t.value, np.float64)[:, 0, :n_classes]  # counts (<= 1.3) or fractions (>= 1.4)
            norm = v.sum(1, keepdims=True)
            norm[norm == 0] = 1.0
            prob.append(v / norm)
            roots.append(base)
            base += t.node_count
        return cls({"left": np.concatenate(left), "right": np.concatenate(right), "feature": np.concatenate(feat),
                    "threshold": np.concatenate(thr), "proba": np.concatenate(prob),
                    "roots": np.asarray(roots, np.int64), "classes": np.asarray(rf.classes_, np.int64)})

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        a = self.a
        # Trees compare float32 features against float64 thresholds (scikit-learn casts X to float32).
        node = _leaves(a, np.asarray(X, np.float32).astype(np.float64), lambda v, node: v <= a["threshold"][node])
        n, t = node.shape
        proba = np.zeros((n, a["proba"].shape[1]))
        for k in range(t):  # the trees' sum in their order, then the mean, as scikit-learn adds them
            proba += a["proba"][node[:, k]]
        return proba / t


class PortableMLP(_Portable):
    """make_pipeline(StandardScaler(), Emphasise(), MLPClassifier(relu)) as its matrices."""

    @classmethod
    def from_sklearn(cls, pipe) -> "PortableMLP":
        mean, scale, (n, factor), mlp = _pipeline_parts(pipe)
        if mlp.activation != "relu" or mlp.out_activation_ not in ("softmax", "logistic"):
            raise ValueError(f"an MLP with {mlp.activation}/{mlp.out_activation_}; the portable one is relu/softmax|logistic")
        out = {"mean": mean, "scale": scale, "emphasis": np.asarray([n, factor], np.float64),
               "classes": np.asarray(mlp.classes_, np.int64), "layers": np.asarray(len(mlp.coefs_), np.int64),
               "softmax": np.asarray(mlp.out_activation_ == "softmax")}
        for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
            out[f"w{i}"], out[f"b{i}"] = np.asarray(w), np.asarray(b)
        return cls(out)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        a = self.a
        h = _standardise(X, a["mean"], a["scale"], (int(a["emphasis"][0]), float(a["emphasis"][1])))
        layers = int(a["layers"])
        for i in range(layers):
            h = h @ a[f"w{i}"]
            h += a[f"b{i}"]
            if i < layers - 1:
                np.maximum(h, 0, out=h)
        if bool(a["softmax"]):
            e = np.exp(h - h.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)
        p = expit(h).ravel()
        return np.stack([1 - p, p], 1)


def _sigmoid_predict(f: np.ndarray, A: float, B: float) -> np.ndarray:
    """libsvm's Platt sigmoid, written the way that does not overflow on either side."""
    fApB = f * A + B
    out = np.empty_like(fApB)
    pos = fApB >= 0
    e = np.exp(-fApB[pos])
    out[pos] = e / (1.0 + e)
    out[~pos] = 1.0 / (1.0 + np.exp(fApB[~pos]))
    return out


def _couple(r: np.ndarray) -> np.ndarray:
    """Class probabilities [n, k] from pairwise ones r [n, k, k] (r[i, j] = P(i | i or j)): the fixed
    point iteration of Wu, Lin and Weng (2004, method 2), as libsvm runs it (eps 0.005/k, at most
    max(100, k) sweeps), each row stopping on its own."""
    n, k, _ = r.shape
    Q = -r.transpose(0, 2, 1) * r  # Q[t, j] = -r[j, t] r[t, j] off the diagonal
    diag = (r.transpose(0, 2, 1) ** 2 * (1 - np.eye(k))).sum(2)  # sum_j != t r[j, t]^2
    Q[:, np.arange(k), np.arange(k)] = diag
    p = np.full((n, k), 1.0 / k)
    eps = 0.005 / k
    active = np.ones(n, bool)
    for _ in range(max(100, k)):
        Qp = np.einsum("ntj,nj->nt", Q, p)
        pQp = (p * Qp).sum(1)
        err = np.abs(Qp - pQp[:, None]).max(1)
        active &= err >= eps
        if not active.any():
            break
        idx = np.flatnonzero(active)
        Qa, pa, Qpa, pQpa = Q[idx], p[idx], Qp[idx], pQp[idx]
        for t in range(k):
            diff = (-Qpa[:, t] + pQpa) / Qa[:, t, t]
            pa[:, t] += diff
            pQpa = (pQpa + diff * (diff * Qa[:, t, t] + 2 * Qpa[:, t])) / (1 + diff) / (1 + diff)
            Qpa = (Qpa + diff[:, None] * Qa[:, t, :]) / (1 + diff)[:, None]
            pa /= (1 + diff)[:, None]
        p[idx] = pa
    return p


class PortableSVM(_Portable):
    """make_pipeline(StandardScaler(), Emphasise(), SVC(kernel="rbf", probability=True)) as its support
    vectors, dual coefficients, intercepts and Platt coefficients; predict_proba as libsvm's."""

    @classmethod
    def from_sklearn(cls, pipe) -> "PortableSVM":
        mean, scale, (n, factor), svc = _pipeline_parts(pipe)
        if svc.kernel != "rbf" or not getattr(svc, "probability", False):
            raise ValueError(f"an SVC with kernel {svc.kernel!r}, probability={svc.probability}; the portable one "
                             "is rbf with probabilities")
        probA = getattr(svc, "_probA", None)
        probB = getattr(svc, "_probB", None)
        if probA is None:
            probA, probB = svc.probA_, svc.probB_
        return cls({"mean": mean, "scale": scale, "emphasis": np.asarray([n, factor], np.float64),
                    "classes": np.asarray(svc.classes_, np.int64), "sv": np.asarray(svc.support_vectors_, np.float64),
                    # libsvm's own sign convention (scikit-learn negates the public ones for two classes)
                    "dual": np.asarray(svc._dual_coef_, np.float64), "intercept": np.asarray(svc._intercept_, np.float64),
                    "n_support": np.asarray(svc._n_support, np.int64), "gamma": np.asarray(float(svc._gamma)),
                    "probA": np.asarray(probA, np.float64), "probB": np.asarray(probB, np.float64)})

    def decision_pairs(self, X: np.ndarray) -> np.ndarray:
        """[n, k(k-1)/2] libsvm's one-vs-one decision values, pairs (i, j), i < j, in its order."""
        a = self.a
        Z = _standardise(X, a["mean"], a["scale"], (int(a["emphasis"][0]), float(a["emphasis"][1])))
        sv = a["sv"]
        d2 = (Z * Z).sum(1)[:, None] + (sv * sv).sum(1)[None, :] - 2 * Z @ sv.T
        K = np.exp(-float(a["gamma"]) * np.maximum(d2, 0))
        ns = a["n_support"]
        start = np.concatenate([[0], np.cumsum(ns)[:-1]])
        k = len(ns)
        out = []
        p = 0
        for i in range(k):
            for j in range(i + 1, k):
                si, sj = slice(start[i], start[i] + ns[i]), slice(start[j], start[j] + ns[j])
                s = K[:, si] @ a["dual"][j - 1, si] + K[:, sj] @ a["dual"][i, sj]
                out.append(s + a["intercept"][p])  # libsvm subtracts rho = -intercept
                p += 1
        return np.stack(out, 1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        a = self.a
        dec = self.decision_pairs(X)
        k = len(a["n_support"])
        n = len(dec)
        r = np.zeros((n, k, k))
        p = 0
        for i in range(k):
            for j in range(i + 1, k):
                rij = np.clip(_sigmoid_predict(dec[:, p], float(a["probA"][p]), float(a["probB"][p])), 1e-7, 1 - 1e-7)
                r[:, i, j], r[:, j, i] = rij, 1 - rij
                p += 1
        return _couple(r)  # for two classes too: scikit-learn's libsvm couples them (newer libsvm takes r[0, 1])


class PortableBoost(_Portable):
    """An XGBClassifier as its trees' node table (XGBoost's own JSON layout, read once at save) and its
    base margin per class. XGBoost's JSON is not portable backwards: 3.x writes a per-class intercept
    (`base_score` "[a,b,c]") that 2.0.3 reads and mispredicts by up to 0.4 in a probability (measured on
    this project's members). The base margin is therefore not parsed but measured, in the saving process:
    the booster's margins on the probe rows minus the trees' sum."""

    @classmethod
    def from_xgboost(cls, model, rows: np.ndarray) -> "PortableBoost":
        import json

        import xgboost

        booster = model.get_booster()
        learner = json.loads(bytes(booster.save_raw("json")).decode())["learner"]
        gb = learner["gradient_booster"]
        if gb.get("name") != "gbtree":
            raise ValueError(f"an XGBoost {gb.get('name')} booster; the portable one reads gbtree")
        objective = learner["objective"]["name"]
        if objective not in ("multi:softprob", "binary:logistic"):
            raise ValueError(f"an XGBoost objective {objective!r}; the portable one reads multi:softprob, binary:logistic")
        trees = gb["model"]["trees"]
        left, right, feat, thr, dleft, roots = [], [], [], [], [], []
        base = 0
        for t in trees:
            if any(t.get("split_type", [])):
                raise ValueError("an XGBoost tree with categorical splits; the portable one reads numerical ones")
            l, r = np.asarray(t["left_children"], np.int64), np.asarray(t["right_children"], np.int64)
            left.append(np.where(l >= 0, l + base, -1))
            right.append(np.where(r >= 0, r + base, -1))
            feat.append(np.asarray(t["split_indices"], np.int64))
            thr.append(np.asarray(t["split_conditions"], np.float32))  # a leaf's value where it is a leaf
            dleft.append(np.asarray(t["default_left"], bool))
            roots.append(base)
            base += len(l)
        groups = max(1, int(learner["learner_model_param"].get("num_class", "0") or 0))
        out = cls({"left": np.concatenate(left), "right": np.concatenate(right), "feature": np.concatenate(feat),
                   "threshold": np.concatenate(thr), "default_left": np.concatenate(dleft),
                   "roots": np.asarray(roots, np.int64), "group": np.asarray(gb["model"]["tree_info"], np.int64),
                   "softmax": np.asarray(objective == "multi:softprob"), "classes": np.asarray(model.classes_, np.int64),
                   "base_margin": np.zeros(groups)})
        rows = np.asarray(rows, np.float32)
        margin = booster.predict(xgboost.DMatrix(rows), output_margin=True).reshape(len(rows), groups)
        out.a["base_margin"] = (margin - out.tree_sum(rows)).mean(0).astype(np.float64)
        return out

    def tree_sum(self, X: np.ndarray) -> np.ndarray:
        """[n, groups] the trees' leaf values summed per output group (XGBoost's margin less its base)."""
        a = self.a
        # XGBoost: float32 features, left when below the split, a missing value where the split learned to send it
        node = _leaves(a, np.asarray(X, np.float32), lambda v, node: np.where(
            np.isnan(v), a["default_left"][node], v < a["threshold"][node]))
        n = len(node)
        leaf = a["threshold"][node].astype(np.float64)
        out = np.zeros((n, len(a["base_margin"])))
        np.add.at(out.T, a["group"], leaf.T)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        m = self.tree_sum(X) + self.a["base_margin"]
        if bool(self.a["softmax"]):
            e = np.exp(m - m.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)
        p = 1.0 / (1.0 + np.exp(-m[:, 0]))
        return np.stack([1 - p, p], 1)


KINDS = {"rf": PortableForest, "mlp": PortableMLP, "svm": PortableSVM, "xgb": PortableBoost}


def portable(name: str, model, rows: np.ndarray | None = None):
    """The portable form of a fitted member (rf, svm, mlp; xgb, which needs rows to measure its base
    margin on); an already portable one as it is."""
    if isinstance(model, _Portable):
        return model
    if name == "xgb":
        if rows is None or not len(rows):
            raise ValueError("an XGBoost member needs rows to measure its base margin on")
        return PortableBoost.from_xgboost(model, rows)
    return KINDS[name].from_sklearn(model)


def save_member(member, path: str | Path) -> None:
    """The member's arrays as .npz (plain arrays only, so allow_pickle=False reads it), written atomically."""
    arrays = {**member.a, "__kind": np.asarray(type(member).__name__), "__format": np.asarray(FORMAT)}
    write_npz(path, arrays)


def load_member(name: str, path: str | Path):
    """A member written by save_member; raises naming the file on another kind or format."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    cls = KINDS[name]
    kind, fmt = str(arrays.pop("__kind", "")), int(arrays.pop("__format", -1))
    if kind != cls.__name__ or fmt != FORMAT:
        raise ValueError(f"{path}: holds {kind or 'no kind'} (format {fmt}); expected {cls.__name__} (format {FORMAT})")
    return cls(arrays)
