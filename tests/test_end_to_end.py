"""The default synthetic profile, end to end: `make data && make train MODEL=prior && make local-score`, on
half the default folder's studies (100 + 10, the same generator and seed: the suite's time; `make demo`
runs the 200 + 20 of `make data`)."""
import subprocess
import sys

import pandas as pd
import pytest

from lumbar.commands.scoring import local_score

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "synthetic"
    subprocess.run([sys.executable, "-m", "lumbar", "synth", "--out", str(out), "--studies", "100",
                    "--test-studies", "10", "--seed", "0"], check=True, capture_output=True)
    return out, None  # (its time is a benchmark's business: make bench, not a test's)


def test_default_folder_is_valid(default_data):
    out, _ = default_data
    r = subprocess.run([sys.executable, "-m", "lumbar", "validate", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:]
    assert len(pd.read_csv(out / "train.csv")) == 100


def test_prior_and_oracle_scores(default_data, tmp_path):
    out, _ = default_data
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "lumbar", "train", "--model", "prior", "--data", str(out), "--run", str(run)],
                   check=True, capture_output=True)
    table = local_score(out, run)
    assert 0.75 <= table.loc["prior", "overall"] <= 0.90  # the real data's prior scores 0.79
    assert 0.30 <= table.loc["oracle", "overall"] <= 0.40


def test_stage_one_beats_naive_and_crops_contain_points(default_data, tmp_path):
    """Slice selector and crops on the default profile, the whole stage as it ships, in 2 folds with two of
    the four members and a short level network (the suite's time; `make demo` gives the README's numbers)."""
    out, _ = default_data
    run, cache = tmp_path / "run", tmp_path / "cache"
    for model, extra in (("slice_select", ["levels_steps=60", "members=rf,xgb"]), ("crops", [])):
        subprocess.run([sys.executable, "-m", "lumbar", "train", "--model", model, "--data", str(out), "--run", str(run),
                        "--folds", "2", f"cache_dir={cache}", *extra], check=True, capture_output=True)
    report = pd.read_csv(run / "slice_select" / "report.csv").set_index(["series_type", "method"])
    for stype in report.index.get_level_values(0).unique():
        shipped, naive = report.loc[(stype, "shipped")], report.loc[(stype, "naive")]
        assert shipped.exact >= report.loc[(stype, "ensemble")].exact, stype  # placement never ships a worse method
        assert shipped.within1 >= naive.within1 - 0.01, stype
    for stype in ("Axial T2", "Sagittal T1"):  # the levels stage one places through patient space: far past naive
        assert report.loc[(stype, "shipped")].exact > report.loc[(stype, "naive")].exact + 0.15, stype
    # The sagittal T2's one midline slice: the middle of the stack is as good a rule (0.562 against 0.584
    # on these 100 studies, 0.599 against 0.523 on the 200 of `make demo`): no worse than it beyond noise.
    t2 = report.loc["Sagittal T2/STIR"]
    assert t2.loc["shipped"].exact >= t2.loc["naive"].exact - 0.05
    contained = pd.read_csv(run / "crops" / "containment.csv")
    overall = (contained["mean"] * contained["size"]).sum() / contained["size"].sum()
    assert overall >= 0.98
