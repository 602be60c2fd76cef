"""The README's real-data recipe, run as written (its `make` lines, in order) on a small real-profile
folder: validate, train with the GPU preset's files (tiny overrides so it runs on 2 CPU cores),
local-score, kernel. The `kaggle` upload lines cannot run here; the ids they upload under are checked."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import real_folder

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# The GPU preset's files with what makes them run in minutes on a CPU (what the test changes, nothing else).
TINY = {
    "slice_select": {"workers": 1, "svm_rows": 2000, "levels_steps": 20},
    "crops": {"sag_size": 64, "axial_size": 48},
    "superres": {"epochs": 1, "channels": 16, "patch": 24, "patches_per_image": 4, "batch_size": 64},
    "multitask": {"backbone": "test_efficientnet", "epochs": 1, "kp_input": 48, "patch_sag": 16, "patch_axial": 16,
                  "patch_input": 32, "batch_size": 4, "num_workers": 0},
    "sequence": {"backbone": "test_efficientnet", "epochs": 1, "n_frames": 5, "frame_size": 32, "d_model": 32,
                 "layers": 1, "heads": 2, "batch_size": 4, "kp_size": 32, "patch_side": 12, "patch_input": 16,
                 "num_workers": 0},
}


def readme_recipe() -> list[str]:
    """The `make` lines of the README's real-data block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Training on the real data"):]
    block = section[section.index("```bash") + 7:section.index("```", section.index("```bash") + 7)]
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    assert any(line.startswith("kaggle datasets create -p weights") for line in lines)
    assert any(line.startswith("kaggle kernels push -p kernel") for line in lines)
    assert any(line.startswith("export KAGGLE_USERNAME=") for line in lines)
    return [line for line in lines if line.startswith("make ")]


def test_the_readme_real_data_recipe_runs_as_written(tmp_path):
    data = tmp_path / "rsna"
    real_folder(data, studies=10, test_studies=3, seed=11)
    preset = tmp_path / "preset"
    preset.mkdir()
    for path in sorted((ROOT / "configs" / "gpu").glob("*.json")):
        cfg = json.loads(path.read_text())
        cfg.update(TINY.get(path.stem, {}))
        for key, value in (("device", "cpu"), ("pretrained", False), ("cache_dir", str(tmp_path / "cache"))):
            if key in cfg:
                cfg[key] = value
        (preset / path.name).write_text(json.dumps(cfg))
    where = {"RUN": tmp_path / "run", "WEIGHTS": tmp_path / "weights", "KERNEL": tmp_path / "kernel",
             "REPORTS": tmp_path / "reports", "CACHE": tmp_path / "cache", "PRESET_DIR": preset,
             "VENV": Path(sys.executable).parents[1]}
    env = {**os.environ, "KAGGLE_USERNAME": "tester", "KAGGLE_CONFIG_DIR": str(tmp_path / "no-kaggle"),
           "OMP_NUM_THREADS": "2"}
    recipe = readme_recipe()
    assert [line.split()[1] for line in recipe] == ["validate", "train", "local-score", "kernel"]
    assert "PRESET=gpu" in recipe[1]
    outputs = {}
    for line in recipe:
        args = shlex.split(line.replace("/data/rsna", str(data)))
        cmd = [*args, *(f"{k}={v}" for k, v in where.items())]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, (line, r.stdout[-3000:], r.stderr[-3000:])
        outputs[args[1]] = r.stdout + r.stderr

    assert "0 problem(s)" in outputs["validate"]
    train = outputs["train"]
    assert "train: preset preset" in train and "on purpose" in train  # the preset's device=cpu, said
    stages = re.findall(r"-m lumbar train --model (\S+) .*--config " + re.escape(str(preset)) + r"/(\S+)\.json", train)
    assert [a for a, b in stages] == [b for a, b in stages] and len(stages) == 7
    manifest = json.loads((where["WEIGHTS"] / "manifest.json").read_text())
    assert {"multitask", "sequence"} <= set(manifest["models"])
    assert (where["REPORTS"] / "score.md").exists()
    meta = json.loads((where["KERNEL"] / "kernel-metadata.json").read_text())
    assert meta["dataset_sources"] == ["tester/lumbar-weights"] and meta["id"] == "tester/lumbar-inference"
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_internet"] is False
    assert json.loads((where["WEIGHTS"] / "dataset-metadata.json").read_text())["id"] == "tester/lumbar-weights"
    assert (where["KERNEL"] / "lumbar-inference.ipynb").exists()
