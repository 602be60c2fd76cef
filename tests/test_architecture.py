"""The house's shape: imports point one way with no circle, no model is named outside its
registration, and a third model is one new module (here: written in this test) that trains, exports
and predicts through the engine with no other file changed."""
import ast
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lumbar"

# Lower layers never import higher ones: schema/config/metric/cv -> data -> preprocess -> models ->
# infer -> train -> commands. Inference never imports training (the kernel ships no training code).
LAYERS = {"schema": 0, "config": 0, "metric": 0, "cv": 0, "devices": 0, "files": 0, "layout": 0, "progress": 0, "data": 1, "preprocess": 2, "models": 3,
          "infer": 4, "train": 5, "commands": 6}
COMMANDS = 6  # build_kernel.py


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every lumbar module `name` imports, at any depth of its code (function-level imports too)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                cand = f"{target}.{alias.name}"
                found.add(cand if cand in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name} | ({"build_kernel"} & found)


def _rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    return COMMANDS if parts[1] == "__main__" else LAYERS[parts[1]]


def test_the_package_root_shows_the_layers_as_folders():
    """src/lumbar: the base modules, a folder per layer, __init__ and __main__; nothing else (a new module
    goes into its layer's folder, or is a base module named in LAYERS)."""
    entries = {p.stem for p in SRC.iterdir() if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    base = {k for k, v in LAYERS.items() if v == 0}
    assert entries == base | {k for k, v in LAYERS.items() if v > 0} | {"__init__", "__main__"}
    assert all((SRC / k).is_dir() for k, v in LAYERS.items() if v > 0)
    assert all((SRC / f"{k}.py").is_file() for k in base)


def test_imports_point_one_way_and_form_no_circle():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    wrong = [f"{m} -> {t}" for m, ts in graph.items() for t in ts
             if t == "build_kernel" or _rank(t) > _rank(m)]
    assert not wrong, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(wrong))

    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m, stack):
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                cycle.extend(stack[stack.index(t):] + [m, t] if t in stack else [m, t])
                return True
            if state.get(t) is None and visit(t, stack + [m]):
                return True
        state[m] = 2
        return False
    for m in graph:
        if state.get(m) is None and visit(m, []):
            break
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_no_lumbar_module_is_imported_by_name_at_run_time():
    """`import_module(".x", __package__)` hides an import from the walk above (and broke when the commands
    moved into commands/): package modules are imported by import statements only."""
    hits = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in
                    ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).startswith((".", "lumbar"))):
                hits.append(f"{name}:{node.lineno}: {node.args[0].value}")
    assert not hits, hits


def test_the_kernel_amalgamates_the_inference_closure_and_nothing_above_it():
    """The notebook's modules: the engine's imports, transitively; base, data, preprocess, models and infer,
    never train/ or commands/ (the kernel ships no training code)."""
    from lumbar.commands.notebook import closure

    mods = closure()
    assert mods[-1] == "lumbar.infer.engine" and len(set(mods)) == len(mods)
    layers = {_rank(m) for m in mods}
    assert max(layers) == LAYERS["infer"] and {0, 1, 2, 3, 4} <= layers
    graph = {m: _imports(m, p, _modules()) for m, p in _modules().items()}
    reached, todo = set(), ["lumbar.infer.engine"]
    while todo:  # the closure is what the engine reaches, parent packages included, nothing more
        m = todo.pop()
        if m in reached:
            continue
        reached.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))] + sorted(graph[m])
    assert set(mods) == reached


