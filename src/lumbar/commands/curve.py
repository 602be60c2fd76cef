"""The learning curve: is the stack limited by data or by design, and what will it reach on the real
training set (1,975 studies)?

`python -m lumbar curve --data DIR --sizes 50 100 200 400` trains every stage (the tiny presets, `--folds`
folds) on nested subsets of DIR's training studies (each subset holds the smaller ones), predicts the
same unseen test studies with each (the kernel's engine, every model's own submission from the same
pass), and scores them. Per model and for the ensemble the score against n is fitted as
s(n) = a + b n^-c and projected to 1,975 studies; the interval is the projection refitted on bootstrap
resamples of the test studies (the same resample at every size, so sizes stay paired). It holds the test
sample's noise, not the training seed's: a second seed (`--seed`) is the check on that. Each stage's
training time is fitted as t = k n^e with the measured exponent (scaling.exponent).

Everything lands under --work (one folder per size: its data view, run, weights, submissions) and is
reused: a killed run resumes at the stage it was in; `--fit-only` refits from what is there.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import write_figure, write_json, write_text
from ..layout import Run
from .scaling import REAL_TRAIN, exponent

ENSEMBLE = "ensemble"
TEST_FILES = ("test_series_descriptions.csv", "sample_submission.csv", "test_labels.csv", "oracle.csv")
TRAIN_FILES = ("train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv")


@dataclass
class CurveConfig:
    sizes: list = field(default_factory=lambda: [50, 100, 200, 400])  # training studies, nested
    folds: int = 2  # CV folds of every stage (5 in `make train`; fewer keeps the largest size affordable)
    seed: int = 0  # which studies each subset holds, and the folds
    target: int = REAL_TRAIN  # the projection's n: the real training set
    target_folds: int = 5  # `make train`'s folds: each fold model learns from (k-1)/k of the studies
    fit_from: int = 0  # fit the sizes from this n on: below where a model starts to learn its score is flat at
    # the prior's, which no power law describes (the CPU presets on the real profile: below ~100 studies)
    n_boot: int = 1000
    workers: int = 1  # predict's input workers
    stages: list = field(default_factory=list)  # empty: every registered stage
    overrides: dict = field(default_factory=dict)  # {stage: ["key=value", ...]} over the tiny presets


def stage_overrides(items: list[str]) -> dict[str, list[str]]:
    """["multitask:epochs=3", ...] (the command line's --set) as {stage: ["key=value", ...]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        stage, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            raise SystemExit(f"--set {item!r}: expected STAGE:KEY=VALUE, e.g. multitask:epochs=3")
        out.setdefault(stage, []).append(kv)
    return out


def equivalent_n(target: int, target_folds: int, folds: int) -> float:
    """The n of a `folds`-fold curve whose fold models learn from as many studies as `target_folds` folds
    of `target` studies do ((k-1)/k of them each)."""
    return target * (1 - 1 / target_folds) / (1 - 1 / folds)


def nested_subsets(study_ids, sizes, seed: int) -> dict[int, list[int]]:
    """{n: the first n studies of one seeded permutation}: each subset contains every smaller one."""
    ids = sorted(int(s) for s in study_ids)
    if max(sizes) > len(ids):
        raise ValueError(f"the largest size, {max(sizes)}, is more than the {len(ids)} training studies there are")
    order = np.random.default_rng(seed).permutation(ids)
    return {int(n): sorted(int(s) for s in order[:n]) for n in sorted(sizes)}


def write_view(train_root: Path, test_root: Path, ids: list[int], out: Path) -> Path:
    """A competition folder holding `ids` of train_root's training studies and all of test_root's test
    studies: filtered CSVs, images linked (nothing copied)."""
    out.mkdir(parents=True, exist_ok=True)
    keep = set(ids)
    for name in TRAIN_FILES:
        frame = pd.read_csv(train_root / name)
        frame[frame["study_id"].astype(int).isin(keep)].to_csv(out / name, index=False)
    for name in TEST_FILES:
        if (test_root / name).exists():
            shutil.copyfile(test_root / name, out / name)
    if (train_root / "synth_meta.json").exists():
        shutil.copyfile(train_root / "synth_meta.json", out / "synth_meta.json")
    images = out / "train_images"
    images.mkdir(exist_ok=True)
    for s in ids:
        link = images / str(s)
        if not link.exists():
            os.symlink((train_root / "train_images" / str(s)).resolve(), link)
    test_link = out / "test_images"
    if not test_link.exists():
        os.symlink((test_root / "test_images").resolve(), test_link)
    return out


def fit_power(n, s, floor: float = 0.0) -> tuple[float, float, float] | None:
    """(a, b, c) of s = a + b n^-c by least squares, with a >= floor (the oracle's score where it is known,
    the metric's bound: no amount of data beats it), b >= 0, 0.05 <= c <= 3; None if it does not converge."""
    from scipy.optimize import curve_fit

    n, s = np.asarray(n, np.float64), np.asarray(s, np.float64)
    b0 = max(float(s[0] - s[-1]), 1e-3) * float(n[0]) ** 0.5
    a0 = max(floor + 1e-6, float(s.min()) - 0.1 * abs(float(s[0] - s[-1])))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, _ = curve_fit(lambda x, a, b, c: a + b * x ** -c, n, s, p0=(a0, b0, 0.5),
                             bounds=([floor, 0.0, 0.05], [np.inf, np.inf, 3.0]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return float(p[0]), float(p[1]), float(p[2])


def power(p: tuple[float, float, float], n) -> np.ndarray:
    a, b, c = p
    return a + b * np.asarray(n, np.float64) ** -c


class Curve:
    """One curve's work folder: per size its data view, run, weights and submissions."""

    def __init__(self, data: str | Path, test: str | Path | None, work: str | Path, cfg: CurveConfig):
        from ..data.catalog import find_root

        self.data, self.test = find_root(data), find_root(test or data)
        self.work, self.cfg = Path(work), cfg
        self.cache = self.work / "cache"  # decoded series, features, crops: shared by every size

    def size_dir(self, n: int) -> Path:
        return self.work / f"n{n:05d}"

    def subsets(self) -> dict[int, list[int]]:
        from ..data.catalog import read_labels

        return nested_subsets(read_labels(self.data)["study_id"], self.cfg.sizes, self.cfg.seed)

    def train_size(self, n: int, ids: list[int]) -> dict[str, float]:
        """Every stage on the view of `ids`; {stage: seconds} (a stage trained before keeps its seconds)."""
        from ..train.runner import RunConfig, stages, takes, train

        d = self.size_dir(n)
        view = write_view(self.data, self.test, ids, d / "data")
        run = d / "run"
        times_path = d / "seconds.json"
        times = json.loads(times_path.read_text()) if times_path.exists() else {}
        for stage in self.cfg.stages or stages():
            if Run(run).done(stage).exists() and stage in times:
                continue
            t = time.time()
            overrides = ([f"cache_dir={self.cache}"] if takes(stage, "cache_dir") else []) + list(self.cfg.overrides.get(stage, []))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train(stage, view, run, RunConfig(n_folds=self.cfg.folds, seed=self.cfg.seed), overrides)
            times[stage] = round(time.time() - t, 2)
            write_json(times_path, times)
            print(f"curve: n={n} {stage} trained in {times[stage]:.0f}s", flush=True)
        return times

    def predict_size(self, n: int) -> Path:
        """The size's weights on the test studies: submission.csv (the ensemble) and per_model/<model>.csv."""
        from ..infer.engine import predict
        from ..infer.settings import PredictConfig
        from ..train.export import export_weights

        d = self.size_dir(n)
        sub = d / "submission.csv"
        if sub.exists() and (d / "per_model").exists():
            return d
        export_weights(d / "run", d / "data", d / "weights")
        predict(d / "data", d / "weights", d / "submission.tmp.csv",
                PredictConfig(workers=self.cfg.workers, cache_dir=str(self.cache), per_model_dir=str(d / "per_model")))
        os.replace(d / "submission.tmp.csv", sub)  # written last: its presence says the size is done
        return d

    def terms(self, n: int) -> dict[str, np.ndarray]:
        """{model or 'ensemble', plus 'prior' and 'oracle': per-study metric terms [studies, 4, 2]} on the test labels."""
        from ..infer.submission import submission_frame
        from ..metric import labels_to_array, study_terms, submission_to_probs
        from ..models.prior import load_prior
        from ..layout import WeightsLayout
        from .scoring import read_oracle

        d = self.size_dir(n)
        labels = pd.read_csv(self.test / "test_labels.csv")
        ids, y = labels["study_id"].tolist(), labels_to_array(labels)
        sub = pd.read_csv(d / "submission.csv")
        frames = {ENSEMBLE: sub, **{p.stem: pd.read_csv(p) for p in sorted((d / "per_model").glob("*.csv"))}}
        frames["prior"] = submission_frame(list(sub["row_id"]), {}, load_prior(d / "weights" / WeightsLayout.PRIOR))
        oracle = read_oracle(self.test)
        if oracle is not None:
            frames["oracle"] = oracle
        return {m: study_terms(y, submission_to_probs(f, ids)) for m, f in frames.items()}

    def run(self) -> dict:

        subsets = self.subsets()
        write_json(self.work / "subsets.json", {str(n): ids for n, ids in subsets.items()})
        for n, ids in subsets.items():
            t = time.time()
            self.train_size(n, ids)
            self.predict_size(n)
            print(f"curve: n={n} done ({time.time() - t:.0f}s this call)", flush=True)
        return self.fit()

    def fit(self) -> dict:
        """Scores with intervals per size, the fitted curves and their projections, the stage exponents."""
        from ..metric import score_from_terms
        from .scoring import interval, resamples

        sizes = [n for n in sorted(self.cfg.sizes) if (self.size_dir(n) / "submission.csv").exists()]
        if not sizes:
            raise FileNotFoundError(f"{self.work}: no size predicted yet; run the curve first")
        terms = {n: self.terms(n) for n in sizes}
        n_test = len(next(iter(terms[sizes[0]].values())))
        counts = resamples(n_test, self.cfg.n_boot, self.cfg.seed)
        models = sorted(set.intersection(*(set(t) for t in terms.values())) - {"oracle"})
        out: dict = {"config": asdict(self.cfg), "data": str(self.data), "test": str(self.test),
                     "test_studies": n_test, "sizes": sizes, "models": {}, "seconds": {}}
        oracle = float(score_from_terms(terms[sizes[-1]]["oracle"])) if "oracle" in terms[sizes[-1]] else None
        prior = float(score_from_terms(terms[sizes[-1]]["prior"]))
        out["prior"], out["oracle"] = prior, oracle
        for m in models:
            full = np.array([float(score_from_terms(terms[n][m])) for n in sizes])
            boot = np.stack([score_from_terms(terms[n][m], counts) for n in sizes], 1)  # [n_boot, sizes]
            rec: dict = {"score": full.tolist(), "interval": [interval(boot[:, i]) for i in range(len(sizes))]}
            if oracle is not None:
                rec["gap_closed"] = ((prior - full) / (prior - oracle)).tolist()
            floor = oracle or 0.0
            use = [i for i, n in enumerate(sizes) if n >= self.cfg.fit_from]
            fn = [sizes[i] for i in use]
            # The prior is class frequencies: it converges to them, not toward the oracle; no curve.
            p = fit_power(fn, full[use], floor) if len(use) >= 3 and m != "prior" else None
            if p is not None:
                proj = [power(q, self.cfg.target) for q in (fit_power(fn, b[use], floor) for b in boot) if q is not None]
                lo, hi = interval(np.asarray(proj, np.float64))
                # Each fold model saw (k-1)/k of n: `make train`'s 5 folds at the target are this curve's n_eq.
                n_eq = equivalent_n(self.cfg.target, self.cfg.target_folds, self.cfg.folds)
                proj_eq = [power(q, n_eq) for q in (fit_power(fn, b[use], floor) for b in boot) if q is not None]
                rec.update({"fit": {"a": p[0], "b": p[1], "c": p[2]}, "projected": float(power(p, self.cfg.target)),
                            "projected_interval": [lo, hi], "fits_converged": len(proj),
                            "fitted_sizes": fn, "n_equivalent": round(n_eq), "projected_equivalent": float(power(p, n_eq)),
                            "projected_equivalent_interval": list(interval(np.asarray(proj_eq, np.float64)))})
                if oracle is not None:
                    rec["projected_gap_closed"] = (prior - rec["projected"]) / (prior - oracle)
                    rec["projected_gap_closed_interval"] = [(prior - hi) / (prior - oracle), (prior - lo) / (prior - oracle)]
                    elo, ehi = rec["projected_equivalent_interval"]
                    rec["projected_equivalent_gap_closed"] = (prior - rec["projected_equivalent"]) / (prior - oracle)
                    rec["projected_equivalent_gap_closed_interval"] = [(prior - ehi) / (prior - oracle),
                                                                       (prior - elo) / (prior - oracle)]
            out["models"][m] = rec
        for n in sizes:
            path = self.size_dir(n) / "seconds.json"
            for stage, s in (json.loads(path.read_text()) if path.exists() else {}).items():
                out["seconds"].setdefault(stage, {})[str(n)] = s
        for stage, by_n in out["seconds"].items():
            pts = [(int(k), v) for k, v in by_n.items()]
            if len(pts) >= 2:
                e = exponent(pts)
                n_max, t_max = max(pts)
                by_n["exponent"] = round(e, 2)
                by_n["projected_s"] = round(t_max * (self.cfg.target / n_max) ** e, 1)
        write_json(self.work / "curve.json", out)
        return out


def refit_with_point(res: dict, model: str, n: int, folds: int, score: float, interval: tuple[float, float],
                     n_boot: int = 1000, seed: int = 0, oracle: float | None = None) -> dict:
    """The curve's fit of `model` again with one more measured point (a run of n studies and `folds` folds,
    scored on the curve's test studies with its 95% interval), beside the same fit without it.

    The curve's own intervals resample the test studies of every size at once; its per-study predictions
    live in its work folder, which a later machine may not have. Here both fits draw each point from a
    normal of its interval's width instead (independent points: the shared test studies' correlation is
    lost), so the two are compared on the same footing; the study-resampled original stays in `res`.
    `oracle`: the floor and the gap's end instead of the curve's own (the metric's bound on the same test
    studies, where the curve was fitted above the posterior's score: before issue 42's fix)."""
    from .scoring import interval as span

    cfg, m = res["config"], res["models"][model]
    floor, prior = (oracle if oracle is not None else res.get("oracle")) or 0.0, res["prior"]
    n_at = equivalent_n(n, folds, cfg["folds"])  # the curve's n whose fold models saw as many studies
    n_eq = equivalent_n(cfg["target"], cfg.get("target_folds", 5), cfg["folds"])
    keep = [i for i, k in enumerate(res["sizes"]) if k >= cfg.get("fit_from", 0)]
    pts = [(float(res["sizes"][i]), m["score"][i], m["interval"][i]) for i in keep]
    rng = np.random.default_rng(seed)

    def fitted(points) -> dict:
        ns = np.array([p[0] for p in points])
        mean = np.array([p[1] for p in points])
        sd = np.array([(p[2][1] - p[2][0]) / 3.92 for p in points])
        p0 = fit_power(ns, mean, floor)
        if p0 is None:
            raise ValueError(f"curve {model}: the power law does not fit its points {list(zip(ns, mean))}")
        fits = [q for q in (fit_power(ns, mean + sd * rng.standard_normal(len(ns)), floor) for _ in range(n_boot))
                if q is not None]
        out = {"fit": dict(zip("abc", p0)), "fits_converged": len(fits)}
        for key, at in (("at_run", n_at), ("projected", cfg["target"]), ("projected_equivalent", n_eq)):
            lo, hi = span(np.array([power(q, at) for q in fits]))
            out[key] = float(power(p0, at))
            out[f"{key}_interval"] = [lo, hi]
            if floor and prior > floor:
                out[f"{key}_gap_closed"] = (prior - out[key]) / (prior - floor)
                out[f"{key}_gap_closed_interval"] = [(prior - hi) / (prior - floor), (prior - lo) / (prior - floor)]
        return out

    before = fitted(pts)
    after = fitted(pts + [(n_at, float(score), tuple(interval))])
    residual = float(score) - before["at_run"]
    return {"model": model, "oracle": floor, "run": {"n": n, "folds": folds, "curve_n": n_at, "score": float(score),
                                                     "interval": list(interval)},
            "without": before, "with": after, "measured_minus_projected": residual}


def refit_main(out: str | Path, measured: str | Path) -> dict:
    """`lumbar curve --refit-with FILE`: the curve in `out` (curve.json) refitted with a run's measured scores
    ({"n", "folds", "models": {model: {"score", "interval"}}}); writes refit.json and refit.md beside it."""
    out = Path(out)
    res = json.loads((out / "curve.json").read_text())
    run = json.loads(Path(measured).read_text())
    refits = {m: refit_with_point(res, m, run["n"], run["folds"], v["score"], tuple(v["interval"]),
                                  oracle=run.get("oracle"))
              for m, v in run["models"].items() if m in res["models"] and "fit" in res["models"][m]}
    if not refits:
        raise SystemExit(f"{measured}: none of its models ({', '.join(run['models'])}) has a fitted curve in "
                         f"{out / 'curve.json'}")

    def cell(d: dict, key: str) -> str:
        lo, hi = d[f"{key}_interval"]
        gap = d.get(f"{key}_gap_closed")
        g = f" ({100 * gap:.0f}% [{100 * d[f'{key}_gap_closed_interval'][0]:.0f}%, " \
            f"{100 * d[f'{key}_gap_closed_interval'][1]:.0f}%])" if gap is not None else ""
        return f"{d[key]:.4f} [{lo:.4f}, {hi:.4f}]{g}"

    target, k = res["config"]["target"], res["config"].get("target_folds", 5)
    lines = [f"| model | measured at n={run['n']} ({run['folds']} folds) | the curve there | measured − curve "
             f"| projected at {target} ({res['config']['folds']} folds): without, with the point "
             f"| at {target} with {k} folds: without, with |", "|---|---|---|---|---|---|"]
    prior, floor = res["prior"], next(iter(refits.values()))["oracle"]
    for m, r in refits.items():
        lo, hi = r["run"]["interval"]
        g = f" ({(prior - r['run']['score']) / (prior - floor):.0%})" if floor and prior > floor else ""
        lines.append(f"| {m} | {r['run']['score']:.4f} [{lo:.4f}, {hi:.4f}]{g} | {cell(r['without'], 'at_run')} | "
                     f"{r['measured_minus_projected']:+.4f} | {cell(r['without'], 'projected')}; "
                     f"{cell(r['with'], 'projected')} | {cell(r['without'], 'projected_equivalent')}; "
                     f"{cell(r['with'], 'projected_equivalent')} |")
    lines.append("\nBoth fits draw each point from a normal of its 95% interval (the curve's per-study predictions "
                 "are not needed): compare 'without' and 'with', not either with curve.json's study-resampled "
                 "intervals.")
    lines.append(f"The gap: from the curve's prior {prior:.4f} to " + (
        f"the metric's bound on the same test studies, {floor:.4f} (given with the point; it is also the fits' floor)"
        if run.get("oracle") is not None else f"the curve's oracle {floor:.4f} (its fits' floor)") + ".")
    write_json(out / "refit.json", refits)
    write_text(out / "refit.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return refits


def table(res: dict) -> str:
    """results.md: scores per size with intervals, the fits and projections, stage seconds."""
    sizes, target = res["sizes"], res["config"]["target"]
    gap = res.get("oracle") is not None
    folds, tfolds = res["config"]["folds"], res["config"].get("target_folds", 5)
    head = ("| model | " + " | ".join(f"n={n}" for n in sizes) + f" | fit a + b·n^-c | projected at {target} "
            f"({folds} folds) | {target} with {tfolds} folds (this curve's n ≈ {equivalent_n(target, tfolds, folds):.0f}) |")
    lines = [head, "|" + "---|" * (len(sizes) + 4)]
    for m, r in sorted(res["models"].items(), key=lambda kv: kv[1]["score"][-1]):
        cells = [f"{s:.4f} [{lo:.4f}, {hi:.4f}]" + (f" ({g:.0%})" if gap else "")
                 for s, (lo, hi), g in zip(r["score"], r["interval"], r.get("gap_closed", [0] * len(sizes)))]
        if "fit" in r:
            f = r["fit"]
            fit = f"{f['a']:.3f} + {f['b']:.3f}·n^-{f['c']:.2f}"
            lo, hi = r["projected_interval"]
            proj = f"{r['projected']:.4f} [{lo:.4f}, {hi:.4f}]"
            lo, hi = r["projected_equivalent_interval"]
            proj_eq = f"{r['projected_equivalent']:.4f} [{lo:.4f}, {hi:.4f}]"
            if gap:
                glo, ghi = r["projected_gap_closed_interval"]
                proj += f" ({r['projected_gap_closed']:.0%} [{glo:.0%}, {ghi:.0%}])"
                glo, ghi = r["projected_equivalent_gap_closed_interval"]
                proj_eq += f" ({r['projected_equivalent_gap_closed']:.0%} [{glo:.0%}, {ghi:.0%}])"
        else:
            fit, proj, proj_eq = "(needs 3 sizes)", "", ""
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {fit} | {proj} | {proj_eq} |")
    lines += ["", f"prior {res['prior']:.4f}" + (f", oracle {res['oracle']:.4f} (gap closed in parentheses)" if gap else "")
              + f"; {res['test_studies']} test studies; 95% intervals over study resamples.", "",
              "| stage | " + " | ".join(f"n={n}, s" for n in sizes) + f" | exponent | projected at {target}, s |",
              "|" + "---|" * (len(sizes) + 3)]
    for stage, by_n in res["seconds"].items():
        lines.append(f"| {stage} | " + " | ".join(f"{by_n.get(str(n), float('nan')):.0f}" for n in sizes)
                     + f" | {by_n.get('exponent', '')} | {by_n.get('projected_s', '')} |")
    return "\n".join(lines) + "\n"


def figure(res: dict, out: str | Path) -> Path:
    """curve.png: score against n per model (intervals, fitted curve out to the target) and each stage's
    seconds against n, both on log axes."""
    from .plots import pyplot

    plt = pyplot()
    sizes, target = np.asarray(res["sizes"], np.float64), res["config"]["target"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    grid = np.geomspace(sizes.min(), target, 100)
    for m, r in sorted(res["models"].items()):
        lo, hi = np.asarray(r["interval"]).T
        s = np.asarray(r["score"])
        line = ax.errorbar(sizes, s, yerr=[s - lo, hi - s], marker="o", capsize=3, label=m, lw=0 if "fit" in r else 1)
        if "fit" in r:
            f = r["fit"]
            ax.plot(grid, power((f["a"], f["b"], f["c"]), grid), color=line[0].get_color(), lw=1)
            ax.errorbar([target], [r["projected"]], yerr=[[r["projected"] - r["projected_interval"][0]],
                                                          [r["projected_interval"][1] - r["projected"]]],
                        color=line[0].get_color(), marker="*", ms=10, capsize=3)
    ax.axhline(res["prior"], color="grey", ls=":", label="prior")
    if res.get("oracle") is not None:
        ax.axhline(res["oracle"], color="black", ls="--", label="oracle")
    ax.set_xscale("log")
    ax.set_xlabel("training studies")
    ax.set_ylabel(f"score on {res['test_studies']} unseen test studies (lower is better)")
    ax.set_title("learning curve (star: projection)")
    ax.legend(fontsize=8)
    for stage, by_n in res["seconds"].items():
        pts = sorted((int(k), v) for k, v in by_n.items() if k.isdigit())
        bx.plot(*zip(*pts), marker="o", label=f"{stage} (n^{by_n.get('exponent', '?')})")
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("training studies")
    bx.set_ylabel("training seconds")
    bx.set_title("each stage's training time")
    bx.legend(fontsize=8)
    fig.tight_layout()
    return write_figure(out, fig, 110)


def main(data, test, work, out, cfg: CurveConfig, fit_only: bool = False) -> dict:
    curve = Curve(data, test, work, cfg)
    res = curve.fit() if fit_only else curve.run()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "curve.json", res)
    write_text(out / "results.md", table(res))
    figure(res, out / "curve.png")
    print(table(res))
    return res
