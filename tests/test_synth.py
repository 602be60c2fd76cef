import filecmp

import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy.stats import spearmanr

from lumbar import schema
from lumbar.data.catalog import validate
from lumbar.data.dicom import read_series
from lumbar.data.labelmodel import LabelModel, real_stats
from lumbar.data.synth import SynthConfig, generate
from lumbar.data.synth.folder import _study_specs
from lumbar.data.synth.phantom import CSF, FAT, Phantom
from lumbar.metric import probs_to_submission, score, solution_frame
from lumbar.models.prior import fit_prior

from conftest import small_config


def test_layout_and_validate(synth_dir):
    for name in ["train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv",
                 "test_series_descriptions.csv", "sample_submission.csv", "test_labels.csv", "oracle.csv"]:
        assert (synth_dir / name).exists(), name
    assert validate(synth_dir) == []
    train = pd.read_csv(synth_dir / "train.csv")
    sample = pd.read_csv(synth_dir / "sample_submission.csv")
    oracle = pd.read_csv(synth_dir / "oracle.csv")
    test_studies = pd.read_csv(synth_dir / "test_series_descriptions.csv").study_id.unique()
    assert len(train) == 10 and len(sample) == 25 * 3 == 25 * len(test_studies)
    assert len(oracle) == 25 * 13
    np.testing.assert_allclose(oracle[list(schema.PROB_COLUMNS)].sum(axis=1), 1, atol=1e-6)
    ds = pydicom.dcmread(next((synth_dir / "train_images").rglob("*.dcm")))
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 16 and ds.Modality == "MR"
    for tag in ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "InstanceNumber"]:
        assert tag in ds


def test_deterministic_for_a_seed(synth_dir, tmp_path):
    again = generate(small_config(tmp_path / "again"), progress=False)
    for name in ["train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv", "oracle.csv"]:
        assert filecmp.cmp(synth_dir / name, again / name, shallow=False), name
    first = sorted((synth_dir / "train_images").rglob("*.dcm"))[:5]
    for f in first:
        assert filecmp.cmp(f, again / f.relative_to(synth_dir), shallow=False)
    other = generate(small_config(tmp_path / "other", seed=8), progress=False)
    assert not filecmp.cmp(synth_dir / "train.csv", other / "train.csv", shallow=False)


def _series(synth_dir):
    return pd.read_csv(synth_dir / "train_series_descriptions.csv")


def test_irregular_series_composition(synth_dir):
    counts = _series(synth_dir).groupby(["study_id", "series_description"]).size().unstack(fill_value=0)
    assert (counts["Axial T2"] >= 2).any() and (counts["Axial T2"] >= 3).any()
    assert (counts["Sagittal T1"] == 0).any() and (counts["Sagittal T2/STIR"] == 0).any()
    assert (counts["Sagittal T1"] == 2).any()
    assert len(counts) == 10  # a study with a missing type still has its other series


def test_irregular_instance_numbers_shapes_and_rescale(synth_dir):
    reversed_, gaps, mixed, rescaled = 0, 0, 0, 0
    for row in _series(synth_dir).itertuples():
        folder = synth_dir / "train_images" / str(row.study_id) / str(row.series_id)
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in folder.glob("*.dcm")]
        v = read_series(folder)
        d = np.diff(v.instance_numbers)
        reversed_ += bool(np.all(d < 0))
        gaps += bool(np.any(np.abs(d) > 1))
        mixed += len({(h.Rows, h.Columns) for h in headers}) > 1
        rescaled += any("RescaleSlope" in h for h in headers)
        assert v.pixels.shape[1:] == v.pixels[0].shape  # one matrix after reading
    assert reversed_ >= 1 and gaps >= 1 and mixed >= 1 and rescaled >= 1


def test_missing_label_cells_and_coordinates(synth_dir):
    train = pd.read_csv(synth_dir / "train.csv")
    assert train[list(schema.LABEL_COLUMNS)].isna().to_numpy().any()
    coords = pd.read_csv(synth_dir / "train_label_coordinates.csv")
    with_coords = coords.study_id.nunique()
    assert 3 <= with_coords < 10
    series = _series(synth_dir).set_index("series_id")
    for row in coords.itertuples():
        stype = series.loc[row.series_id, "series_description"]
        assert stype == schema.CONDITION_SERIES[schema.condition_slug(row.condition)]
        ds = pydicom.dcmread(synth_dir / "train_images" / str(row.study_id) / str(row.series_id) / f"{row.instance_number}.dcm")
        assert 0 <= row.x < ds.Columns and 0 <= row.y < ds.Rows
        # Left is the patient's left, +x in DICOM's patient coordinates.
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        p = np.array(ds.ImagePositionPatient, dtype=float) + float(ds.PixelSpacing[0]) * (row.x * iop[:3] + row.y * iop[3:])
        if row.condition.startswith("Left"):
            assert p[0] > 5
        elif row.condition.startswith("Right"):
            assert p[0] < -5
        else:
            assert abs(p[0]) < 5


