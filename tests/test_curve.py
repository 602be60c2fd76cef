"""The learning curve (lumbar.commands.curve): nested subsets, the folder views, the power-law fit and its
projection, and the whole command on a small folder (slow)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lumbar.commands.curve import (Curve, CurveConfig, fit_power, figure, nested_subsets, power, refit_with_point, table,
                                  write_view)
from lumbar.data.catalog import load_studies
from test_inference import assert_complete
from tiny_stack import TINY_MULTITASK

ROOT = Path(__file__).resolve().parents[1]


def test_subsets_are_nested_and_seeded():
    ids = list(range(1000, 1100))
    subs = nested_subsets(ids, [40, 10, 20], seed=3)
    assert list(subs) == [10, 20, 40] and [len(v) for v in subs.values()] == [10, 20, 40]
    assert set(subs[10]) < set(subs[20]) < set(subs[40]) <= set(ids)
    assert subs == nested_subsets(ids, [10, 20, 40], seed=3)
    assert subs[10] != nested_subsets(ids, [10], seed=4)[10]
    with pytest.raises(ValueError, match="more than the 100 training studies"):
        nested_subsets(ids, [101], seed=0)


def test_the_power_law_fit_recovers_its_curve_and_respects_the_oracle():
    n = np.array([50, 100, 200, 400])
    a, b, c = fit_power(n, power((0.30, 2.0, 0.5), n))
    assert (a, b, c) == pytest.approx((0.30, 2.0, 0.5), rel=1e-3)
    assert float(power((a, b, c), 1975)) == pytest.approx(0.30 + 2.0 * 1975 ** -0.5, rel=1e-4)
    bounded = fit_power(n, power((0.30, 2.0, 0.5), n), floor=0.35)  # the Bayes score bounds the asymptote
    assert bounded[0] >= 0.35 - 1e-12


def test_a_view_holds_its_training_studies_and_every_test_study(synth_copy, tmp_path):
    every = sorted(s.study_id for s in load_studies(synth_copy, "train"))
    keep = every[:4]
    view = write_view(synth_copy, synth_copy, keep, tmp_path / "view")
    assert sorted(s.study_id for s in load_studies(view, "train")) == keep
    assert sorted(s.study_id for s in load_studies(view, "test")) == sorted(s.study_id for s in load_studies(synth_copy, "test"))
    assert set(pd.read_csv(view / "train_label_coordinates.csv")["study_id"]) <= set(keep)
    assert (view / "train_images" / str(keep[0])).is_symlink()  # linked, not copied


@pytest.mark.slow
def test_the_curve_trains_predicts_fits_and_resumes(synth_dir, tmp_path):
    # Without superres and sequence (the curve treats every stage alike; the suite's time is short).
    cfg = CurveConfig(sizes=[6, 8, 10], folds=2, n_boot=200, workers=0,
                      stages=["prior", "slice_select", "crops", "multitask", "ensemble"], overrides={
                          "slice_select": ["workers=1", "levels_steps=20", "rank_epochs=5"],
                          "crops": ["sag_size=64", "axial_size=48"], "multitask": TINY_MULTITASK})
    curve = Curve(synth_dir, None, tmp_path / "work", cfg)
    res = curve.run()
    assert res["sizes"] == [6, 8, 10] and res["test_studies"] == 3
    assert {"multitask", "ensemble", "prior"} <= set(res["models"])
    for d in (curve.size_dir(n) for n in res["sizes"]):
        for sub in [d / "submission.csv", *(d / "per_model").glob("*.csv")]:
            assert_complete(sub, synth_dir)
    for m in ("multitask", "ensemble"):
        r = res["models"][m]
        assert all(lo <= s <= hi for s, (lo, hi) in zip(r["score"], r["interval"]))
        assert r["projected"] >= res["oracle"] - 1e-9  # bounded by the Bayes score
        assert r["projected_interval"][0] <= r["projected"] <= r["projected_interval"][1]
    assert "fit" not in res["models"]["prior"]
    # each model's own submission is what that model alone predicts, not the ensemble again
    d = curve.size_dir(10)
    assert not np.allclose(pd.read_csv(d / "per_model" / "multitask.csv").iloc[:, 1:],
                           pd.read_csv(d / "submission.csv").iloc[:, 1:])
    assert set(res["seconds"]) == {"prior", "slice_select", "crops", "multitask", "ensemble"}
    assert all({"6", "8", "10", "exponent", "projected_s"} <= set(v) for v in res["seconds"].values())

    # Resumed: nothing is trained or predicted again.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*") if p.name in ("submission.csv", "seconds.json")}
    again = curve.run()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["models"]["ensemble"]["score"] == res["models"]["ensemble"]["score"]

    text = table(res)
    assert "projected at 1975" in text and "| ensemble |" in text
    png = figure(res, tmp_path / "curve.png")
    assert png.stat().st_size > 10_000
    assert json.loads((tmp_path / "work" / "curve.json").read_text())["sizes"] == [6, 8, 10]


def test_recipe_scores_a_variant_against_the_base_or_another_variant(synth_dir, tmp_path):
    """bench/recipe.py --score-only: the paired difference per model is the metric's difference of the two
    submissions (oracle against uniform: negative), and a variant against an identical one is 0 exactly."""
    import importlib.util

    from lumbar.metric import labels_to_array, probs_to_submission, score, solution_frame, submission_to_probs

    spec = importlib.util.spec_from_file_location("recipe", ROOT / "bench" / "recipe.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    labels = pd.read_csv(synth_dir / "test_labels.csv")
    ids, y = labels["study_id"].tolist(), labels_to_array(labels)
    oracle = submission_to_probs(pd.read_csv(synth_dir / "oracle.csv"), ids)
    uniform = np.full_like(oracle, 1 / 3)

    def folder(name, probs):
        (tmp_path / name / "per_model").mkdir(parents=True)
        for rel in ("submission.csv", "per_model/multitask.csv"):
            probs_to_submission(ids, probs).to_csv(tmp_path / name / rel, index=False)
        return tmp_path / name

    base, _, _ = folder("base", uniform), folder("work/oracle", oracle), folder("work/same", uniform)
    args = ["--base", str(base), "--test", str(synth_dir), "--work", str(tmp_path / "work"), "--out",
            str(tmp_path / "out"), "--retrain", "multitask", "ensemble", "--score-only"]
    assert recipe.main([*args, "--name", "oracle"]) == 0
    rows = json.loads((tmp_path / "out" / "oracle.json").read_text())["rows"]
    want = score(solution_frame(ids, y), probs_to_submission(ids, oracle)) - \
        score(solution_frame(ids, y), probs_to_submission(ids, uniform))
    assert {r["model"] for r in rows} == {"ensemble", "multitask"} and want < 0
    for r in rows:
        assert abs(r["difference"] - want) < 1e-9 and r["low"] <= r["difference"] <= r["high"] < 0
        groups = r["groups"]  # the metric's groups of each side, the overall one its score
        assert abs(groups["variant"]["overall"] - groups["reference"]["overall"] - want) < 1e-9
        assert set(groups["variant"]) == {"spinal", "foraminal", "subarticular", "any_severe_spinal", "overall"}
    assert recipe.main([*args, "--name", "same", "--against", str(base)]) == 0
    same = json.loads((tmp_path / "out" / "same_vs_base.json").read_text())
    assert [(r["difference"], r["low"], r["high"]) for r in same["rows"]] == [(0.0, 0.0, 0.0)] * 2
    assert "scored against" in same["head"]


def _curve_result(p=(0.36, 4.4, 0.65), sizes=(25, 50, 100, 200, 400), half=0.02) -> dict:
    scores = [float(power(p, n)) for n in sizes]
    return {"config": {"folds": 2, "target": 1975, "target_folds": 5, "fit_from": 0}, "sizes": list(sizes),
            "prior": 0.81, "oracle": 0.36,
            "models": {"ensemble": {"score": scores, "interval": [[s - half, s + half] for s in scores],
                                    "fit": dict(zip("abc", p))}}}


def test_a_measured_point_refits_the_curve_where_it_was_measured():
    res, p = _curve_result(), (0.36, 4.4, 0.65)
    on = refit_with_point(res, "ensemble", 1975, 2, float(power(p, 1975)), (0.38, 0.40), n_boot=200)
    assert on["run"]["curve_n"] == 1975  # the curve's own folds: its own n
    assert abs(on["measured_minus_projected"]) < 1e-3  # on the curve: nothing to move
    assert abs(on["with"]["projected"] - on["without"]["projected"]) < 1e-3
    lo, hi = on["with"]["projected_interval"]
    assert lo < on["with"]["projected"] < hi
    # worse than projected at 1,975: the projection rises toward it, and the gap closed falls
    off = refit_with_point(res, "ensemble", 1975, 2, float(power(p, 1975)) + 0.05, (0.42, 0.44), n_boot=200)
    assert off["measured_minus_projected"] > 0.04
    assert off["with"]["projected"] > off["without"]["projected"] + 0.02
    assert off["with"]["projected_gap_closed"] < off["without"]["projected_gap_closed"]
    # a 5-fold run's fold models saw 4/5 of its studies: it sits at the 2-fold curve's n = 1975 * 0.8 / 0.5
    five = refit_with_point(res, "ensemble", 1975, 5, float(power(p, 3160)), (0.37, 0.39), n_boot=50)
    assert five["run"]["curve_n"] == 3160 and abs(five["measured_minus_projected"]) < 1e-3


def test_the_refit_command_writes_its_table_beside_the_curve(tmp_path):
    from lumbar.commands.cli import main

    res = _curve_result()
    (tmp_path / "curve.json").write_text(json.dumps(res))
    run = {"n": 1975, "folds": 2, "models": {"ensemble": {"score": 0.45, "interval": [0.43, 0.47]},
                                             "not_on_the_curve": {"score": 0.5, "interval": [0.4, 0.6]}}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert main(["curve", "--out", str(tmp_path), "--refit-with", str(tmp_path / "run.json")]) == 0
    md = (tmp_path / "refit.md").read_text()
    assert "| ensemble | 0.4500 [0.4300, 0.4700] (80%) |" in md and "not_on_the_curve" not in md  # (0.81-0.45)/(0.81-0.36)
    refit = json.loads((tmp_path / "refit.json").read_text())["ensemble"]
    assert refit["measured_minus_projected"] > 0.05  # 0.45 against ~0.39 on the curve
    assert refit["oracle"] == 0.36 and "the curve's oracle 0.3600" in md


def test_a_point_that_carries_the_metrics_bound_refits_above_it_not_above_the_posterior(tmp_path):
    """A curve fitted above the posterior's score (0.36) cannot follow a run that beats it; the point's
    own bound (0.30, the weighted optimum on the same studies) becomes the floor and the gap's end."""
    from lumbar.commands.cli import main

    (tmp_path / "curve.json").write_text(json.dumps(_curve_result()))
    run = {"n": 1975, "folds": 2, "oracle": 0.30, "models": {"ensemble": {"score": 0.34, "interval": [0.33, 0.35]}}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert main(["curve", "--out", str(tmp_path), "--refit-with", str(tmp_path / "run.json")]) == 0
    refit = json.loads((tmp_path / "refit.json").read_text())["ensemble"]
    assert refit["oracle"] == 0.30
    assert refit["with"]["projected"] < 0.36 <= refit["without"]["projected"] + 1e-9  # below the old floor now
    assert refit["with"]["fit"]["a"] >= 0.30 - 1e-9
    md = (tmp_path / "refit.md").read_text()
    assert "| ensemble | 0.3400 [0.3300, 0.3500] (92%) |" in md and "the metric's bound on the same test studies, 0.3000" in md
    held = refit_with_point(_curve_result(), "ensemble", 1975, 2, 0.34, (0.33, 0.35), n_boot=100)  # no bound given
    assert held["with"]["projected"] >= 0.36 - 1e-9
