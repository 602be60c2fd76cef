"""Ensemble weights fitted on out-of-fold predictions to minimise the competition metric.

Per condition group, a convex combination of the models' probabilities (a linear pool), optionally
sharpened or softened by a temperature (p ** (1 / T), renormalised). The groups' columns are disjoint
and the metric is a sum over groups (the any-severe-spinal term belongs to the spinal group), so each
group is fitted on its own terms. Every single model (weight 1, T = 1) is a candidate too, so on the
OOF predictions the ensemble never scores worse than the best single model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from .. import schema
from ..data.cache import atomic_write_text
from ..metric import EPS

GROUP_COLUMNS = {g: [j for j, c in enumerate(schema.LABEL_COLUMNS) if schema.group_of(c) == g] for g in schema.GROUPS}


def _weighted_ll(p: np.ndarray, y: np.ndarray) -> float:
    """Sample-weighted log loss of probabilities [n, k, 3] against labels [n, k] (-1 ignored)."""
    m = y >= 0
    w = np.asarray(schema.SEVERITY_WEIGHTS)[np.where(m, y, 0)] * m
    p = np.clip(p, EPS, 1 - EPS)
    p = p / p.sum(-1, keepdims=True)
    ll = -np.log(np.take_along_axis(p, np.where(m, y, 0)[..., None], -1)[..., 0])
    return float((ll * w).sum() / w.sum())


def _any_severe(p: np.ndarray, y: np.ndarray) -> float:
    """The any-severe-spinal term for spinal probabilities [n, 5, 3] and labels [n, 5]."""
    m = y >= 0
    keep = m.any(1)
    p, y, m = p[keep], y[keep], m[keep]
    p = np.clip(p, EPS, 1 - EPS)
    p = p / p.sum(-1, keepdims=True)
    label = ((y == 2) & m).any(1).astype(float)
    weight = np.where(m, np.asarray(schema.SEVERITY_WEIGHTS)[np.where(m, y, 0)], 0).max(1)
    pred = np.clip(np.where(m, p[..., 2], 0).max(1), EPS, 1 - EPS)
    return float(-(weight * (label * np.log(pred) + (1 - label) * np.log(1 - pred))).sum() / weight.sum())


def group_loss(group: str, p: np.ndarray, y: np.ndarray) -> float:
    """The metric's terms of one group (the spinal group carries the any-severe term)."""
    loss = _weighted_ll(p, y)
    return loss + _any_severe(p, y) if group == "spinal" else loss


def _blend(stack: np.ndarray, w: np.ndarray, t: float) -> np.ndarray:
    p = np.tensordot(w, stack, axes=1)
    p = np.clip(p, EPS, 1.0) ** (1.0 / t)
    return p / p.sum(-1, keepdims=True)


