import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from lumbar import config, schema
from lumbar.commands.cli import main
from lumbar.cv import ensure_folds, make_folds, read_folds
from lumbar.data.labelmodel import LabelModel
from lumbar.metric import labels_to_solution, probs_to_submission, score, score_groups, solution_frame
from lumbar.models.prior import fit_prior, load_prior, save_prior


def _labels(n=500, seed=0):
    rng = np.random.default_rng(seed)
    model = LabelModel.default()
    return np.arange(n) + 1000, model.draw_labels(model.draw_latent(n, rng), rng)


def test_folds_deterministic_balanced_stratified():
    ids, y = _labels()
    a, b = make_folds(ids, y, 5, seed=1), make_folds(ids, y, 5, seed=1)
    assert a == b and a != make_folds(ids, y, 5, seed=2)
    fold = np.array([a[i] for i in ids])
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= 1
    severe_spinal = (y[:, :5] == 2).any(axis=1)
    per_fold = np.array([severe_spinal[fold == k].sum() for k in range(5)])
    assert per_fold.max() - per_fold.min() <= 2  # stratified: spread evenly


def test_ensure_folds_reuses_the_run_split(tmp_path):
    ids, y = _labels(50)
    first = ensure_folds(tmp_path, ids, y, 5, seed=1)
    again = ensure_folds(tmp_path, ids, y, 5, seed=99)  # seed ignored: the run already has a split
    assert first == again == read_folds(tmp_path)
    with pytest.raises(ValueError, match="have no fold"):
        ensure_folds(tmp_path, np.array([1, 2, 3]), y[:3])


@dataclass
class Toy:
    lr: float = 1e-3
    epochs: int = 2
    backbone: str = "resnet18"
    amp: bool = True
    sizes: tuple[int, ...] = (64, 64)
    note: str | None = None


def test_config_overrides_and_round_trip(tmp_path):
    cfg = config.override(Toy(), ["lr=0.5", "epochs=7", "amp=false", "sizes=32,48", "note=none", "backbone=tf_efficientnet_b0"])
    assert cfg == Toy(lr=0.5, epochs=7, backbone="tf_efficientnet_b0", amp=False, sizes=(32, 48), note=None)
    config.save(cfg, tmp_path / "c.json")
    assert config.load(Toy, tmp_path / "c.json") == cfg
    with pytest.raises(config.ConfigError, match="unknown config key 'lrr'"):
        config.override(Toy(), ["lrr=1"])
    with pytest.raises(config.ConfigError, match="epochs=many: expected int"):
        config.override(Toy(), ["epochs=many"])
    with pytest.raises(config.ConfigError, match="not key=value"):
        config.override(Toy(), ["epochs"])


def test_prior_is_weighted_optimal(tmp_path):
    ids, y = _labels(3000)
    p = fit_prior(y, smoothing=0)
    freq = np.stack([(y == c).sum(0) for c in range(3)], 1) / (y >= 0).sum(0)[:, None]
    expected = freq * np.array([1, 2, 4])
    np.testing.assert_allclose(p, expected / expected.sum(1, keepdims=True), rtol=1e-5)
    sol = solution_frame(ids, y)
    base = score_groups(sol, probs_to_submission(ids, np.broadcast_to(p, (len(ids), 25, 3))))["foraminal"]
    # any perturbation of the optimum on one column scores worse on its group's weighted loss
    for delta in ([0.02, -0.01, -0.01], [-0.02, 0.01, 0.01], [0, -0.01, 0.01]):
        q = p.copy()
        q[8] = np.clip(q[8] + delta, 1e-4, 1)
        q[8] /= q[8].sum()
        assert score_groups(sol, probs_to_submission(ids, np.broadcast_to(q, (len(ids), 25, 3))))["foraminal"] > base
    freq_sub = probs_to_submission(ids, np.broadcast_to(freq, (len(ids), 25, 3)))
    assert score_groups(sol, freq_sub)["foraminal"] > base
    save_prior(p, tmp_path / "p.json")
    np.testing.assert_allclose(load_prior(tmp_path / "p.json"), p, atol=1e-6)


