import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_MULTITASK
from lumbar.cv import read_folds
from lumbar.models.multitask import COLUMN_CROP
from lumbar.models.prior import fit_prior
from lumbar.preprocess.crops import CROP_NAMES, CROPS
from lumbar.train.oof import read_oof
from lumbar.train.runner import RunConfig, train

TINY = [*TINY_MULTITASK, "epochs=2"]


def _cli(run, data, cache, *extra, folds=2):
    return [sys.executable, "-m", "lumbar", "train", "--model", "multitask", "--data", str(data), "--run", str(run),
            "--folds", str(folds), f"cache_dir={cache}", *TINY, *extra]


def _fresh_run(run, tmp_path):
    """A new run directory holding the trained stages a multitask run needs, and no multitask state."""
    fresh = tmp_path / "run"
    fresh.mkdir()
    for item in ("folds.csv", "slice_select", "crops", "superres"):
        src = run / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, fresh / item)
    return fresh


@pytest.fixture(scope="module")
def trained(stage_one, synth_dir, tmp_path_factory):
    """Its own copy of the session's stage-one run (never written into: other fixtures copy it)."""
    src, cache, _ = stage_one
    run = tmp_path_factory.mktemp("multitask") / "run"
    shutil.copytree(src, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = train("superres", synth_dir, run, RunConfig(n_folds=2), [f"cache_dir={cache}", "epochs=2", "channels=16",
                                                                       "patches_per_image=4"])
        res = train("multitask", synth_dir, run, RunConfig(n_folds=2), [f"cache_dir={cache}", *TINY])
    return run, cache, sr, res


def test_superres_report(trained):
    run, _, sr, _ = trained
    assert set(sr) >= {"psnr_network", "psnr_bicubic", "gain_db"}
    assert (run / "superres" / "net.pt").exists()
    # A residual over bicubic that starts as bicubic: after two tiny epochs of a fixed schedule (no epoch
    # picked on held-out PSNR any more) it stays close to it, either side.
    # each of the three is rounded to 3 decimals on its own: the gain may differ by one in the last place
    assert abs(sr["gain_db"] - (sr["psnr_network"] - sr["psnr_bicubic"])) <= 0.0015
    # the saved net is the trained one: its residual over bicubic is not the zero it starts from
    import torch
    from lumbar.models.superres import ESPCN
    from lumbar.train.superres import superres_config
    cfg = superres_config(run)
    net = ESPCN(cfg.scale, cfg.channels)
    net.load_state_dict(torch.load(run / "superres" / "net.pt", weights_only=True))
    lr = torch.rand(2, 1, 12, 12)
    bicubic = torch.nn.functional.interpolate(lr, scale_factor=cfg.scale, mode="bicubic", align_corners=False)
    with torch.no_grad():
        assert (net(lr) - bicubic).abs().max() > 1e-4


def test_multitask_oof_complete_and_missing_series_fall_back_to_prior(trained, synth_dir):
    run, cache, _, res = trained
    labels = pd.read_csv(synth_dir / "train.csv")
    ids = labels.study_id.tolist()
    oof = read_oof(run, "multitask", ids)
    assert np.isfinite(oof).all() and np.allclose(oof.sum(-1), 1, atol=1e-5)
    assert np.isfinite(res["median_keypoint_error_mm"]) and np.isfinite(res["median_keypoint_error_px"])
    series = pd.read_csv(synth_dir / "train_series_descriptions.csv")
    folds = read_folds(run)
    from lumbar.metric import labels_to_array
    y = labels_to_array(labels)
    fold = np.array([folds[s] for s in ids])
    checked = 0
    for i, sid in enumerate(ids):
        types = set(series[series.study_id == sid].series_description)
        missing_crops = [c for c, name in enumerate(CROP_NAMES) if CROPS[name][0] not in types]
        if not missing_crops:
            continue
        prior = fit_prior(y[fold != fold[i]])
        cols = [j for j in range(25) if COLUMN_CROP[j] in missing_crops]
        np.testing.assert_allclose(oof[i, cols], prior[cols], atol=1e-6)
        others = [j for j in range(25) if j not in cols]
        assert not np.allclose(oof[i, others], prior[others], atol=1e-4)  # the model predicted the rest
        checked += 1
    assert checked >= 2  # the small folder has a study without sagittal T1 and one without T2


@pytest.mark.slow  # processes started and killed: the suite's, not test-fast's
def test_killed_run_resumes_from_its_checkpoint(trained, synth_dir, tmp_path):
    run, cache, _, _ = trained
    fresh = _fresh_run(run, tmp_path)
    cmd = _cli(fresh, synth_dir, cache, "epochs=4", "only_fold=0")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = fresh / "multitask" / "fold0" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), "no checkpoint was written"
    os.killpg(proc.pid, signal.SIGKILL)  # mid-epoch 1: epoch 0 is checkpointed, epoch 1 is running
    proc.wait()
    log = pd.read_csv(fresh / "multitask" / "fold0" / "log.csv")
    done_before = int(log.epoch.max())
    assert done_before < 3
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {last} after epoch {done_before}" in r.stdout
    log = pd.read_csv(fresh / "multitask" / "fold0" / "log.csv")
    assert log.epoch.tolist() == list(range(4))  # continued, not restarted: every epoch once