@dataclass
class Ensemble:
    models: list[str]
    weights: dict[str, list[float]] = field(default_factory=dict)  # group -> one weight per model
    temperature: dict[str, float] = field(default_factory=dict)

    def apply(self, probs: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities [n, 25, 3] from each member's [n, 25, 3]."""
        missing = [m for m in self.models if m not in probs]
        if missing:
            raise KeyError(f"ensemble needs predictions of {missing}")
        stack = np.stack([np.asarray(probs[m], np.float64) for m in self.models])
        out = np.zeros(stack.shape[1:], np.float64)
        for g, cols in GROUP_COLUMNS.items():
            out[:, cols] = _blend(stack[:, :, cols], np.asarray(self.weights[g]), self.temperature.get(g, 1.0))
        return out.astype(np.float32)

    def apply_available(self, probs: dict[str, np.ndarray]) -> np.ndarray:
        """Like apply, for the members that predicted (a failed study, a model dropped for time): each
        group's weights renormalised over them; equal weights if all their weight was on the absent."""
        present = [m for m in self.models if m in probs]
        if not present:
            raise KeyError(f"ensemble needs predictions of at least one of {self.models}")
        if len(present) == len(self.models):
            return self.apply(probs)
        idx = [self.models.index(m) for m in present]
        stack = np.stack([np.asarray(probs[m], np.float64) for m in present])
        out = np.zeros(stack.shape[1:], np.float64)
        for g, cols in GROUP_COLUMNS.items():
            w = np.asarray(self.weights[g])[idx]
            w = w / w.sum() if w.sum() > 1e-9 else np.full(len(idx), 1.0 / len(idx))
            out[:, cols] = _blend(stack[:, :, cols], w, self.temperature.get(g, 1.0))
        return out.astype(np.float32)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Ensemble":
        return cls(**json.loads(Path(path).read_text()))


def _fit_group(s: np.ndarray, yy: np.ndarray, g: str, temperature: bool,
               names: list[str]) -> tuple[float, np.ndarray, float, str]:
    """The best of: each single model, and blends fitted from two starts. (loss, weights, T, name)."""
    k = s.shape[0]
    candidates = {}
    for i in range(k):
        w = np.eye(k)[i]
        candidates[f"only {names[i]}"] = (group_loss(g, _blend(s, w, 1.0), yy), w, 1.0)

    def objective(theta):
        w = np.exp(theta[:k] - theta[:k].max())
        w = w / w.sum()
        t = float(np.exp(theta[k])) if temperature else 1.0
        return group_loss(g, _blend(s, w, t), yy)

    best_single = min(candidates.values(), key=lambda c: c[0])
    starts = [np.zeros(k + 1), np.append(np.log(best_single[1] + 1e-3), 0.0)]
    for x0 in starts:
        res = minimize(objective, x0, method="Nelder-Mead", options={"maxiter": 400 * (k + 1), "xatol": 1e-4, "fatol": 1e-7})
        w = np.exp(res.x[:k] - res.x[:k].max())
        w /= w.sum()
        t = float(np.exp(res.x[k])) if temperature else 1.0
        candidates[f"fitted from {'uniform' if x0 is starts[0] else 'best'}"] = (float(res.fun), w, t)
    name, (loss, w, t) = min(candidates.items(), key=lambda kv: kv[1][0])
    return loss, w, t, name


def fit_ensemble(oof: dict[str, np.ndarray], y: np.ndarray, temperature: bool = True,
                 folds: np.ndarray | None = None) -> tuple[Ensemble, dict]:
    """Weights (and temperatures) per group minimising the metric's terms on OOF predictions.

    With `folds` (a fold id per study), each group first chooses by cross-validation between the best
    single model and a fitted blend: the blend's loss is measured on each fold with weights fitted on
    the others, so a blend that only fits noise (a weak member, a few hundred studies) loses to the
    single model it would have perturbed. Returns the ensemble and, per group, the losses considered."""
    models = sorted(oof)
    stack = np.stack([np.asarray(oof[m], np.float64) for m in models])
    ens = Ensemble(models=models)
    report = {}
    for g, cols in GROUP_COLUMNS.items():
        s, yy = stack[:, :, cols], y[:, cols]
        loss, w, t, name = _fit_group(s, yy, g, temperature, models)
        rep = {"fitted": round(loss, 5)}
        if folds is not None and len(np.unique(folds)) > 1:
            singles = [group_loss(g, s[i], yy) for i in range(len(models))]
            best = int(np.argmin(singles))
            blended = np.zeros(s.shape[1:])
            for k in np.unique(folds):
                tr, va = folds != k, folds == k
                _, wk, tk, _ = _fit_group(s[:, tr], yy[tr], g, temperature, models)
                blended[va] = _blend(s[:, va], wk, tk)
            cv_blend = group_loss(g, blended, yy)
            rep.update({"cv_blend": round(cv_blend, 5), f"only {models[best]}": round(singles[best], 5)})
            if singles[best] <= cv_blend:
                w, t, name = np.eye(len(models))[best], 1.0, f"only {models[best]}"
        ens.weights[g] = [float(v) for v in w]
        ens.temperature[g] = float(t)
        rep["chosen"] = name
        report[g] = rep
    return ens, report