def _named_in_code(path: Path, words: set[str]) -> list[str]:
    """Identifiers and string constants (not docstrings or comments) containing one of `words`."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    hits = []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, ast.alias):
            text = node.name
        if text and any(w in text.lower() for w in words):
            hits.append(f"{path.name}:{getattr(node, 'lineno', '?')}: {text}")
    return hits


def test_no_model_is_named_by_the_engine_export_demo_bench_or_reports():
    from lumbar.models.registry import list_models

    words = set(list_models())
    assert {"multitask", "sequence"} <= words
    files = ["infer/engine.py", "infer/inputs.py", "train/export.py", "commands/demo.py", "commands/bench.py",
             "commands/reports.py"]
    hits = [h for f in files for h in _named_in_code(SRC / f, words)]
    assert not hits, "\n".join(hits)


# --- a third model, registered from here -------------------------------------------------------------

def _register_mean_frames():
    """The smallest model: each series type's frames averaged to a few numbers, one linear layer to the
    25 x 3 logits. Its spec (inputs: frames), its trainer and nothing else."""
    import torch
    import torch.nn as nn

    from lumbar import config as cfgmod
    from lumbar.config import TrainConfig
    from lumbar.data.cache import CachedEntries
    from lumbar.layout import Run
    from lumbar.models.losses import class_weighted_ce
    from lumbar.models.registry import register_model, unregister
    from lumbar.preprocess.frames import FramesConfig, study_frames, frames_key
    from lumbar.train.oof import write_oof
    from lumbar.train.runner import load_train
    from lumbar.train.runner import CONFIGS, TRAINERS, register
    from lumbar.train.sequence import FramesDataset
    from lumbar.train.folds import cross_validate

    @dataclass
    class MeanFramesConfig(TrainConfig):
        epochs: int = 2
        batch_size: int = 4
        n_frames: int = 5
        frame_size: int = 16
        cache_dir: str = "cache"

    class MeanFrames(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.head = nn.Linear(3 * 3, 25 * 3)

        def forward(self, batch):
            f = batch["frames"].float()  # [B, 3, N, S, S]
            x = torch.cat([f.mean((2, 3, 4)), f.std((2, 3, 4)), batch["mask"].float()], 1)
            logits = self.head(x).view(-1, 25, 3)
            out = {"logits": logits, "probs": logits.float().softmax(-1)}
            if "labels" in batch:
                out["loss"] = class_weighted_ce(logits, batch["labels"])
            return out

    frames_of = lambda cfg: FramesConfig(n_frames=cfg.n_frames, size=cfg.frame_size)  # noqa: E731
    register_model("meanframes", MeanFramesConfig, inputs="frames", batch_keys=("frames", "mask"),
                   input_config=frames_of)(MeanFrames)

    @register("meanframes", order=60, config=MeanFramesConfig)
    def train_mean_frames(data, run, rc, overrides):
        cfg = cfgmod.override(MeanFramesConfig(), overrides)
        studies, cache = load_train(data, run, rc, cfg.cache_dir)
        fcfg = frames_of(cfg)
        for st in studies:
            study_frames(st, fcfg, cache)
        entries = list(CachedEntries(cache, [(st.study_id, frames_key(fcfg)) for st in studies]))
        ids = np.array([s.study_id for s in studies])
        y = np.stack([s.labels for s in studies])
        fold = np.array([s.fold for s in studies])

        def make_sets(tr, va):
            return (FramesDataset([entries[i] for i in tr], y[tr]), FramesDataset([entries[i] for i in va], y[va]))
        oof, scores, _ = cross_validate("meanframes", cfg, ids, y, fold, rc.n_folds, run, make_sets,
                                     lambda: MeanFrames(cfg), lambda probs, va, prior: probs)
        cfgmod.save(cfg, Run(run).config("meanframes"))
        write_oof(run, "meanframes", ids, oof)
        return {"fold_scores": scores}

    def cleanup():
        unregister("meanframes")
        TRAINERS.pop("meanframes", None)
        CONFIGS.pop("meanframes", None)
    return cleanup


@pytest.fixture
def third_model():
    cleanup = _register_mean_frames()
    yield
    cleanup()


def test_a_third_model_trains_exports_and_predicts_with_no_other_file_changed(third_model, trained_weights,
                                                                            synth_dir, tmp_path):
    from lumbar.infer.engine import PredictConfig, predict
    from lumbar.train.export import export_weights
    from lumbar.train.runner import RunConfig, stages, train

    assert stages().index("meanframes") == stages().index("ensemble") - 1  # its place in `train --model all`
    run = tmp_path / "run"
    shutil.copytree(trained_weights.parent / "run", run)
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = train("meanframes", synth_dir, run, RunConfig(n_folds=2, seed=0), [f"cache_dir={cache}"])
        train("ensemble", synth_dir, run, RunConfig(n_folds=2, seed=0), [])
    assert len(res["fold_scores"]) == 2 and (run / "meanframes" / "done.json").exists()
    ens = json.loads((run / "ensemble" / "ensemble.json").read_text())
    assert "meanframes" in ens["models"]

    weights = tmp_path / "weights"
    manifest = export_weights(run, synth_dir, weights)
    assert {a["fold"] for a in manifest["artefacts"] if a["kind"] == "meanframes"} == {0, 1}

    out = predict(synth_dir, weights, tmp_path / "sub.csv", PredictConfig(workers=0))
    assert set(out["active"]) == {"multitask", "sequence", "meanframes"}
    assert out["failed"] == 0 and out["timings"]["model meanframes"] > 0
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert len(sub) == 75 and np.allclose(sub[["normal_mild", "moderate", "severe"]].sum(1), 1, atol=1e-5)
