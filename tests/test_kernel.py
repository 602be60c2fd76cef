"""The built notebook, executed headlessly with no network and without src/ on the path, against the test
folder laid out as Kaggle mounts it: it matches `lumbar predict`, and it ends normally with a complete
submission whatever is broken in the weights, the code or the test folder."""
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_inference import assert_complete

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def build_kernel(weights: Path, out: Path) -> Path:
    """`make kernel` from `weights` into `out` (skips where the network cannot be cut to run it)."""
    from lumbar.commands.kaggle import offline_prefix

    if not offline_prefix():
        pytest.skip("no `unshare -rn` on this machine to cut the network")
    r = subprocess.run([sys.executable, str(ROOT / "build_kernel.py"), "--weights", str(weights),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def kernel(trained_weights, tmp_path_factory):
    return build_kernel(trained_weights, tmp_path_factory.mktemp("kernel"))


def run_kernel(kernel: Path, weights: Path, data: Path, root: Path, env: dict | None = None, python=None):
    """Executes the notebook (in another venv's Python where given); returns (the executed notebook's whole
    output text, submission path)."""
    from lumbar.commands.kaggle import kaggle_layout, run_notebook

    inp, working = kaggle_layout(data, weights, root)
    res = run_notebook(kernel / "lumbar-inference.ipynb", inp, working, timeout=600, env=env, python=python)
    assert res.returncode == 0, f"the notebook raised:\n{res.stderr[-3000:]}"
    nb = json.loads((working / "executed.ipynb").read_text())
    text = []
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            text.append("".join(o.get("text", "")) if "text" in o else json.dumps(o.get("data", {})))
    return "\n".join(text), working / "submission.csv"


def selector_members(weights: Path) -> dict[str, list[str]]:
    return json.loads((weights / "slice_select" / "model" / "selector.json").read_text())["types"]


def test_kernel_offline_matches_predict_with_every_member_loaded(kernel, trained_weights, synth_dir, tmp_path):
    meta = json.loads((kernel / "kernel-metadata.json").read_text())
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_tpu"] is False  # never a P100
    assert meta["competition_sources"] == ["rsna-2024-lumbar-spine-degenerative-classification"]
    # later versions of the kernel stay on the image of its first run; no image named unless asked for
    assert meta["docker_image_pinning_type"] == "original" and "docker_image" not in meta
    nb = json.loads((kernel / "lumbar-inference.ipynb").read_text())
    written = {c["source"][0].split("/", 1)[1].strip() for c in nb["cells"]
               if c["cell_type"] == "code" and c["source"] and c["source"][0].startswith("%%writefile")}
    assert "lumbar/infer/engine.py" in written and "lumbar/cli.py" not in written
    for rel in written:  # byte for byte the package's source
        cell = next(c for c in nb["cells"] if c["source"] and c["source"][0].startswith(f"%%writefile {{SRC}}/{rel}"))
        assert "".join(cell["source"][1:]) == (ROOT / "src" / rel).read_text()

    out, sub = run_kernel(kernel, trained_weights, synth_dir, tmp_path / "kaggle")
    assert "lumbar_src/lumbar" in out  # imported its own written copy
    info = json.loads((tmp_path / "kaggle" / "working" / "lumbar_versions.json").read_text())
    import sklearn, torch  # noqa: E401  (the versions the notebook met: this venv's)
    assert info["libraries"]["sklearn"] == sklearn.__version__ and info["libraries"]["torch"] == torch.__version__
    assert info["predicted"] == 3 and info["dropped"] == [] and info["probes_agreed"] > 12
    assert info["weights_exported_with"]["sklearn"] == sklearn.__version__
    assert not (tmp_path / "kaggle" / "working" / "lumbar_src").exists()
    # trained and run in the same (Kaggle's) versions: no difference, nothing dropped, every member loaded
    assert "versions: no difference that matters" in out and "DROPPED" not in out
    members = selector_members(trained_weights)
    assert all(len(m) == 4 for m in members.values()), members
    for stype, names in members.items():
        assert f"slice selector {stype}: {len(names)} members ({', '.join(names)})" in out

    cli = subprocess.run([sys.executable, "-m", "lumbar", "predict", "--data", str(synth_dir), "--weights",
                          str(trained_weights), "--out", str(tmp_path / "cli.csv")], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-2000:]
    a = assert_complete(sub, synth_dir).set_index("row_id").sort_index()
    b = pd.read_csv(tmp_path / "cli.csv").set_index("row_id").sort_index()
    assert list(a.index) == list(b.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-5)

    from lumbar.commands.demo import test_scores as demo_scores  # what `make demo` prints of this submission

    got = demo_scores(synth_dir, sub, trained_weights)
    assert got["test_studies"] == 3 and got["gap_closed_low"] <= got["gap_closed"] <= got["gap_closed_high"]
    assert got["gap_closed"] == pytest.approx((got["prior"] - got["submission"]) / (got["prior"] - got["oracle"]), abs=1e-6)


def _garbage(weights: Path, rel: str, refresh_sha: bool) -> None:
    """Overwrite an artefact with garbage; with refresh_sha the manifest agrees with it (a file that was
    exported broken), so the loader itself has to cope, not only the sha256 check."""
    (weights / rel).write_bytes(b"\x80\x04 this is not a model \x00\xff" * 8)
    if refresh_sha:
        man = json.loads((weights / "manifest.json").read_text())
        for a in man["artefacts"]:
            if a["path"] == rel:
                a["sha256"] = hashlib.sha256((weights / rel).read_bytes()).hexdigest()
        (weights / "manifest.json").write_text(json.dumps(man))


def _copy_weights(trained_weights, tmp_path) -> Path:
    import shutil

    w = tmp_path / "weights"
    shutil.copytree(trained_weights, w)
    return w


def test_garbage_xgboost_member_is_dropped_on_a_sha_mismatch(kernel, trained_weights, synth_dir, tmp_path):
    w = _copy_weights(trained_weights, tmp_path)
    _garbage(w, "slice_select/model/axial_xgb.npz", refresh_sha=False)
    out, sub = run_kernel(kernel, w, synth_dir, tmp_path / "kaggle")
    assert_complete(sub, synth_dir)
    assert re.search(r"DROPPED: .*selector member xgb for Axial T2", out)
    assert "slice selector Axial T2: 3 members (rf, svm, mlp)" in out
    assert "'predicted': 3" in out


def test_broken_members_and_a_missing_fold_are_each_dropped_alone(kernel, trained_weights, synth_dir, tmp_path):
    """Three faults in one set of weights (one kernel run, the suite's time): an xgboost member and a
    member's arrays exported broken (the manifest agrees with the garbage, so the loaders themselves must
    cope) and a torch fold listed but missing. Each costs only itself."""
    w = _copy_weights(trained_weights, tmp_path)
    _garbage(w, "slice_select/model/axial_xgb.npz", refresh_sha=True)
    _garbage(w, "slice_select/model/sag_t2_mlp.npz", refresh_sha=True)
    (w / "sequence" / "fold1.pt").unlink()
    out, sub = run_kernel(kernel, w, synth_dir, tmp_path / "kaggle")
    got = assert_complete(sub, synth_dir)
    assert re.search(r"DROPPED: .*selector member xgb for Axial T2", out)
    assert "slice selector Axial T2: 3 members (rf, svm, mlp)" in out
    assert "sag_t2_mlp.npz: selector member mlp for Sagittal T2/STIR does not load" in out
    assert "slice selector Sagittal T2/STIR: 3 members (rf, svm, xgb)" in out
    assert "slice selector Sagittal T1: 4 members" in out  # untouched
    assert "DROPPED: sequence fold 1:" in out and "listed in manifest.json but missing" in out
    assert "model sequence: folds [0]" in out and "'predicted': 3" in out
    prior = np.asarray(json.loads((w / "prior.json").read_text())["probs"])
    assert np.abs(got.iloc[:25][["normal_mild", "moderate", "severe"]].to_numpy() - prior).max() > 1e-4


def moved_off_prior(sub: pd.DataFrame, weights: Path) -> list[bool]:
    """Per study of a submission (in its order): whether its rows differ from the weights' prior."""
    prior = np.asarray(json.loads((weights / "prior.json").read_text())["probs"])
    cols = ["normal_mild", "moderate", "severe"]
    studies = list(dict.fromkeys(r.split("_")[0] for r in sub["row_id"]))
    return [np.abs(sub[sub.row_id.str.startswith(f"{s}_")][cols].to_numpy() - prior).max() > 1e-4 for s in studies]


def test_a_gpu_failing_its_smoke_test_predicts_every_study_on_the_cpu(kernel, trained_weights, synth_dir, tmp_path):
    out, sub = run_kernel(kernel, trained_weights, synth_dir, tmp_path / "kaggle", env={"LUMBAR_FAULT": "device"})
    got = assert_complete(sub, synth_dir)
    assert "smoke test failed (fault injected" in out and "predicting on the CPU" in out
    moved = moved_off_prior(got, trained_weights)
    assert all(moved), "every study predicted by the models on the CPU, none left on priors"
    assert "'device': 'cpu'" in out


def test_predict_raising_in_its_third_batch_leaves_the_first_two(kernel, trained_weights, synth_dir, tmp_path):
    out, sub = run_kernel(kernel, trained_weights, synth_dir, tmp_path / "kaggle",
                          env={"LUMBAR_FAULT": "batch:3", "LUMBAR_BATCH_SIZE": "1"})
    got = assert_complete(sub, synth_dir)
    assert "fault injected in batch 3" in out and "predict raised; the last submission.csv it wrote stands" in out
    moved = moved_off_prior(got, trained_weights)
    assert sum(moved) == 2, "the two batches before the failure keep their predictions, the third its prior"


def test_a_dicom_that_blocks_on_read_costs_one_study(kernel, trained_weights, synth_copy, tmp_path):
    series = pd.read_csv(synth_copy / "test_series_descriptions.csv")
    r = series.iloc[0]
    os.mkfifo(synth_copy / "test_images" / str(r.study_id) / str(r.series_id) / "0.dcm")
    out, sub = run_kernel(kernel, trained_weights, synth_copy, tmp_path / "kaggle",
                          env={"LUMBAR_STUDY_TIMEOUT": "20"})
    assert_complete(sub, synth_copy)
    assert f"study {r.study_id}: input preparation timed out after 20s; worker killed" in out
    assert "'predicted': 3" in out and "'failed': 1" in out


def test_a_kernel_pinned_to_an_image_by_digest(trained_weights, tmp_path):
    digest = "gcr.io/kaggle-gpu-images/python@sha256:" + "ab12" * 16
    r = subprocess.run([sys.executable, str(ROOT / "build_kernel.py"), "--weights", str(trained_weights), "--out",
                        str(tmp_path / "k"), "--docker-image", digest], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "k" / "kernel-metadata.json").read_text())
    assert meta["docker_image"] == digest and meta["docker_image_pinning_type"] == "original"
    bad = subprocess.run([sys.executable, str(ROOT / "build_kernel.py"), "--weights", str(trained_weights), "--out",
                          str(tmp_path / "k2"), "--docker-image", "python:latest"], capture_output=True, text=True)
    assert bad.returncode == 2 and "kaggle kernels pull" in bad.stderr and not (tmp_path / "k2").exists()


def test_an_altered_member_with_its_sha256_updated_is_dropped_and_the_notebook_ends_normally(
        kernel, trained_weights, synth_dir, tmp_path):
    """A RandomForest's leaf probabilities changed and the manifest updated to match: the sha256 check
    passes, the member's probe does not; the rest predicts."""
    w = _copy_weights(trained_weights, tmp_path)
    rel = "slice_select/model/axial_rf.npz"
    with np.load(w / rel, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["proba"] = np.roll(arrays["proba"], 1, axis=1)
    with open(w / rel, "wb") as f:
        np.savez(f, **arrays)
    man = json.loads((w / "manifest.json").read_text())
    for a in man["artefacts"]:
        if a["path"] == rel:
            a["sha256"] = hashlib.sha256((w / rel).read_bytes()).hexdigest()
    (w / "manifest.json").write_text(json.dumps(man))
    out, sub = run_kernel(kernel, w, synth_dir, tmp_path / "kaggle")
    assert_complete(sub, synth_dir)
    assert re.search(r"DROPPED: selector member rf for Axial T2: .*axial_rf\.npz: computes up to [0-9.]+ away from "
                     r"its export on its probe", out)
    assert "slice selector Axial T2: 3 members (svm, mlp, xgb)" in out and "'predicted': 3" in out


def test_a_preprocessing_step_altered_in_the_kernel_is_reported_by_model_and_array(trained_weights, synth_dir,
                                                                                  tmp_path):
    """The input probe in the notebook itself: with the crops' resampling moved by a tenth of a pixel in the
    kernel's own copy of preprocess/crops.py, it says INPUT DRIFT for each model (both read crops), writes
    it to lumbar_versions.json, and still ends normally with a complete submission."""
    kernel = build_kernel(trained_weights, tmp_path / "kernel")
    nb_path = kernel / "lumbar-inference.ipynb"
    nb = json.loads(nb_path.read_text())
    needle = "m = np.array([[sx, 0.0, box[0] + 0.5 * sx - 0.5]"
    hits = [c for c in nb["cells"] if needle in "".join(c["source"])]
    assert len(hits) == 1
    src = "".join(hits[0]["source"]).replace(needle, "m = np.array([[sx, 0.0, box[0] + 0.6 * sx - 0.5]")
    hits[0]["source"] = src.splitlines(keepends=True)
    nb_path.write_text(json.dumps(nb))
    text, sub = run_kernel(kernel, trained_weights, synth_dir, tmp_path / "run")
    assert_complete(sub, synth_dir)
    drift = json.loads((tmp_path / "run" / "working" / "lumbar_versions.json").read_text())["input_probe"]
    for model in ("multitask", "sequence"):
        assert not drift[model]["ok"] and drift[model]["max_abs"] > 1e-3, drift
        assert re.search(rf"INPUT DRIFT: {model}'s inputs differ .* in '{drift[model]['array']}'", text)
