"""`train --model ensemble`: weights per condition group fitted on the run's OOF predictions to
minimise the competition metric (applied by `infer/ensemble.py`).

The groups' columns are disjoint and the metric is a sum over groups (the any-severe-spinal term
belongs to the spinal group), so each group is fitted on its own terms (`metric.group_loss`). Every
single model (weight 1, T = 1) is a candidate too, so on the OOF predictions the ensemble never scores
worse than the best single model. A stack (a multinomial logistic regression per group over the
members' log-probabilities, rows weighted 1/2/4 as the metric weighs them) is a third candidate, taken
only where nested CV says it beats both: it has 9M + 3 numbers to fit per group where the blend has M + 1.
The fourth, the default, is the mean of the blend's and the stack's probabilities (the "mix"). The
stack is fitted on the rows' log loss, not on the any-severe-spinal term, and on its own it raises the
largest severe probability of a study's spinal levels where that term punishes it; the mean keeps most
of the stack's per-level gain and the blend's term. Choosing per group among the candidates by inner CV
(160 studies, four folds of 40; the any-severe term a single yes/no per study) was noisier than any
fixed rule. Nested OOF on demo run 6's folder, paired difference to the multitask model (95%, 2,000
study resamples; `bench/ensemble_candidates.py`, bench/results/default-demo/ensemble_candidates_*.md):

| members | choice among single/blend/stack | single or mix | mix |
|---|---|---|---|
| run 6 (held-out predictions without the mirror) | -0.024 [-0.054, +0.008] | -0.050 [-0.082, -0.022] | -0.050 [-0.082, -0.022] |
| run 6's weights, held-out with the mirror | -0.003 [-0.029, +0.029] | -0.013 [-0.028, +0.002] | -0.030 [-0.056, -0.006] |
| trained with mirror=0.5, held-out with the mirror | -0.000 [-0.022, +0.024] | -0.009 [-0.024, +0.005] | -0.017 [-0.037, +0.001] |

So `candidates` is ["mix"]: no per-group choice; the blend inside it still fits its weights (a noise
member gets none) and the stack is L2-regularised.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from .. import config as cfgmod
from .. import schema
from ..files import write_json
from ..infer.ensemble import Ensemble, blend, scale_severe, stack_features, stacked
from ..layout import Run
from ..metric import group_loss, probs_to_submission, score, solution_frame
from .oof import list_oof, read_oof, write_oof
from .runner import RunConfig, register, run_folds



@dataclass
class EnsembleConfig:
    temperature: bool = True  # fit a temperature per group besides the weights
    stack: bool = True  # consider a logistic-regression stack per group (kept only where nested CV prefers it)
    stack_c: float = 0.1  # its inverse L2 strength: a few hundred studies fit 9M + 3 numbers
    # what nested CV chooses from per group: "only" (the best single model), "blend", "stack", "mix" (the
    # mean of the blend's and the stack's probabilities); fewer choices, less noise (module docstring)
    candidates: list[str] = field(default_factory=lambda: ["mix"])
    # groups whose severe probability gets a fitted factor after pooling (["spinal"]: for the any-severe-
    # spinal term, the 2nd place's x1.25); fitted on the same OOF, nested like the rest
    severe_scale: list[str] = field(default_factory=list)


def fit_stack(s: np.ndarray, yy: np.ndarray, c: float = 0.1) -> dict | None:
    """A group's stack from its members' probabilities s [M, n, k, 3] and labels yy [n, k] (-1 missing);
    None where the rows lack a severity (a logistic regression of fewer classes has other shapes)."""
    from sklearn.linear_model import LogisticRegression

    X = stack_features(s).reshape(-1, 3 * s.shape[0])
    y = yy.reshape(-1)
    keep = y >= 0
    if len(np.unique(y[keep])) < 3:
        return None
    weights = np.asarray(schema.SEVERITY_WEIGHTS, np.float64)[y[keep]]  # rows weighed as the metric weighs them
    m = LogisticRegression(C=c, max_iter=2000).fit(X[keep], y[keep], sample_weight=weights)
    return {"coef": m.coef_.round(6).tolist(), "intercept": m.intercept_.round(6).tolist()}


def _fit_group(s: np.ndarray, yy: np.ndarray, g: str, temperature: bool,
               names: list[str]) -> tuple[float, np.ndarray, float, str]:
    """The best of: each single model, and blends fitted from two starts. (loss, weights, T, name)."""
    k = s.shape[0]
    candidates = {}
    for i in range(k):
        w = np.eye(k)[i]
        candidates[f"only {names[i]}"] = (group_loss(g, blend(s, w, 1.0), yy), w, 1.0)

    def objective(theta):
        w = np.exp(theta[:k] - theta[:k].max())
        w = w / w.sum()
        t = float(np.exp(theta[k])) if temperature else 1.0
        return group_loss(g, blend(s, w, t), yy)

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


CANDIDATES = ("only", "blend", "stack", "mix")


def fit_severe_scale(p: np.ndarray, yy: np.ndarray, g: str) -> float:
    """The factor on a group's severe probability [n, k, 3] minimising its metric terms, in [0.5, 2]."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda z: group_loss(g, scale_severe(p, float(np.exp(z))), yy),
                          bounds=(np.log(0.5), np.log(2.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def fit_ensemble(oof: dict[str, np.ndarray], y: np.ndarray, temperature: bool = True,
                 folds: np.ndarray | None = None, stack: bool = True, stack_c: float = 0.1,
                 candidates: tuple[str, ...] | list[str] = ("mix",),
                 severe_scale: tuple[str, ...] | list[str] = ()) -> tuple[Ensemble, dict]:
    """Weights (and temperatures) per group minimising the metric's terms on OOF predictions.

    With `folds` (a fold id per study), each group chooses by cross-validation among `candidates`:
    "only" the best single model, "blend" the fitted blend, "stack" the logistic-regression stack,
    "mix" the mean of the blend's and the stack's probabilities (the last two need `stack` and the
    three severities among the group's labels; where they cannot be fitted, the blend stands in). Each
    is measured on every fold with what was fitted on the others, so a combination that only fits noise
    (a weak member, a few hundred studies) loses to the single model it would have perturbed. Every
    candidate more is a choice more on a few hundred studies: choosing among all four lost to the mix
    alone in nested CV on every run measured (module docstring). Returns the ensemble and, per group,
    the losses considered."""
    unknown = set(candidates) - set(CANDIDATES)
    if unknown or not candidates:
        raise ValueError(f"ensemble candidates {sorted(unknown) or '(none)'}: choose from {CANDIDATES}")
    models = sorted(oof)
    stack_all = np.stack([np.asarray(oof[m], np.float64) for m in models])
    ens = Ensemble(models=models)
    report = {}
    for g, cols in schema.GROUP_COLUMNS.items():
        s, yy = stack_all[:, :, cols], y[:, cols]
        loss, w, t, name = _fit_group(s, yy, g, temperature, models)
        rep = {"fitted": round(loss, 5)}
        if folds is not None and len(np.unique(folds)) > 1:
            singles = [group_loss(g, s[i], yy) for i in range(len(models))]
            best = int(np.argmin(singles))
            wants_stack = stack and bool({"stack", "mix"} & set(candidates))
            blended, stacked_cv = np.zeros(s.shape[1:]), np.zeros(s.shape[1:]) if wants_stack else None
            for k in np.unique(folds):
                tr, va = folds != k, folds == k
                _, wk, tk, _ = _fit_group(s[:, tr], yy[tr], g, temperature, models)
                blended[va] = blend(s[:, va], wk, tk)
                if stacked_cv is not None:
                    params = fit_stack(s[:, tr], yy[tr], stack_c)
                    if params is None:
                        stacked_cv = None
                    else:
                        stacked_cv[va] = stacked(s[:, va], params)
            options = {}
            if "only" in candidates:
                options[f"only {models[best]}"] = singles[best]
            if "blend" in candidates or stacked_cv is None:
                options["cv_blend"] = group_loss(g, blended, yy)
            if stacked_cv is not None:
                if "stack" in candidates:
                    options["cv_stack"] = group_loss(g, stacked_cv, yy)
                if "mix" in candidates:
                    options["cv_mix"] = group_loss(g, (blended + stacked_cv) / 2, yy)
            rep.update({k: round(v, 5) for k, v in options.items()})
            choice = min(options, key=options.get)
            if choice.startswith("only"):
                w, t, name = np.eye(len(models))[best], 1.0, choice
            elif choice in ("cv_stack", "cv_mix"):
                params = fit_stack(s, yy, stack_c)
                if params is not None:
                    ens.stack[g], name = params, choice[3:]
                    ens.stack_share[g] = 1.0 if choice == "cv_stack" else 0.5
        ens.weights[g] = [float(v) for v in w]
        ens.temperature[g] = float(t)
        rep["chosen"] = name
        report[g] = rep
    if severe_scale:
        pooled = ens.apply(oof)
        for g in severe_scale:
            cols = schema.GROUP_COLUMNS[g]
            ens.severe_scale[g] = round(fit_severe_scale(pooled[:, cols], y[:, cols], g), 4)
            report[g]["severe_scale"] = ens.severe_scale[g]
    return ens, report



@register("ensemble", order=90, config=EnsembleConfig)
def train_ensemble(data, run, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(EnsembleConfig(), overrides)
    unknown = set(cfg.severe_scale) - set(schema.GROUPS)
    if unknown:
        raise ValueError(f"ensemble severe_scale {sorted(unknown)}: choose from {schema.GROUPS}")
    fit_args = dict(temperature=cfg.temperature, stack=cfg.stack, stack_c=cfg.stack_c, candidates=cfg.candidates,
                    severe_scale=cfg.severe_scale)
    ids, y, fold = run_folds(data, run, rc)
    members = [m for m in list_oof(run) if m != "ensemble"]
    if not members:
        raise FileNotFoundError(f"{run}: no OOF predictions to ensemble; train some models first")
    oof = {m: read_oof(run, m, ids) for m in members}
    sol = solution_frame(ids, y)
    singles = {m: score(sol, probs_to_submission(ids, p)) for m, p in oof.items()}

    # Honest OOF: weights fitted on the other folds, applied to each held-out fold.
    nested = np.zeros((len(ids), 25, 3), np.float32)
    for k in range(rc.n_folds):
        tr, va = fold != k, fold == k
        ens_k, _ = fit_ensemble({m: p[tr] for m, p in oof.items()}, y[tr], folds=fold[tr], **fit_args)
        nested[va] = ens_k.apply({m: p[va] for m, p in oof.items()})
    ens, report = fit_ensemble(oof, y, folds=fold, **fit_args)
    in_sample = score(sol, probs_to_submission(ids, ens.apply(oof)))
    nested_score = score(sol, probs_to_submission(ids, nested))
    ens.save(Run(run).ensemble)
    write_oof(run, "ensemble", ids, nested)
    summary = {"members": members, "single_oof": {m: round(v, 4) for m, v in singles.items()},
               "ensemble_in_sample": round(in_sample, 4), "ensemble_nested_oof": round(nested_score, 4),
               "weights": ens.weights, "temperature": ens.temperature, "candidates": report}
    write_json(Run(run).report("ensemble"), summary)
    print(f"ensemble: members {members}; best single {min(singles.values()):.4f}; "
          f"fitted on all OOF {in_sample:.4f}; nested (weights from the other folds) {nested_score:.4f}")
    return {"in_sample": round(in_sample, 4), "nested_oof": round(nested_score, 4)}

