"""Logs that fit a file: no progress-bar redraws when output is not a terminal."""
import os
import subprocess
import sys


def _synth(tmp_path, progress: str):
    env = {**os.environ, "LUMBAR_PROGRESS": progress}
    return subprocess.run([sys.executable, "-m", "lumbar", "synth", "--out", str(tmp_path / progress), "--studies", "3",
                           "--test-studies", "1", "--sag-size", "64", "--axial-size", "48", "--workers", "1"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_progress_bars_only_where_asked_for(tmp_path):
    quiet = _synth(tmp_path, "")  # captured output: not a terminal
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "it/s" not in quiet.stderr  # no bar: a line per tenth of the way
    lines = [line for line in quiet.stderr.splitlines() if line.startswith("synth studies")]
    assert 1 <= len(lines) <= 10 and lines[-1].startswith("synth studies: 4/4")
    assert "synth: 3 train + 1 test studies" in quiet.stdout  # the stage's own line stays
    forced = _synth(tmp_path, "1")
    assert forced.returncode == 0 and forced.stderr.count("synth studies") > 1  # its redraws (text mode turns each carriage return into a newline)


def test_on_terminal_follows_the_override(monkeypatch):
    from lumbar.progress import bar, on_terminal

    monkeypatch.setenv("LUMBAR_PROGRESS", "0")
    assert not on_terminal() and list(bar(range(3))) == [0, 1, 2]
    assert bar(range(3), leave=False).disable and bar(range(3), quiet=True).disable and not bar(range(3)).disable
    monkeypatch.setenv("LUMBAR_PROGRESS", "1")
    assert on_terminal() and not bar(range(3)).disable and bar(range(3), quiet=True).disable


def test_the_curves_put_one_quantity_on_each_axis(tmp_path):
    import pandas as pd

    from lumbar.commands.reports import curves_axes

    run = tmp_path / "run"
    (run / "superres").mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 1], "train_loss": [0.01, 0.008], "val_score": [-29.0, -30.0],
                  "val_name": ["-PSNR on held-out patches, dB (lower is better)"] * 2}).to_csv(run / "superres" / "log.csv")
    for k in (0, 1):
        (run / "multitask" / f"fold{k}").mkdir(parents=True)
        pd.DataFrame({"epoch": [0, 1], "train_loss": [1.2, 0.9], "val_score": [0.8, 0.7]}).to_csv(
            run / "multitask" / f"fold{k}" / "log.csv")
    fig, axes = curves_axes(run)
    assert axes.shape == (2, 2)
    names = [axes[0, j].get_title() for j in range(2)]
    assert names == ["multitask", "superres"]
    assert [axes[0, j].get_ylabel() for j in range(2)] == ["training loss"] * 2
    assert axes[1, 0].get_ylabel() == "validation score (competition metric)"
    assert axes[1, 1].get_ylabel().startswith("-PSNR")
    assert len(axes[0, 0].lines) == 2 and len(axes[1, 1].lines) == 1  # a line per fold, nothing else mixed in
    ys = axes[1, 1].lines[0].get_ydata()
    assert list(ys) == [-29.0, -30.0]  # the PSNR axis holds only the PSNR


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from lumbar.commands.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bare = [f"{name} {a.option_strings or a.dest}" for name, sp in sub.choices.items() for a in sp._actions
            if not isinstance(a, argparse._HelpAction) and (not a.help or a.help.startswith("(default"))]
    assert not bare, bare
    predict = sub.choices["predict"].format_help()
    assert "processes preparing inputs" in predict  # from PredictConfig's comment on `workers`


def test_train_options_list_every_stage_override_with_what_it_does():
    import dataclasses

    from lumbar.commands.cli import stage_options
    from lumbar.train.runner import CONFIGS

    text = stage_options()
    for name, cls in CONFIGS.items():
        assert f"--model {name} ({cls.__name__}):" in text
        for f in dataclasses.fields(cls):
            assert f"  {f.name}=" in text, (name, f.name)
    bare = [line for line in text.splitlines() if line.startswith("  ") and "  " not in line.strip()]
    assert not bare, bare  # a key with its default and nothing said of it
    assert "fold_workers=0  folds trained at once" in text  # TrainConfig's comment, under both CNNs
    assert "epochs=12  the curves" in text  # SequenceTraining's own comment on a field it redefines
