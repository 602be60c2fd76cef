"""The path a competitor takes with real data: make train with a preset, a device that is proven before
it is trusted, backbones from local files, and the Kaggle ids and machine in the kernel's metadata."""
import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

import lumbar.train  # noqa: F401  (registers the trainers)
from lumbar import config as cfgmod
from lumbar.devices import DeviceError, inference_devices, pick_device, smoke_test, working_cuda
from lumbar.models.backbones import BackboneError, checkpoint_file, create_backbone
from lumbar.models.registry import create_model
from lumbar.train.preset import check_preset, read_preset
from lumbar.train.runner import stages

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not working_cuda()[0]


def _make_n(*args: str) -> str:
    r = subprocess.run(["make", "-n", "-C", str(ROOT), *args, "VENV=" + str(ROOT / ".venv")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_makefile_trains_the_registered_stages_in_their_order():
    text = (ROOT / "Makefile").read_text()
    listed = re.search(r"^STAGES := (.+)$", text, re.M).group(1).split()
    assert listed == stages()


def test_make_train_with_the_gpu_preset_runs_every_stage_with_its_file():
    out = _make_n("train", "PRESET=gpu", "DATA=/data/rsna")
    lines = [line for line in out.splitlines() if " -m lumbar train " in line]
    assert [re.search(r"--model (\S+)", line).group(1) for line in lines] == stages()
    for stage, line in zip(stages(), lines):
        assert f"--config configs/gpu/{stage}.json" in line, line
        assert "--data /data/rsna" in line
    assert " -m lumbar preset configs/gpu" in out  # checked before the first stage
    assert out.index(" -m lumbar preset ") < out.index(" -m lumbar train ") < out.index(" -m lumbar export ")
    cpu = _make_n("train", "PRESET=gpu", "DEVICE=cpu")
    assert all("--device cpu" in line for line in cpu.splitlines() if " -m lumbar train " in line)
    two = _make_n("train", "FOLDS=2")  # the folds reach every stage (a run's stages share its folds.csv)
    assert all(" --folds 2" in line for line in two.splitlines() if " -m lumbar train " in line)
    assert " --folds" not in out
    one = _make_n("train", "PRESET=gpu", "MODEL=multitask", "ARGS=epochs=3")
    assert [line for line in one.splitlines() if " -m lumbar train " in line][0].endswith(
        "--config configs/gpu/multitask.json epochs=3")


def test_every_preset_file_is_valid_and_the_gpu_ones_ask_for_cuda():
    gpu = read_preset(ROOT / "configs" / "gpu")
    assert set(gpu) == set(stages())
    for stage in ("superres", "multitask", "sequence"):
        assert gpu[stage].device == "cuda"
    assert all(c.device == "auto" for c in read_preset(ROOT / "configs" / "tiny").values() if hasattr(c, "device"))


def test_a_preset_with_an_unknown_key_or_stage_is_refused_before_training(tmp_path):
    (tmp_path / "multitask.json").write_text(json.dumps({"epochs": 3, "epocs": 4}))
    with pytest.raises(ValueError, match="multitask.json.*epocs"):
        check_preset(tmp_path)
    (tmp_path / "multitask.json").unlink()
    (tmp_path / "multitsk.json").write_text("{}")
    with pytest.raises(ValueError, match="no stage named 'multitsk'"):
        check_preset(tmp_path)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a working GPU")
def test_the_gpu_preset_without_cuda_stops_with_what_to_do():
    with pytest.raises(DeviceError, match="DEVICE=cpu"):
        check_preset(ROOT / "configs" / "gpu")
    lines = check_preset(ROOT / "configs" / "gpu", device="cpu")
    assert any("on purpose" in line for line in lines)
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "lumbar", "preset", str(ROOT / "configs" / "gpu")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "device=cuda cannot be used" in r.stderr


def test_a_failing_device_is_never_trusted(capsys):
    assert smoke_test(torch.device("cpu")) is None  # the test itself runs (fp16 convolution)
    with pytest.raises(DeviceError, match="fault injected.*device=cpu"):
        pick_device("cuda", fault=True)
    assert pick_device("auto", fault=True).type == "cpu"
    assert "WARNING: device=auto falls back to the CPU" in capsys.readouterr().err
    devices, why = inference_devices("auto", fault=True)
    assert devices == [torch.device("cpu")] and "fault injected" in why and "predicting on the CPU" in why
    assert inference_devices("cpu")[0] == [torch.device("cpu")]


def _preset(name: str, **kw):
    from lumbar.models.registry import get_spec

    cfg = cfgmod.from_dict(get_spec(name).config, json.loads((ROOT / "configs" / "gpu" / f"{name}.json").read_text()),
                           strict=False)
    return dataclasses.replace(cfg, **kw)


@pytest.mark.parametrize("model", ["multitask", "sequence"])
def test_each_preset_network_starts_from_a_local_checkpoint(model, tmp_path):
    import timm

    backbone = _preset(model).backbone
    ref = timm.create_model(backbone, pretrained=False).state_dict()
    ref = {k: v + 0.25 for k, v in ref.items() if v.dtype.is_floating_point}  # unlike any random start
    torch.save(ref, tmp_path / f"{backbone}.pth")
    for given in (tmp_path / f"{backbone}.pth", tmp_path):  # the file, or the folder `lumbar backbones` fills
        net = create_model(model, _preset(model, pretrained=False, backbone_checkpoint=str(given)))
        extractor = net.kp_backbone if model == "multitask" else net.encoder
        pooled = net.cls_backbone if model == "multitask" else net.patch_encoder
        stem = ref["conv_stem.weight"]
        if extractor.conv_stem.weight.shape[1] == 1:  # one input channel: timm sums the RGB filters
            stem = stem.sum(1, keepdim=True)
        torch.testing.assert_close(extractor.conv_stem.weight, stem)
        torch.testing.assert_close(extractor.blocks[1][0].conv_dw.weight, ref["blocks.1.0.conv_dw.weight"])
        torch.testing.assert_close(pooled.blocks[-1][0].conv_pw.weight,
                                   ref[f"blocks.{len(pooled.blocks) - 1}.0.conv_pw.weight"])


def test_a_hugging_face_cache_folder_is_found_and_a_missing_one_named(tmp_path):
    snap = tmp_path / "models--timm--efficientnet_b0.ra_in1k" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"")
    assert checkpoint_file("efficientnet_b0", str(tmp_path)) == snap / "model.safetensors"
    with pytest.raises(BackboneError, match="efficientnet_b2.*lumbar backbones"):
        checkpoint_file("efficientnet_b2", str(tmp_path))
    with pytest.raises(BackboneError, match="no such file"):
        checkpoint_file("efficientnet_b0", str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("backbone", ["test_efficientnet", "efficientnet_b0", "efficientnet_b2"])
def test_feature_extractors_leave_no_parameter_without_a_gradient(backbone):
    net = create_backbone(backbone, out_indices=(2,), in_chans=1)
    net(torch.randn(2, 1, 64, 64))[-1].float().pow(2).mean().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert not unused, unused[:5]
    assert net.feature_info.reduction()[-1] == 8


def test_kernel_metadata_takes_the_dataset_id_when_it_is_known(tmp_path, monkeypatch):
    from lumbar.commands.notebook import dataset_id

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "dataset-metadata.json").write_text(json.dumps({"id": "YOUR_KAGGLE_USERNAME/lumbar-weights"}))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "none"))
    assert dataset_id(weights, ask=False) == "YOUR_KAGGLE_USERNAME/lumbar-weights"
    (tmp_path / "kaggle").mkdir()
    (tmp_path / "kaggle" / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "x"}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    assert dataset_id(weights, ask=False) == "alice/lumbar-weights"
    # the dataset is created from the weights folder: its metadata now says the same
    assert json.loads((weights / "dataset-metadata.json").read_text())["id"] == "alice/lumbar-weights"
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    assert dataset_id(weights, ask=False) == "alice/lumbar-weights"  # a real id in the weights stays
    assert dataset_id(weights, "carol/w", ask=False) == "carol/w"


