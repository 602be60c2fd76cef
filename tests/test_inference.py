"""Inference: predict on clean and damaged test folders, the time budget, the manifest's checks, the kernel."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lumbar import schema
from lumbar.infer.engine import PredictConfig, predict
from lumbar.infer.weights import Weights, WeightsError

ROOT = Path(__file__).resolve().parents[1]


def _run(data, weights, out, **kw) -> dict:
    kw.setdefault("workers", 0)
    return predict(data, weights, out, PredictConfig(**kw))


def assert_complete(sub_path: Path, data: Path) -> pd.DataFrame:
    """Every row id of sample_submission.csv, rows summing to 1, no NaN."""
    sub = pd.read_csv(sub_path)
    sample = pd.read_csv(data / "sample_submission.csv")
    assert set(sample["row_id"]) <= set(sub["row_id"])
    assert sub["row_id"].is_unique
    probs = sub[list(schema.PROB_COLUMNS)].to_numpy()
    assert np.isfinite(probs).all()
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    return sub


def test_weights_manifest_lists_every_file_with_its_hash(trained_weights):
    man = json.loads((trained_weights / "manifest.json").read_text())
    kinds = {a["kind"] for a in man["artefacts"]}
    assert {"prior", "slice_select", "crops", "multitask", "sequence", "ensemble"} <= kinds
    assert {a["fold"] for a in man["artefacts"] if a["kind"] == "multitask"} == {0, 1}
    for key in ("data_fingerprint", "libraries", "models", "created"):
        assert man[key]
    assert man["libraries"]["torch"] != "missing"
    meta = json.loads((trained_weights / "dataset-metadata.json").read_text())
    assert meta["id"].endswith("/lumbar-weights")
    Weights(trained_weights).check_all()


def _update_sha(weights: Path, rel: str) -> None:
    """The manifest agrees with the file as it is now (an artefact altered with its sha256 updated)."""
    import hashlib

    man = json.loads((weights / "manifest.json").read_text())
    for a in man["artefacts"]:
        if a["path"] == rel:
            a["sha256"] = hashlib.sha256((weights / rel).read_bytes()).hexdigest()
    (weights / "manifest.json").write_text(json.dumps(man))


def test_every_model_artefact_has_a_probe_that_agrees_where_it_loads(trained_weights):
    import torch

    from lumbar.infer.engine import Bundle
    from lumbar.models.prior import load_prior

    man = json.loads((trained_weights / "manifest.json").read_text())
    by_path = {a["path"]: a for a in man["artefacts"]}
    probed = {p for p, a in by_path.items() if a.get("probe")}
    members = {p for p in by_path if p.startswith("slice_select/model/") and p.endswith((".npz", ".json"))
               and not p.endswith(("selector.json", "levels.json"))}
    assert len(members) == 12 and members <= probed  # 3 series types x 4 members
    folds = {p for p, a in by_path.items() if a["kind"] in ("multitask", "sequence")}
    assert len(folds) == 4 and folds <= probed
    assert {"ensemble.json", "slice_select/model/levels.pt"} <= probed
    for p in probed:  # each probe file is itself listed, with its sha256
        assert by_path[by_path[p]["probe"]]["kind"] == "probe"
    assert not any(p.endswith(".pkl") for p in by_path), "nothing in a weights folder is a pickle"
    w = Weights(trained_weights)
    bundle = Bundle(w, [torch.device("cpu")], load_prior(w.file("prior.json")))
    assert bundle.dropped == [] and bundle.unprobed == []
    assert set(bundle.probed) == probed
    assert any(line.startswith(f"probes: {len(probed)} artefacts") for line in bundle.describe())


def test_an_altered_artefact_with_its_sha256_updated_is_dropped_by_its_probe(trained_weights, synth_dir, tmp_path):
    """A coefficient changed and the manifest's sha256 updated: the sha256 check passes, the probe does not.
    One of each kind: a selector member (arrays), the ensemble (JSON), a torch fold, the level localiser."""
    import torch

    w = tmp_path / "w"
    shutil.copytree(trained_weights, w)
    rel = "slice_select/model/sag_t2_mlp.npz"
    with np.load(w / rel, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["b1"] = arrays["b1"] + 0.5  # the output layer's bias
    with open(w / rel, "wb") as f:
        np.savez(f, **arrays)
    ens = json.loads((w / "ensemble.json").read_text())
    group = next(iter(ens["weights"]))
    ens["weights"][group] = [x + 0.3 * i for i, x in enumerate(ens["weights"][group])]
    ens["temperature"] = {g: 1.7 for g in ens["weights"]}
    for g in ens.get("stack", {}):
        ens["stack"][g]["intercept"] = [x + 0.5 * i for i, x in enumerate(ens["stack"][g]["intercept"])]
    (w / "ensemble.json").write_text(json.dumps(ens))
    state = torch.load(w / "multitask" / "fold1.pt", weights_only=True)
    key = next(k for k, v in state.items() if k.startswith("head") and v.is_floating_point())
    state[key] = state[key] * 1.5
    torch.save(state, w / "multitask" / "fold1.pt")
    lv = torch.load(w / "slice_select/model/levels.pt", weights_only=True)
    k0 = next(k for k, v in lv.items() if k.endswith("weight") and v.ndim == 4)
    lv[k0] = lv[k0] * 1.1
    torch.save(lv, w / "slice_select/model/levels.pt")
    for r in (rel, "ensemble.json", "multitask/fold1.pt", "slice_select/model/levels.pt"):
        _update_sha(w, r)
    Weights(w).check_all()  # every sha256 agrees: only the probes can tell

    res = _run(synth_dir, w, tmp_path / "sub.csv")
    assert_complete(tmp_path / "sub.csv", synth_dir)
    assert res["predicted"] == 3
    said = "\n".join(res["dropped"])
    for name in ("sag_t2_mlp.npz", "ensemble.json", "fold1.pt", "levels.pt"):
        assert re.search(rf"{re.escape(name)}: computes up to [0-9.e+-]+ away from its export on its probe "
                         r"\(tolerance .*\); exported with python [\d.]+, numpy .*; here python", said), name
    assert "selector member mlp for Sagittal T2/STIR" in said and "ensemble weights:" in said
    assert "level localiser:" in said and "multitask fold 1:" in said
    assert res["active"]["multitask"] == [0]
    assert len(res["dropped"]) == 4  # nothing else


def test_predict_uses_the_models_and_is_complete(trained_weights, synth_dir, tmp_path):
    res = _run(synth_dir, trained_weights, tmp_path / "sub.csv")
    sub = assert_complete(tmp_path / "sub.csv", synth_dir)
    assert res["predicted"] == res["studies"] == 3 and res["failed"] == 0
    assert set(res["active"]) == {"multitask", "sequence"}
    prior = json.loads((trained_weights / "prior.json").read_text())["probs"]
    # The models moved the prediction away from the prior (a fallback-only engine would not).
    first = sub.iloc[:25][list(schema.PROB_COLUMNS)].to_numpy()
    assert np.abs(first - np.asarray(prior)).max() > 1e-4


def test_swapped_sagittal_descriptions_in_the_csv_predict_as_the_right_ones(trained_weights, synth_dir, synth_copy,
                                                                           tmp_path):
    path = synth_copy / "test_series_descriptions.csv"
    frame = pd.read_csv(path)
    swap = {schema.SAG_T1: schema.SAG_T2, schema.SAG_T2: schema.SAG_T1}
    study = next(s for s, g in frame.groupby("study_id") if set(swap) <= set(g.series_description))
    rows = frame.study_id == study
    frame.loc[rows, "series_description"] = [swap.get(d, d) for d in frame.loc[rows, "series_description"]]
    frame.to_csv(path, index=False)
    right = _run(synth_dir, trained_weights, tmp_path / "right.csv")
    swapped = _run(synth_copy, trained_weights, tmp_path / "swapped.csv")
    assert any(f"study {study}: series" in line and "the files win" in line for line in swapped["log"])
    assert right["predicted"] == swapped["predicted"] == 3
    a = pd.read_csv(tmp_path / "right.csv").set_index("row_id").sort_index()
    b = pd.read_csv(tmp_path / "swapped.csv").set_index("row_id").sort_index()
    assert list(a.index) == list(b.index) and b.index.str.startswith(f"{study}_").sum() == 25
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-4)


def test_fold_with_a_different_sha_is_dropped_not_fatal(trained_weights, synth_dir, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(trained_weights, w)
    with open(w / "multitask" / "fold1.pt", "ab") as f:
        f.write(b"tampered")
    res = _run(synth_dir, w, tmp_path / "sub.csv")
    assert_complete(tmp_path / "sub.csv", synth_dir)
    assert res["active"]["multitask"] == [0] and res["predicted"] == 3
    assert any(re.search(r"multitask fold 1: .*fold1\.pt.*sha256 .* differs from manifest\.json", d)
               for d in res["dropped"])
    # the same check still refuses the file where one asks for it
    with pytest.raises(WeightsError, match=r"fold1\.pt: sha256"):
        Weights(w).check_all()


def test_time_budget_of_one_second_still_completes(trained_weights, synth_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "lumbar", "predict", "--data", str(synth_dir), "--weights",
                        str(trained_weights), "--out", str(tmp_path / "sub.csv"), "--time-budget", "1",
                        "--batch-size", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_complete(tmp_path / "sub.csv", synth_dir)
    # A budget already spent when the first batch is done: folds, then models, then studies are dropped.
    res = _run(synth_dir, trained_weights, tmp_path / "sub2.csv", time_budget=1e-3, batch_size=1)
    assert_complete(tmp_path / "sub2.csv", synth_dir)
    assert res["predicted"] < res["studies"]
    assert any("budget" in line for line in res["log"])


def _test_folder(synth_copy: Path) -> tuple[pd.DataFrame, list[int]]:
    series = pd.read_csv(synth_copy / "test_series_descriptions.csv")
    return series, list(dict.fromkeys(series["study_id"]))


def damage_no_axial(root: Path):
    series, ids = _test_folder(root)
    drop = series[(series.study_id == ids[0]) & (series.series_description == schema.AXIAL)]
    for r in drop.itertuples():
        shutil.rmtree(root / "test_images" / str(r.study_id) / str(r.series_id))
    series.drop(drop.index).to_csv(root / "test_series_descriptions.csv", index=False)


def damage_only_corrupt_dicom(root: Path):
    series, ids = _test_folder(root)
    study = ids[1]
    keep = series[series.study_id == study].iloc[0]
    for r in series[series.study_id == study].itertuples():
        shutil.rmtree(root / "test_images" / str(study) / str(r.series_id))
    folder = root / "test_images" / str(study) / str(keep.series_id)
    folder.mkdir(parents=True)
    (folder / "1.dcm").write_bytes(b"DICM" + b"\x00garbage" * 50)
    series[(series.study_id != study) | (series.series_id == keep.series_id)].to_csv(
        root / "test_series_descriptions.csv", index=False)


def damage_unknown_description(root: Path):
    series, ids = _test_folder(root)
    r = series[series.study_id == ids[2]].iloc[0]
    src = root / "test_images" / str(r.study_id) / str(r.series_id)
    shutil.copytree(src, src.parent / "999")
    extra = pd.DataFrame([{"study_id": r.study_id, "series_id": 999, "series_description": "Sagittal PD"}])
    pd.concat([series, extra]).to_csv(root / "test_series_descriptions.csv", index=False)


def damage_empty_test_folder(root: Path):
    shutil.rmtree(root / "test_images")
    (root / "test_images").mkdir()
    pd.DataFrame(columns=["study_id", "series_id", "series_description"]).to_csv(
        root / "test_series_descriptions.csv", index=False)


def damage_one_slice_series(root: Path):
    series, ids = _test_folder(root)
    for r in series[series.study_id == ids[0]].itertuples():
        files = sorted((root / "test_images" / str(r.study_id) / str(r.series_id)).glob("*.dcm"))
        for f in files[1:]:
            f.unlink()


@pytest.mark.parametrize("damage", [damage_no_axial, damage_only_corrupt_dicom, damage_unknown_description,
                                    damage_empty_test_folder, damage_one_slice_series], ids=lambda f: f.__name__[7:])
def test_bad_input_still_gives_a_complete_submission(damage, trained_weights, synth_copy, tmp_path):
    damage(synth_copy)
    res = _run(synth_copy, trained_weights, tmp_path / "sub.csv")
    sub = assert_complete(tmp_path / "sub.csv", synth_copy)
    prior = np.asarray(json.loads((trained_weights / "prior.json").read_text())["probs"])
    ids = list(dict.fromkeys(int(r.split("_")[0]) for r in sub.row_id))

    def moved(study: int) -> bool:  # the models' prediction, not the prior
        rows = sub[sub.row_id.str.startswith(f"{study}_")].sort_values("row_id")
        order = sorted(range(25), key=lambda j: f"{study}_{schema.LABEL_COLUMNS[j]}")
        return np.abs(rows[list(schema.PROB_COLUMNS)].to_numpy() - prior[order]).max() > 1e-4

    if damage is damage_no_axial:  # no axial series: all 25 columns still predicted by the models
        assert res["failed"] == 0 and res["predicted"] == 3 and all(moved(s) for s in ids)
    if damage is damage_only_corrupt_dicom:  # that study keeps its prior, named; the others predict
        bad = pd.read_csv(synth_copy / "test_series_descriptions.csv").study_id.unique()[1]
        assert list(res["failures"]) == [bad] and not moved(bad)
        assert all(moved(s) for s in ids if s != bad)
    if damage is damage_unknown_description:  # "Sagittal PD" in the CSV: its files say what it is
        assert res["failed"] == 0 and all(moved(s) for s in ids)
        assert any("series 999" in line and "the files win" in line for line in res["log"])
    if damage is damage_empty_test_folder:  # nothing to read: every row of sample_submission at the prior
        assert res["studies"] == 3 and not any(moved(s) for s in ids)
    if damage is damage_one_slice_series:  # a study of one-slice series still predicts, like the others
        assert res["predicted"] == 3 and all(moved(s) for s in ids)


def test_kernel_without_weights_says_what_to_run(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "build_kernel.py"), "--weights", str(tmp_path / "none"),
                        "--out", str(tmp_path / "k")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "make train" in r.stderr and "make demo" in r.stderr


def test_version_report_names_the_differences_that_matter():
    from lumbar.infer.weights import version_report

    recorded = {"python": "3.11.7", "numpy": "2.1.0", "sklearn": "1.5.2", "xgboost": "2.0.3", "torch": "2.14.1",
                "timm": "1.0.9", "pandas": "2.2.3"}
    installed = {"python": "3.10.14", "numpy": "1.26.4", "sklearn": "1.2.2", "xgboost": "2.0.1", "torch": "2.14.0",
                 "timm": "missing", "pandas": "2.1.0"}
    table, problems = version_report(recorded, installed)
    named = {p.split(":")[0] for p in problems}
    assert named == {"numpy", "sklearn", "timm"}  # patch releases and pandas are information only
    assert "sklearn" in table and "DIFFERS" in table and "MISSING" in table
    assert version_report(recorded, recorded)[1] == []


@pytest.mark.slow  # processes started and killed: the suite's, not test-fast's
def test_a_worker_killed_for_memory_costs_its_study_only(trained_weights, synth_dir, tmp_path):
    study = int(pd.read_csv(synth_dir / "test_series_descriptions.csv").study_id.iloc[0])
    res = _run(synth_dir, trained_weights, tmp_path / "sub.csv", workers=2, fault=f"die:{study}", batch_size=2)
    assert_complete(tmp_path / "sub.csv", synth_dir)
    assert res["predicted"] == 3 and list(res["failures"]) == [study]
    assert "worker died (exit code" in res["failures"][study][0]
    assert any(f"worker: study {study}: worker died" in line for line in res["log"])


def test_models_reading_the_same_input_share_one_preparation(synth_dir):
    """Two models that read frames with the same settings get the one array built for the study; a
    model with other settings gets its own."""
    from lumbar.data.cache import StudyCache
    from lumbar.data.catalog import load_studies
    from lumbar.infer.inputs import StudyInputs
    from lumbar.preprocess.frames import FramesConfig

    small, large = FramesConfig(n_frames=5, size=16), FramesConfig(n_frames=5, size=24)
    prepare = StudyInputs(None, None, None, {"a": ("frames", small), "b": ("frames", FramesConfig(n_frames=5, size=16)),
                                             "c": ("frames", large)}, StudyCache(None, "x"))
    study = load_studies(synth_dir, "test")[0]
    item = prepare((study, frozenset({"a", "b", "c"})))
    assert not item["errors"]
    got = item["inputs"]
    assert got["a"] is got["b"]
    assert got["c"] is not got["a"] and got["c"]["frames"].shape[-1] == 24 and got["a"]["frames"].shape[-1] == 16


def test_predict_scores_a_synthetic_folders_test_split_when_asked(trained_weights, synth_dir, tmp_path):
    """`predict --score`: the submission's score and share of the prior-oracle gap on the folder's test
    labels, the same numbers the demo's kernel run prints (demo.test_scores); a folder without test labels
    (a real one) says so and still writes its submission."""
    from lumbar.commands.demo import test_scores

    out = tmp_path / "sub.csv"
    r = subprocess.run([sys.executable, "-m", "lumbar", "predict", "--data", str(synth_dir), "--weights",
                        str(trained_weights), "--out", str(out), "--score"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    s = test_scores(synth_dir, out, trained_weights)
    line = next(x for x in r.stdout.splitlines() if x.startswith("predict --score:"))
    assert f"submission {s['submission']:.4f}" in line and f"closes {100 * s['gap_closed']:.0f}%" in line
    assert f"over {s['test_studies']} test studies" in line and s["prior"] > s["oracle"]
    real = tmp_path / "real"
    shutil.copytree(synth_dir, real)
    (real / "test_labels.csv").unlink()
    r = subprocess.run([sys.executable, "-m", "lumbar", "predict", "--data", str(real), "--weights",
                        str(trained_weights), "--out", str(tmp_path / "sub2.csv"), "--score"], capture_output=True, text=True)
    assert r.returncode == 0 and "no test_labels.csv" in r.stdout, r.stderr[-2000:]
    assert_complete(tmp_path / "sub2.csv", real)


def test_the_kernels_temporary_cache_holds_one_study_at_a_time_and_predicts_the_same(trained_weights, synth_dir,
                                                                                    tmp_path, monkeypatch):
    """Each study's entries leave the temporary cache once its inputs are back: the folder never holds more
    than the study in hand (workers=0), whatever the number of studies, and the submission is the one a
    persistent cache gives."""
    import tempfile

    from lumbar.data.cache import StudyCache

    seen: list[int] = []
    save = StudyCache.save

    def counting(self, study_id, name, arrays):
        save(self, study_id, name, arrays)
        if self.root is not None and self.root.exists():
            seen.append(sum(1 for p in self.root.iterdir() if p.is_dir()))
    monkeypatch.setattr(StudyCache, "save", counting)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    n = len(pd.read_csv(synth_dir / "test_series_descriptions.csv")["study_id"].unique())
    assert n >= 3
    _run(synth_dir, trained_weights, tmp_path / "transient.csv")
    assert seen and max(seen) == 1
    assert not list((tmp_path / "tmp").iterdir())  # the temporary folder is gone at the end
    seen.clear()
    _run(synth_dir, trained_weights, tmp_path / "kept.csv", cache_dir=str(tmp_path / "cache"))
    assert max(seen) == n  # a cache folder the user names keeps every study
    a, b = pd.read_csv(tmp_path / "transient.csv"), pd.read_csv(tmp_path / "kept.csv")
    assert np.abs(a[list(schema.PROB_COLUMNS)].to_numpy() - b[list(schema.PROB_COLUMNS)].to_numpy()).max() == 0


def test_the_input_probe_agrees_here_and_names_the_model_and_array_that_drift(trained_weights, synth_dir, tmp_path,
                                                                             monkeypatch):
    """Export stores one study's reduced volumes and every model's inputs; predict re-makes them, reports
    no drift where nothing changed, and names model and array where one preprocessing step computes
    otherwise (here the crops' resampling, shifted by a tenth of a pixel)."""
    from lumbar.infer import probes
    from lumbar.preprocess import pipeline as stage_one

    manifest = json.loads((trained_weights / "manifest.json").read_text())
    assert any(a["path"] == probes.INPUTS and a["kind"] == "input_probe" for a in manifest["artefacts"])
    inputs, expected, kind = probes.load_probe(trained_weights / probes.INPUTS)
    assert kind == "inputs" and any(k.startswith("vol/") for k in inputs)
    assert {k.partition("/")[0] for k in expected} == {"multitask", "sequence"}
    res = _run(synth_dir, trained_weights, tmp_path / "sub.csv")
    assert set(res["input_probe"]) == {"multitask", "sequence"}
    assert all(r["ok"] and r["max_abs"] <= 1e-5 for r in res["input_probe"].values())
    assert not [line for line in res["log"] if "INPUT DRIFT" in line]

    resize = stage_one.crop_resize  # the multitask model's crops (the frames and the rankers have their own)
    monkeypatch.setattr(stage_one, "crop_resize", lambda stack, box, size: resize(stack, np.asarray(box) + 0.1, size))
    res = _run(synth_dir, trained_weights, tmp_path / "sub2.csv")
    drift = res["input_probe"]
    assert not drift["multitask"]["ok"] and drift["multitask"]["max_abs"] > 1e-3
    assert drift["sequence"]["ok"]  # its frames do not go through the crops
    said = [line for line in res["log"] if "INPUT DRIFT" in line]
    assert len(said) == 1 and "multitask" in said[0] and drift["multitask"]["array"] in said[0]
    assert "cv2" in said[0]  # the preprocessing's libraries, on both sides
