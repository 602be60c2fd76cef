"""The tests' tiny stack: every stage trained on a small synthetic folder (2 folds, tiny configs) and
exported. The session fixtures (conftest.py) call it in this process; tests/test_images.py runs it as a
script in another image's venv, to get weights exported under that image's library versions:

    <venv>/bin/python tests/tiny_stack.py DATA ROOT      # writes ROOT/run, ROOT/cache, ROOT/weights
"""
import shutil
import sys
import warnings
from pathlib import Path

TINY_MULTITASK = ["epochs=1", "kp_input=48", "patch_sag=16", "patch_axial=16", "patch_input=32", "batch_size=4"]
TINY_SEQUENCE = ["epochs=1", "n_frames=5", "frame_size=32", "d_model=32", "layers=1", "heads=2", "batch_size=4",
                 "kp_size=32", "patch_side=12", "patch_input=16"]


def train_stage_one(data: Path, run: Path, cache: Path):
    """slice_select (every member) + crops, 2 folds."""
    from lumbar.train.runner import RunConfig, train

    rc = RunConfig(n_folds=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train("slice_select", data, run, rc, [f"cache_dir={cache}", "workers=1", "levels_steps=20", "rank_epochs=5"])
        return train("crops", data, run, rc, [f"cache_dir={cache}", "sag_size=64", "axial_size=48"])


def train_models(data: Path, run: Path, cache: Path, weights: Path) -> Path:
    """prior, multitask, sequence, ensemble on a run that has stage one, then the export into `weights`."""
    from lumbar.train.export import export_weights
    from lumbar.train.runner import RunConfig, train

    rc = RunConfig(n_folds=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train("prior", data, run, rc, [])
        train("multitask", data, run, rc, [f"cache_dir={cache}", *TINY_MULTITASK])
        train("sequence", data, run, rc, [f"cache_dir={cache}", *TINY_SEQUENCE])
        train("ensemble", data, run, rc, [])
    export_weights(run, data, weights)
    return weights


def main(data: str, root: str) -> None:
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    train_stage_one(Path(data), root / "run", root / "cache")
    train_models(Path(data), root / "run", root / "cache", root / "weights")
    print(root / "weights")


if __name__ == "__main__":
    main(*sys.argv[1:3])
