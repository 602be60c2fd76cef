"""Stage one through patient space: slice geometry, the level network, and placement by the nearest plane."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from lumbar import schema
from lumbar.data.dicom import Volume
from lumbar.preprocess import levels, placement
from lumbar.preprocess.levels import STRIDE, THUMB, LevelConfig, LevelLocaliser, decode, heatmap_loss
from lumbar.preprocess.placement import Geometry, plane_choice, plausible


def _axial(z0: float, n: int, step: float, tilt_deg: float = 0.0, size: int = 32, spacing: float = 2.0,
           first_instance: int = 1) -> Volume:
    """A stack of axial slices (rows along +y, columns along +x) centred on x = y = 0, tilted about x."""
    t = np.deg2rad(tilt_deg)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(t), np.sin(t)])
    normal = np.cross(row, col)
    half = (size - 1) / 2 * spacing
    centres = np.array([[0.0, 0.0, z0]]) + np.arange(n)[:, None] * step * normal
    positions = centres - half * row - half * col
    return Volume(np.zeros((n, size, size), np.float32), positions, normal, np.array([spacing, spacing]),
                  np.arange(first_instance, first_instance + n), np.concatenate([row, col]),
                  orientations=np.tile(np.concatenate([row, col]), (n, 1)))


def test_to_patient_and_project_are_inverse():
    v = _axial(-20.0, 6, 4.0, tilt_deg=15)
    xy = np.array([[3.5, 7.25], [20.0, 1.0]])
    p = v.to_patient(2, xy)
    dist, feet, inside = v.project(p[0])
    assert dist[2] == pytest.approx(0, abs=1e-9)
    np.testing.assert_allclose(feet[2], xy[0], atol=1e-9)
    assert inside[2]
    np.testing.assert_allclose(dist, np.abs(np.arange(6) - 2) * 4.0, atol=1e-9)  # parallel planes 4 mm apart
    far = v.to_patient(2, [[-10.0, 5.0]])[0]
    assert not v.project(far)[2][2]  # outside the image


def test_positions_from_files_or_made_up(tmp_path):
    assert _axial(0.0, 4, 4.0).has_positions
    made_up = _axial(0.0, 4, 4.0)
    made_up.positions = np.array([[0.0, 0.0, float(i)] for i in made_up.instance_numbers])
    assert not made_up.has_positions  # what read_series writes when ImagePositionPatient is missing


def _gaussian_logits(points_cells: np.ndarray, h: int = THUMB // STRIDE, sigma: float = 1.0) -> torch.Tensor:
    ys, xs = np.mgrid[0:h, 0:h].astype(np.float64)
    maps = [-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2) for x, y in points_cells]
    return torch.tensor(np.stack(maps)[None], dtype=torch.float32)


def test_decode_finds_a_point_between_cells_and_ignores_a_far_mode():
    cells = np.array([[5.3, 4.6], [10.0, 12.5], [20.7, 8.2], [3.0, 25.4], [15.5, 15.5]])
    logits = _gaussian_logits(cells)
    logits[0, 0] = torch.logsumexp(torch.stack([logits[0, 0], _gaussian_logits(np.array([[28.0, 28.0]] * 5))[0, 0] - 0.5]), 0)
    pts, mass = decode(logits)
    expected = (cells + 0.5) * STRIDE - 0.5
    np.testing.assert_allclose(pts[0].numpy(), expected, atol=0.25 * STRIDE)  # within a quarter cell
    assert float(mass[0, 0]) < float(mass[0, 1])  # the level with a second mode is less sure


def test_heatmap_loss_is_lowest_at_the_point_and_skips_unlabelled_levels():
    pts = torch.tensor([[[40.0, 20.0], [44.0, 50.0], [50.0, 80.0], [52.0, 100.0], [float("nan"), float("nan")]]])
    cells = ((pts[0, :4].numpy() + 0.5) / STRIDE - 0.5)
    logits = _gaussian_logits(np.concatenate([cells, [[0.0, 0.0]]])) * 3
    good = float(heatmap_loss(logits, pts))
    shifted = float(heatmap_loss(logits, pts + torch.tensor([6.0, 0.0])))
    assert good < shifted
    moved_unlabelled = _gaussian_logits(np.concatenate([cells, [[30.0, 30.0]]])) * 3
    assert float(heatmap_loss(moved_unlabelled, pts)) == pytest.approx(good, rel=1e-6)


def _blob_sample(rng):
    """A 'sagittal slice' whose five discs are bright blobs down a curved column, and their points."""
    x0, y0, pitch = rng.uniform(45, 80), rng.uniform(15, 30), rng.uniform(16, 20)
    pts = np.array([[x0 + 4 * np.sin(k / 2), y0 + k * pitch] for k in range(5)])
    ys, xs = np.mgrid[0:THUMB, 0:THUMB]
    img = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 18.0) * (1 - 0.12 * k) for k, (x, y) in enumerate(pts))
    img = img + rng.normal(0, 0.05, img.shape)
    stack = np.stack([img, img, img]).astype(np.float32)
    return stack, pts, []


def test_the_level_network_learns_where_the_discs_are():
    rng = np.random.default_rng(0)
    train = [_blob_sample(rng) for _ in range(24)]
    test = [_blob_sample(rng) for _ in range(8)]
    loc = LevelLocaliser(LevelConfig(steps=150, width=8, lr=3e-3))
    before = np.abs(loc.predict(np.stack([s[0] for s in test]))[0] - np.stack([s[1] for s in test])).mean()
    loc.fit(train)
    pts, _ = loc.predict(np.stack([s[0] for s in test]))
    err = np.linalg.norm(pts - np.stack([s[1] for s in test]), axis=-1)
    assert np.median(err) < 4.0, np.median(err)  # pixels, on a 128 px image (untrained: tens)
    assert before > 10


def test_localiser_save_load_round_trip_and_a_thumb_mismatch_is_named(tmp_path):
    loc = LevelLocaliser(LevelConfig(steps=1, width=8))
    loc.save(tmp_path, {"offsets": {}, "choice": {}, "sigma_mm": 3.0, "max_gap_mm": 10.0})
    back, meta = LevelLocaliser.load(tmp_path)
    x = np.random.default_rng(1).random((2, 3, THUMB, THUMB)).astype(np.float32)
    np.testing.assert_allclose(back.predict(x)[0], loc.predict(x)[0], atol=1e-5)
    meta["thumb"] = 96
    (tmp_path / "levels.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="levels.json.*96"):
        LevelLocaliser.load(tmp_path)


def test_thumbnail_coordinates_round_trip():
    xy = np.array([[0.0, 0.0], [511.0, 383.0], [100.25, 77.5]])
    back = levels.from_thumb(levels.to_thumb(xy, (384, 512)), (384, 512))
    np.testing.assert_allclose(back, xy, atol=1e-9)


def test_the_nearest_plane_over_every_series_and_block():
    # two series: one of blocks angled to their disc, one plain stack; the level point sits 0.4 mm
    # off slice 2 of the angled series
    angled = _axial(-10.0, 5, 4.0, tilt_deg=20)
    stack = _axial(-30.0, 6, 5.0)
    point = angled.to_patient(2, [[15.0, 15.0]])[0] + 0.4 * angled.normal
    geo = Geometry(max_gap_mm=6.0)
    sid, idx, dist = plane_choice([(11, stack), (22, angled)], point, None, 1, "geometry", geo)
    assert (sid, idx) == (22, 2) and dist == pytest.approx(0.4, abs=1e-6)
    # fused: a classifier sure of the next slice (4 mm off) outweighs 0.4 mm at sigma 3 mm
    proba = np.full((5, 6), 0.01)
    proba[3, 1] = 0.99
    assert plane_choice([(22, angled)], point, {22: proba}, 1, "fused", geo)[:2] == (22, 3)
    # nothing within the gap: no geometric choice
    assert plane_choice([(11, stack)], point + np.array([0, 0, 200.0]), None, 1, "geometry", geo) is None


def test_points_that_are_not_a_spine_are_refused():
    P = np.array([[0, 0, 70.0], [0, 2, 35], [0, 3, 0], [0, 2, -35], [0, 0, -70]])
    assert plausible(P)
    assert not plausible(P[[0, 2, 1, 3, 4]])  # out of order
    squashed = P.copy()
    squashed[1, 2] = 66.0  # two levels 4 mm apart
    assert not plausible(squashed)


def test_place_moves_axial_choices_and_centres_every_crop():
    from lumbar.preprocess.crops import CROP_NAMES

    vols = {schema.AXIAL: [(5, _axial(-90.0, 50, 4.0))]}
    P = np.array([[1.0, 3.0, 70.0 - 35 * k] for k in range(5)])
    classifier = {f"axial_{lv}": (5, 0) for lv in schema.LEVELS}
    out = placement.place(classifier, vols, {}, P, Geometry(choice={schema.AXIAL: "geometry"}))
    v = vols[schema.AXIAL][0][1]
    for k, lv in enumerate(schema.LEVELS):
        sid, idx, cx, cy = out[f"axial_{lv}"]
        assert idx == int(np.argmin(np.abs(v.centres[:, 2] - P[k, 2])))
        np.testing.assert_allclose(v.to_patient(idx, [[cx, cy]])[0][:2], P[k, :2], atol=1e-6)
    kept = placement.place(classifier, vols, {}, P, Geometry(choice={schema.AXIAL: "ensemble"}))
    assert all(kept[n][:2] == (5, 0) for n in classifier)  # the classifiers' slices, centred anyway
    assert placement.place(classifier, vols, {}, None, Geometry()) == classifier
    assert set(out) <= set(CROP_NAMES)


def test_selection_arrays_keep_centres():
    from lumbar.preprocess.pipeline import arrays_to_selection, selection_to_arrays

    sel = {"sag_t2": (3, 7, 40.5, 60.25), "axial_l1_l2": (4, 2)}
    assert arrays_to_selection(selection_to_arrays(sel)) == sel


def test_a_centre_moves_the_box_not_its_size():
    from lumbar.preprocess.crops import CropRegions

    reg = CropRegions()
    img = np.zeros((64, 64), np.float32)
    box, _ = reg.box("axial_l1_l2", img)
    moved, placed = reg.box("axial_l1_l2", img, (10.0, 50.0))
    assert placed
    assert moved[2] - moved[0] == pytest.approx(box[2] - box[0])
    assert (moved[:2] + moved[2:]) / 2 == pytest.approx([10.0, 50.0])


def _region_sample(rng, spacing=(0.8, 0.8)):
    """A labelled canal 'region' with five small bright discs, as fine_sample cuts it."""
    h, w = 260, 120
    pts = np.array([[rng.uniform(50, 70), 30 + 45 * k + rng.uniform(-4, 4)] for k in range(5)])
    ys, xs = np.mgrid[0:h, 0:w]
    img = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 12.0) for x, y in pts) + rng.normal(0, 0.05, (h, w))
    region = np.stack([img] * 3).astype(np.float16)
    origin = np.array([10.0, 20.0])
    return region, origin, np.array(spacing), pts + origin


def test_the_second_look_finds_a_point_its_patch_was_cut_off_centre():
    from lumbar.preprocess.levels import FINE, fine_patch

    rng = np.random.default_rng(3)
    train = [_region_sample(rng) for _ in range(12)]
    loc = LevelLocaliser(LevelConfig(steps=120, width=8, lr=3e-3)).fit_fine(train)
    assert loc.fine is not None
    region, origin, spacing, pts = _region_sample(rng)
    stack = np.zeros((3, 400, 300), np.float32)
    o = origin.astype(int)
    stack[:, o[1]:o[1] + region.shape[1], o[0]:o[0] + region.shape[2]] = region
    first_look = pts + rng.uniform(-6, 6, pts.shape)  # a first look up to ~5 mm off
    refined = loc.refine(stack, first_look, spacing)
    before = np.linalg.norm(first_look - pts, axis=1)
    after = np.linalg.norm(refined - pts, axis=1)
    assert np.median(after) < 0.5 * np.median(before), (after, before)
    patch, box = fine_patch(stack, pts[0], spacing)  # a patch centred on a point holds it at its centre
    assert patch.shape == (3, FINE, FINE)
    np.testing.assert_allclose((box[:2] + box[2:]) / 2, pts[0])


def test_both_looks_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(4)
    loc = LevelLocaliser(LevelConfig(steps=2, width=8)).fit_fine([_region_sample(rng)])
    loc.save(tmp_path, {"offsets": {}, "choice": {}, "sigma_mm": 3.0, "max_gap_mm": 10.0})
    back, meta = LevelLocaliser.load(tmp_path)
    assert back.fine is not None and meta["fine"] is not None
    region, origin, spacing, pts = _region_sample(rng)
    stack = np.zeros((3, 400, 300), np.float32)
    stack[:, 20:280, 10:130] = region
    np.testing.assert_allclose(back.refine(stack, pts, spacing), loc.refine(stack, pts, spacing), atol=1e-4)


def test_the_levels_figure_draws_each_study(tmp_path):
    from lumbar.train.levels import level_points_figure

    rng = np.random.default_rng(5)
    ex = [{"study_id": i, "image": rng.random((THUMB, THUMB)), "found": rng.uniform(0, THUMB, (5, 2)),
           "labelled": rng.uniform(0, THUMB, (5, 2)), "error_mm": 2.5} for i in range(3)]
    out = level_points_figure(ex, tmp_path / "levels.png")
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.shape[1] > img.shape[0] * 2  # three panels side by side