@pytest.fixture(scope="module")
def big_draw():
    model = LabelModel.default()
    rng = np.random.default_rng(0)
    z = model.draw_latent(60_000, rng)
    return model, z, model.draw_labels(z, rng)


def test_class_frequencies_match_real_within_3pp(big_draw):
    model, z, y = big_draw
    stats = real_stats()
    for j, col in enumerate(schema.LABEL_COLUMNS):
        known = y[:, j] >= 0
        freq = np.bincount(y[known, j], minlength=3) / known.sum()
        assert np.abs(freq - np.array(stats["class_freq"][col])).max() < 0.03, col
        assert abs((~known).mean() - stats["missing_frac"][col]) < 0.01, col


def test_label_correlations_match_real(big_draw):
    model, z, y = big_draw
    yy = np.where(y < 0, 0, y)
    rho = spearmanr(yy).correlation
    real = np.array(real_stats()["spearman_ordinal_corr"])
    off = ~np.eye(25, dtype=bool)
    assert np.abs(rho - real)[off].mean() < 0.06
    assert np.corrcoef(rho[off], real[off])[0, 1] > 0.8


def test_oracle_and_prior_scores(big_draw):
    model, z, y = big_draw
    n = 20_000
    ids = np.arange(n) + 1
    sol = solution_frame(ids, y[:n])
    oracle = score(sol, probs_to_submission(ids, model.oracle(z[:n])))
    prior = score(sol, probs_to_submission(ids, np.broadcast_to(fit_prior(y[n:]), (n, 25, 3))))
    assert 0.30 <= oracle <= 0.40
    assert 0.75 <= prior <= 0.83  # the real prior scores 0.79


def test_series_rates_follow_real_composition():
    rng = np.random.default_rng(1)
    specs = _study_specs(SynthConfig(ensure_irregularities=False), 5000, rng, 0)
    two_axial = np.mean([s.n_axial == 2 for s in specs])
    assert abs(two_axial - 304 / 1975) < 0.02
    assert abs(np.mean([s.coordinates for s in specs]) - 0.7) < 0.03
    assert abs(np.mean([s.reversed[0] for s in specs]) - 0.3) < 0.03


def _phantom(f):
    ph = Phantom(f, np.random.default_rng(3))
    return ph


def test_landmarks_sit_in_their_structures():
    ph = _phantom(np.zeros(25))
    for cond in schema.CONDITIONS:
        for k in range(5):
            t = ph.tissue(ph.landmark(cond, k)[None])[0]
            assert t == (FAT if "foraminal" in cond else CSF), (cond, k)


@pytest.mark.parametrize("col", ["spinal_canal_stenosis_l4_l5", "left_neural_foraminal_narrowing_l2_l3",
                                 "right_subarticular_stenosis_l5_s1"])
def test_narrowing_is_local_and_visible(col):
    j = schema.LABEL_COLUMNS.index(col)
    f0 = np.full(25, 0.05)
    f1 = f0.copy()
    f1[j] = 0.95
    a, b = _phantom(f0), _phantom(f1)
    cond, lv = col[:-6], schema.LEVELS.index(col[-5:])
    centre = a.landmark(cond, lv)
    g = np.mgrid[-60:60:1.0, -60:60:1.0, -90:90:1.0].reshape(3, -1).T + np.array([0, centre[1], centre[2]])
    ta, tb = a.tissue(g), b.tissue(g)
    changed = ta != tb
    assert changed.sum() > 50  # visible: a real volume of tissue changes
    dist = np.linalg.norm(g[changed] - centre, axis=1)
    assert dist.max() < 25  # local: only around its own level and side
    fluid = FAT if "foraminal" in col else CSF
    near = np.linalg.norm(g - centre, axis=1) < 6
    assert (tb[near] == fluid).sum() < 0.6 * (ta[near] == fluid).sum()  # the space narrows