@pytest.mark.slow  # processes started and killed: the suite's, not test-fast's
def test_torchrun_two_processes_gloo(trained, synth_dir, tmp_path):
    """DDP with the presets' backbone family (EfficientNet, random weights): each process takes optimiser
    steps, which DDP allows only if every parameter gets a gradient (the feature extractor is cut after
    the stage it returns)."""
    run, cache, _, _ = trained
    fresh = _fresh_run(run, tmp_path)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    args = _cli(fresh, synth_dir, cache, "epochs=1", "only_fold=0", "backbone=efficientnet_b0", "batch_size=1")[3:]
    args[args.index("--run")] = "--run-dir"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lumbar", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    log = pd.read_csv(fresh / "multitask" / "fold0" / "log.csv")
    assert log.epoch.tolist() == [0]
    assert "val score" in r.stdout and "(final weights)" in r.stdout
    import re
    steps = {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"rank (\d): epoch 0: (\d+) optimiser steps", r.stdout)}
    assert set(steps) == {0, 1} and min(steps.values()) >= 2, r.stdout[-2000:]
    assert int(log.steps[0]) == steps[0]


def test_ensemble_stage_on_the_run(trained, synth_dir):
    run, _, _, _ = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train("prior", synth_dir, run, RunConfig(n_folds=2), [])
        res = train("ensemble", synth_dir, run, RunConfig(n_folds=2), [])
    report = json.loads((run / "ensemble" / "report.json").read_text())
    assert set(report["members"]) >= {"prior", "multitask"}
    assert res["in_sample"] <= min(report["single_oof"].values()) + 1e-4
    ids = pd.read_csv(synth_dir / "train.csv").study_id.tolist()
    oof = read_oof(run, "ensemble", ids)
    assert np.isfinite(oof).all() and np.allclose(oof.sum(-1), 1, atol=1e-5)


def test_a_run_notices_changed_labels_and_reuses_unchanged_data(trained, synth_copy, tmp_path, capsys):
    run, cache, _, _ = trained
    fresh = _fresh_run(run, tmp_path)
    args = [f"cache_dir={cache}", *TINY, "epochs=1"]
    ids = pd.read_csv(synth_copy / "train.csv").study_id.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train("multitask", synth_copy, fresh, RunConfig(n_folds=2), args)
        first = read_oof(fresh, "multitask", ids)
        capsys.readouterr()
        train("multitask", synth_copy, fresh, RunConfig(n_folds=2), args)  # the same data: reused
        again = read_oof(fresh, "multitask", ids)
        assert "training afresh" not in capsys.readouterr().out
        np.testing.assert_array_equal(first, again)
        labels = pd.read_csv(synth_copy / "train.csv")
        spinal = [c for c in labels.columns if c.startswith("spinal_canal_stenosis")]
        labels[spinal] = "Severe"
        labels.to_csv(synth_copy / "train.csv", index=False)
        train("multitask", synth_copy, fresh, RunConfig(n_folds=2), args)
    out = capsys.readouterr().out
    assert "was trained on another labels; training afresh" in out
    assert np.abs(read_oof(fresh, "multitask", ids) - first).max() > 1e-4


def test_folds_at_once_train_what_one_at_a_time_trains(trained, synth_dir, tmp_path, capsys):
    import torch

    run, cache, _, _ = trained
    args = [f"cache_dir={cache}", *TINY, "epochs=1"]
    ids = pd.read_csv(synth_dir / "train.csv").study_id.tolist()
    runs = {}
    for workers in (1, 2):
        (tmp_path / str(workers)).mkdir()
        runs[workers] = _fresh_run(run, tmp_path / str(workers))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each forked fold trains with: the same arithmetic, bit for bit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one = train("multitask", synth_dir, runs[1], RunConfig(n_folds=2), [*args, "fold_workers=1"])
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        two = train("multitask", synth_dir, runs[2], RunConfig(n_folds=2), [*args, "fold_workers=2"])
    out = capsys.readouterr().out
    assert "multitask: 2 folds in 2 processes at once" in out
    assert "multitask fold 0 epoch 1/1: train loss" in out and "multitask fold 1 epoch 1/1: train loss" in out
    np.testing.assert_array_equal(read_oof(runs[1], "multitask", ids), read_oof(runs[2], "multitask", ids))
    assert one["median_keypoint_error_px"] == two["median_keypoint_error_px"]