def test_the_demo_never_waits_for_a_kaggle_user_name(tmp_path, monkeypatch):
    """build() as the demo calls it does not ask, even on a terminal; `make kernel` (ask=None) does."""
    import builtins
    import sys as _sys

    from lumbar import schema
    from lumbar.commands.notebook import build

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "manifest.json").write_text(json.dumps({"models": {}, "artefacts": []}))
    (weights / "prior.json").write_text(json.dumps({"columns": list(schema.LABEL_COLUMNS),
                                                    "probs": [[1 / 3] * 3] * 25}))
    (weights / "dataset-metadata.json").write_text(json.dumps({"id": "YOUR_KAGGLE_USERNAME/lumbar-weights"}))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(_sys.stdin, "isatty", lambda: True, raising=False)
    asked = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or "dora")
    build(weights, tmp_path / "kernel")  # the demo's call
    assert not asked
    assert json.loads((tmp_path / "kernel" / "kernel-metadata.json").read_text())["machine_shape"] == "NvidiaTeslaT4"
    build(weights, tmp_path / "kernel2", ask=None)  # make kernel on a terminal
    assert len(asked) == 1
    assert json.loads((tmp_path / "kernel2" / "kernel-metadata.json").read_text())["dataset_sources"] == [
        "dora/lumbar-weights"]
