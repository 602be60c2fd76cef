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
    assert "synth studies" not in quiet.stderr and "it/s" not in quiet.stderr
    assert "synth: 3 train + 1 test studies" in quiet.stdout  # the stage's own line stays
    forced = _synth(tmp_path, "1")
    assert forced.returncode == 0 and forced.stderr.count("synth studies") > 1  # its redraws (text mode turns each carriage return into a newline)


def test_on_terminal_follows_the_override(monkeypatch):
    from lumbar.progress import bar, on_terminal

    monkeypatch.setenv("LUMBAR_PROGRESS", "0")
    assert not on_terminal() and bar(range(3)).disable
    monkeypatch.setenv("LUMBAR_PROGRESS", "1")
    assert on_terminal() and not bar(range(3)).disable and bar(range(3), quiet=True).disable