def test_oof_floor_leaves_out_exactly_the_labels_the_first_pass_found_unlikely(tmp_path):
    from lumbar.layout import Run
    from lumbar.train.multitask import filter_labels, first_pass_oof
    from lumbar.train.oof import write_oof

    rng = np.random.default_rng(0)
    ids = np.array([11, 12, 13, 14])
    y = rng.integers(0, 3, (4, 25))
    y[0, :3] = -1  # unlabelled cells stay unlabelled
    with pytest.raises(FileNotFoundError, match="needs a first pass"):
        filter_labels(tmp_path / "run", ids, y, 0.1)
    probs = rng.dirichlet(np.ones(3), (4, 25))
    write_oof(tmp_path / "run", "multitask", ids, probs)
    kept = filter_labels(tmp_path / "run", ids, y, 0.2)
    p_label = np.take_along_axis(probs, np.clip(y, 0, 2)[..., None], -1)[..., 0]
    expect = np.where((y >= 0) & (p_label < 0.2), -1, y)
    assert (kept == expect).all() and (kept == -1).sum() > 3
    # the second pass's own OOF replaces the run's: the filter keeps reading the first pass
    write_oof(tmp_path / "run", "multitask", ids, rng.dirichlet(np.ones(3), (4, 25)))
    assert (filter_labels(tmp_path / "run", ids, y, 0.2) == expect).all()
    assert first_pass_oof(tmp_path / "run").parent == Run(tmp_path / "run").stage("multitask")


def test_five_slice_crops_with_spare_slices_train_shifted_and_predict_from_their_centre(trained, synth_dir, tmp_path):
    """The 1st place's recipe as switches: crops of five slices with one spare on each side (seven in the
    cache), training reading them up to one slice off centre; the CNNs take five channels, and the
    exported weights predict through the engine, which builds five-slice crops and no spare ones."""
    import torch

    from lumbar.infer.engine import PredictConfig, predict
    from lumbar.layout import Run
    from lumbar.train.export import export_weights
    from lumbar.train.crops import load_crop_entries
    from test_inference import assert_complete

    run, cache, _, _ = trained
    fresh = _fresh_run(run, tmp_path)
    rc = RunConfig(n_folds=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train("crops", synth_dir, fresh, rc, [f"cache_dir={cache}", "sag_size=64", "axial_size=48", "slices=5", "spare=1"])
        with pytest.raises(SystemExit, match="slice_shift=2 needs crops with spare >= 2"):
            train("multitask", synth_dir, fresh, rc, [f"cache_dir={cache}", *TINY, "slice_shift=2"])
        train("prior", synth_dir, fresh, rc, [])
        res = train("multitask", synth_dir, fresh, rc, [f"cache_dir={cache}", *TINY, "epochs=1", "slice_shift=1"])
    _, entries = load_crop_entries(synth_dir, fresh, rc, str(cache))
    assert entries[0]["sag_image"].shape[:2] == (3, 7) and entries[0]["axial_image"].shape[:2] == (5, 7)
    saved = json.loads(Run(fresh).config("multitask").read_text())
    assert (saved["slices"], saved["slice_shift"]) == (5, 1)
    assert np.isfinite(res["oof_score"])
    state = torch.load(Run(fresh).fold_weights("multitask", 0), map_location="cpu", weights_only=True)["model"]
    convs = {k: v.shape[1] for k, v in state.items() if v.ndim == 4 and k.startswith(("kp_backbone", "cls_backbone"))}
    first = {net: next(c for k, c in convs.items() if k.startswith(net)) for net in ("kp_backbone", "cls_backbone")}
    assert first == {"kp_backbone": 5, "cls_backbone": 5}  # each CNN's first convolution reads five slices
    export_weights(fresh, synth_dir, tmp_path / "weights")
    weights = tmp_path / "weights"
    pcache = tmp_path / "predict-cache"
    summary = predict(synth_dir, weights, tmp_path / "submission.csv", PredictConfig(workers=0, cache_dir=str(pcache)))
    assert_complete(tmp_path / "submission.csv", synth_dir)
    assert summary["active"].get("multitask") and summary["failed"] == 0, summary
    assert not [d for d in summary["dropped"] if "multitask" in d], summary["dropped"]
    built = [np.load(f) for f in pcache.rglob("crops*.npz")]
    assert built and all(b["sag_image"].shape[1] == 5 for b in built)  # inference builds no spare slices
