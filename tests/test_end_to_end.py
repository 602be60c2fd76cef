"""The default synthetic folder, end to end: `make data && make train MODEL=prior && make local-score`."""
import subprocess
import sys
import time

import pandas as pd
import pytest

from lumbar.scoring import local_score

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "synthetic"
    t = time.time()
    subprocess.run([sys.executable, "-m", "lumbar", "synth", "--out", str(out), "--studies", "200",
                    "--test-studies", "20", "--seed", "0"], check=True, capture_output=True)
    return out, time.time() - t


def test_default_folder_is_fast_and_valid(default_data):
    out, seconds = default_data
    assert seconds < 120, f"200 studies took {seconds:.0f}s"
    r = subprocess.run([sys.executable, "-m", "lumbar", "validate", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:]
    assert len(pd.read_csv(out / "train.csv")) == 200


def test_prior_and_oracle_scores(default_data, tmp_path):
    out, _ = default_data
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "lumbar", "train", "--model", "prior", "--data", str(out), "--run", str(run)],
                   check=True, capture_output=True)
    table = local_score(out, run)
    assert 0.75 <= table.loc["prior", "overall"] <= 0.90  # the real data's prior scores 0.79
    assert 0.30 <= table.loc["oracle", "overall"] <= 0.40
