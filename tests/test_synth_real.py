"""The "real" synthetic profile: the real data's geometry and irregularities, every one of them present."""
import numpy as np
import pandas as pd
import pydicom
import pytest

from lumbar import schema
from lumbar.data.catalog import validate
from conftest import real_folder

SIZES = {96, 128, 152, 160}  # 384, 512, 608, 640 at size_scale 0.25


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    return real_folder(tmp_path_factory.mktemp("real") / "competition")


def headers(root, split):
    frame = pd.read_csv(root / f"{split}_series_descriptions.csv")
    out = []
    for r in frame.itertuples(index=False):
        files = sorted((root / f"{split}_images" / str(r.study_id) / str(r.series_id)).glob("*.dcm"))
        ds = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        out.append((r, ds))
    return out


def angle(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(np.dot(a, b)), -1, 1))))


def normal(d) -> np.ndarray:
    iop = np.array(d.ImageOrientationPatient, float)
    return np.cross(iop[:3], iop[3:])


def test_real_profile_validates_and_shows_every_irregularity(real_dir):
    assert [p.text() for p in validate(real_dir)] == []
    train, test = headers(real_dir, "train"), headers(real_dir, "test")
    every = train + test
    axial = [(r, ds) for r, ds in every if r.series_description == schema.AXIAL and ds]

    # angled blocks: an axial series of several orientations, blocks of 3-6 slices, tilts differing > 8 deg
    blocks = []
    for r, ds in axial:
        with_iop = [d for d in ds if "ImageOrientationPatient" in d]
        groups = {}
        for d in with_iop:
            groups.setdefault(tuple(np.round(np.array(d.ImageOrientationPatient, float), 3)), []).append(d)
        if len(groups) >= 2:
            normals = [normal(g[0]) for g in groups.values()]
            spread = max(angle(a, b) for a in normals for b in normals)
            blocks.append((len(groups), spread, sorted(len(g) for g in groups.values())))
    assert blocks, "no axial series made of angled blocks"
    assert max(s for _, s, _ in blocks) > 8
    assert all(3 <= n <= 6 for _, _, sizes in blocks for n in sizes)

    # continuous thin stacks: one orientation, slices closer than 2.6 mm
    thin = [len(ds) for r, ds in axial if "SpacingBetweenSlices" in ds[0] and float(ds[0].SpacingBetweenSlices) < 2.6
            and len({tuple(np.round(np.array(d.ImageOrientationPatient, float), 3)) for d in ds
                     if "ImageOrientationPatient" in d}) == 1]
    assert thin and max(thin) >= 20

    # real matrix sizes, and a series mixing two
    rows = [{int(d.Rows) for d in ds} for _, ds in every if ds]
    assert sum(len(r & SIZES) > 0 for r in rows) >= 0.9 * len(rows)
    assert any(len(r) == 2 for r in rows), "no series mixes two matrix sizes"
    spacing = [float(ds[0].PixelSpacing[0]) * 0.25 for _, ds in every if ds and "PixelSpacing" in ds[0]]
    assert 0.3 < np.median(spacing) < 0.8  # at full size: the real 0.4-0.7 mm

    # flipped row direction: sagittal rows that run posterior->anterior, or axial rows right->left
    def flipped(r, d):
        iop = np.array(d.ImageOrientationPatient, float)
        return iop[1] < -0.5 if r.series_description != schema.AXIAL else iop[0] < -0.5
    assert any(flipped(r, ds[0]) for r, ds in every if ds and "ImageOrientationPatient" in ds[0])

    assert any(ds and ds[0].PhotometricInterpretation == "MONOCHROME1" for _, ds in every)
    assert any(ds and "RescaleIntercept" in ds[0] for _, ds in every)

    # the test split lacks tags now and then, has an empty series folder and a description the CSV swaps
    test_files = [d for _, ds in test for d in ds]
    assert any("SliceThickness" not in d for d in test_files)
    assert any("PixelSpacing" not in d for d in test_files)
    assert any("ImageOrientationPatient" not in d for d in test_files)
    assert all("SliceThickness" in d and "PixelSpacing" in d for _, ds in train for d in ds)
    assert any(not ds for _, ds in test), "no empty series folder"
    assert any(ds and ds[0].SeriesDescription != r.series_description for r, ds in test)

    # studies with several axial series covering different levels
    frame = pd.read_csv(real_dir / "train_series_descriptions.csv")
    assert (frame[frame.series_description == schema.AXIAL].groupby("study_id").size() >= 2).any()


def test_annotator_noise_moves_points_a_few_pixels_and_sometimes_a_slice():
    from lumbar.data.synth.phantom import Phantom
    from lumbar.data.synth.studies import _coordinates, _plane_stack

    rng = np.random.default_rng(0)
    ph = Phantom(np.full(25, 0.3), rng, tilt=True)
    ex, ey, ez = np.eye(3)
    geoms = _plane_stack(ph.center(), ey, -ez, ex, 15, 4.0, 128, 300.0)
    first_of = {schema.SAG_T2: (1, geoms, np.arange(1, 16)), schema.SAG_T1: (2, geoms, np.arange(1, 16))}
    exact = pd.DataFrame(_coordinates(ph, first_of, 5))
    noisy = pd.DataFrame(_coordinates(ph, first_of, 5, np.random.default_rng(1), noise_px=1.5, neighbour_rate=0.0))
    d = np.hypot(noisy.x - exact.x, noisy.y - exact.y)
    assert 0.5 < d.mean() < 4.0 and (noisy.instance_number == exact.instance_number).all()
    moved = pd.DataFrame(_coordinates(ph, first_of, 5, np.random.default_rng(2), noise_px=0.0, neighbour_rate=1.0))
    assert ((moved.instance_number - exact.instance_number).abs() == 1).all()


def test_lordosis_tilts_the_discs_apart():
    from lumbar.data.synth.phantom import Phantom

    ph = Phantom(np.full(25, 0.3), np.random.default_rng(4), tilt=True)
    normals = [ph.disc_axes(k)[0] for k in range(5)]
    assert 12 <= angle(normals[0], normals[4]) <= 25.5
    flat = Phantom(np.full(25, 0.3), np.random.default_rng(4))
    assert not flat.tilted and np.allclose(flat.theta, 0)