def test_train_prior_and_score_cli(synth_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "prior", "--data", str(synth_dir), "--run", str(run), "--folds", "2", "smoothing=1.0"]) == 0
    oof = pd.read_csv(run / "oof" / "prior.csv")
    assert len(oof) == 250 and np.allclose(oof[list(schema.PROB_COLUMNS)].sum(1), 1)
    folds = read_folds(run)
    assert sorted(set(folds.values())) == [0, 1]
    assert (run / "prior" / "fold0.json").exists() and (run / "prior" / "all.json").exists()
    capsys.readouterr()
    assert main(["score", "--data", str(synth_dir), "--run", str(run), "--out", str(tmp_path / "score.md")]) == 0
    out = capsys.readouterr().out
    assert "| prior |" in out and "| oracle |" in out
    labels = pd.read_csv(synth_dir / "train.csv")
    expected = score(labels_to_solution(labels), oof)
    assert f"{expected:.4f}" in out
    assert main(["train", "--model", "nonsense", "--data", str(synth_dir), "--run", str(run)]) == 2


def test_an_unpredicted_oof_row_is_an_error_not_nan(tmp_path):
    import numpy as np
    import pytest

    from lumbar.train.oof import read_oof, write_oof

    probs = np.full((3, 25, 3), 1 / 3)
    write_oof(tmp_path, "m", [1, 2, 3], probs)
    np.testing.assert_allclose(read_oof(tmp_path, "m", [1, 2, 3]), probs, atol=1e-7)
    probs[1] = 0.0  # a study no fold predicted
    with pytest.raises(ValueError, match=r"never predicted.*\[1, 0\]|\[\[1, 0\]"):
        write_oof(tmp_path, "m2", [1, 2, 3], probs)
    from lumbar.layout import Run
    assert Run(tmp_path).oof("m").exists() and not Run(tmp_path).oof("m2").exists()


def test_train_again_reuses_a_finished_stage_until_its_request_or_an_earlier_stage_changes(synth_dir, tmp_path, capsys):
    """What makes `make train` resumable: a stage finished for the same data, folds and overrides is
    reused; other overrides, --retrain, or an earlier stage trained after it train it again."""
    import os
    import time

    run = tmp_path / "run"
    args = ["train", "--model", "prior", "--data", str(synth_dir), "--run", str(run), "--folds", "2"]
    assert main(args) == 0
    done = run / "prior" / "done.json"
    first = done.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "reused" in capsys.readouterr().out and done.stat().st_mtime_ns == first
    time.sleep(0.01)
    assert main(args + ["smoothing=1.0"]) == 0
    assert "reused" not in capsys.readouterr().out and done.stat().st_mtime_ns > first
    assert main(args + ["smoothing=1.0", "--retrain"]) == 0
    assert "reused" not in capsys.readouterr().out
    assert main(args + ["smoothing=1.0"]) == 0
    assert "reused" in capsys.readouterr().out

    from lumbar.train.runner import RunConfig, finished
    later = run / "slice_select" / "done.json"  # a stage after the prior: stale once the prior is newer
    later.parent.mkdir(parents=True)
    later.write_text(json.dumps({"request": {"data": str(synth_dir.resolve()), "n_folds": 2, "seed": 42, "overrides": []}}))
    os.utime(later, ns=(first, first))
    assert finished("slice_select", synth_dir, run, RunConfig(n_folds=2), []) is None
    os.utime(later, ns=(time.time_ns() + 10 ** 9,) * 2)
    assert finished("slice_select", synth_dir, run, RunConfig(n_folds=2), []) == later
    assert finished("slice_select", synth_dir, run, RunConfig(n_folds=2, seed=1), []) is None


def test_a_run_split_into_other_folds_is_refused_with_what_to_do(tmp_path):
    ids = np.arange(100, 140)
    y = np.zeros((40, 25), np.int64)
    ensure_folds(tmp_path, ids, y, 5)
    with pytest.raises(ValueError, match=r"split into 5 folds and 2 were asked for.*RUN=\.\.\."):
        ensure_folds(tmp_path, ids, y, 2)
    assert len(set(ensure_folds(tmp_path, ids, y, 5).values())) == 5
