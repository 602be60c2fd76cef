"""Each level's slice from local evidence (evidence.py), the sagittal T1 levels' own slices (placement),
and crops whose rows around each level come from that level's slice (stage_one.banded)."""
import numpy as np
import pytest

from lumbar import schema
from lumbar.data.dicom import Volume
from lumbar.preprocess import evidence, placement
from lumbar.preprocess.evidence import FEATURES, Scorer, candidates, features
from lumbar.preprocess.placement import Geometry, per_level, slice_for, with_levels


def _sagittal(n: int, step: float, size: int = 48, spacing: float = 1.0, pixels=None) -> Volume:
    """Sagittal slices (columns along +y, rows along -z, i.e. down) stacked along -x from x = +step*(n-1)/2,
    centred on y = z = 0."""
    row, col = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    normal = np.cross(row, col)  # -x
    half = (size - 1) / 2 * spacing
    centres = (np.arange(n) - (n - 1) / 2)[:, None] * step * normal[None, :]
    positions = centres - half * row - half * col
    px = np.zeros((n, size, size), np.float32) if pixels is None else pixels
    return Volume(px, positions, normal, np.array([spacing, spacing]), np.arange(1, n + 1), np.concatenate([row, col]),
                  orientations=np.tile(np.concatenate([row, col]), (n, 1)))


def _foramen_volume(rng, n=9, step=4.0, size=48):
    """A volume whose bright ellipsoid (a foramen's fat) is centred at a random x between two planes,
    and the labelled slice (the plane nearest its centre), its centre and a target off by up to 1.4 slices."""
    v = _sagittal(n, step, size)
    cx = rng.uniform(-step, step)
    centre = np.array([cx, rng.uniform(-8, 8), rng.uniform(-8, 8)])
    labelled = int(np.argmin(np.abs(v.centres[:, 0] - cx)))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    for j in range(n):
        _, xy, _ = v.project(centre)
        r2 = ((xs - xy[j, 0]) / 6) ** 2 + ((ys - xy[j, 1]) / 8) ** 2 + ((v.centres[j, 0] - cx) / 5.0) ** 2
        v.pixels[j] = 0.3 + 0.6 * (r2 <= 1) + rng.normal(0, 0.08, (size, size))
    target = centre + np.array([rng.choice([-1, 1]) * rng.uniform(0.6, 1.4) * step, 0, 0])
    return v, labelled, target


def _groups(rng, count):
    out, nearest = [], []
    for _ in range(count):
        v, labelled, target = _foramen_volume(rng)
        cands = candidates([(1, v)], target, 12.0)
        X = features(cands, lambda sid: v.pixels, lambda sid: v.pixel_spacing, None, 1)
        out.append((X, np.array([c.slice == labelled for c in cands])))
        nearest.append(cands[0].slice == labelled)
    return out, nearest


def test_the_scorer_finds_the_slice_that_shows_the_structure_where_the_nearest_plane_misses():
    rng = np.random.default_rng(0)
    train, _ = _groups(rng, 60)
    scorer = Scorer.fit(train)
    test, nearest = _groups(rng, 40)
    picked = np.mean([y[scorer.best(X)] for X, y in test])
    assert np.mean(nearest) < 0.5  # the target is a slice off most of the time
    assert picked >= 0.85
    again = Scorer.from_dict(scorer.to_dict())  # what levels.json keeps
    assert all(again.best(X) == scorer.best(X) for X, _ in test)


def test_a_scorer_of_other_features_is_refused_and_too_few_examples_fit_none():
    with pytest.raises(ValueError, match="features"):
        Scorer.from_dict({"mean": [0.0] * 3, "scale": [1.0] * 3, "coef": [1.0] * 3})
    X = np.zeros((3, len(FEATURES)))
    assert Scorer.fit([(X, np.array([True, False, False]))] * 5) is None
    assert Scorer.fit([(X, np.zeros(3, bool))] * 50) is None  # no group holds its labelled slice


def test_candidates_are_the_nearest_planes_within_reach_and_in_view():
    v = _sagittal(15, 3.0)
    target = v.to_patient(7, [[20.0, 20.0]])[0] + 0.5 * v.normal
    cands = candidates([(4, v)], target, 7.0)
    assert [c.slice for c in cands] == [7, 8, 6, 9, 5]  # within 7 mm: 0.5, 2.5, 3.5, 5.5, 6.5
    assert cands[0].distance == pytest.approx(0.5)
    np.testing.assert_allclose(cands[0].xy, (20.0, 20.0), atol=1e-9)
    assert candidates([(4, v)], target + np.array([0, 500.0, 0]), 7.0) == []  # outside every image
    # the disc windows' point: ANTERIOR_MM in front (LPS -y), i.e. that many columns left on this sagittal grid
    np.testing.assert_allclose(cands[0].front_xy, (20.0 - evidence.ANTERIOR_MM, 20.0), atol=1e-9)
    assert len(candidates([(4, v)], target, 100.0)) == evidence.MAX_CANDIDATES


def test_window_means_are_in_mm_so_the_pixel_size_does_not_change_them():
    img1 = np.zeros((40, 40), np.float32)
    img1[15:25, 15:25] = 1.0  # a 10 mm square at 1 mm per pixel
    img2 = np.kron(img1, np.ones((2, 2), np.float32))  # the same at 0.5 mm
    a = evidence.window_means(img1, (19.5, 19.5), (1.0, 1.0))
    b = evidence.window_means(img2, (39.5, 39.5), (0.5, 0.5))
    np.testing.assert_allclose(a, b, atol=0.08)
    assert a[0] == pytest.approx(1.0) and a[-1] < 0.5


def _rolled_points(v: Volume, slices: list[int]) -> np.ndarray:
    """Five level points down the spine, each on the plane of its own slice of v (a rolled spine)."""
    return np.stack([v.to_patient(s, [[24.0, 8.0 + 8 * k]])[0] for k, s in enumerate(slices)])


def test_a_sagittal_t1_side_takes_each_levels_own_slice():
    v = _sagittal(12, 3.5)
    slices = [4, 4, 5, 6, 6]
    P = _rolled_points(v, slices)
    geo = Geometry(offsets={"sag_t1_left": [0.0, 0.0, 0.0], "sag_t1_right": [0.0, 0.0, 0.0]}, choice={schema.SAG_T1: "geometry"})
    out = placement.place({"sag_t1_left": (9, 0)}, {schema.SAG_T1: [(9, v)]}, {}, P, geo)
    choice = out["sag_t1_left"]
    assert choice[:2] == (9, 5)  # the central slice: the median of the levels'
    assert [slice_for(choice, k) for k in range(5)] == slices
    _, rows = per_level(choice)
    np.testing.assert_allclose(rows, [8.0 + 8 * k for k in range(5)], atol=1e-6)  # each level's row on its slice
    kept = placement.place({"sag_t1_left": (9, 2)}, {schema.SAG_T1: [(9, v)]}, {}, P,
                           Geometry(offsets=geo.offsets, choice={schema.SAG_T1: "ensemble"}))
    assert per_level(kept["sag_t1_left"]) is None and slice_for(kept["sag_t1_left"], 3) == 2


def test_a_side_keeps_the_classifiers_series_where_it_reaches_the_points():
    # two T1 series over the same spine (the labels are in one of them): the classifiers' series stays
    # unless none of its planes comes within reach
    a, b = _sagittal(12, 3.5), _sagittal(12, 3.5)
    P = _rolled_points(a, [4, 4, 5, 6, 6])
    geo = Geometry(choice={schema.SAG_T1: "geometry"})
    vols = {schema.SAG_T1: [(1, a), (2, b)]}
    for classifiers in (1, 2):
        out = placement.place({"sag_t1_left": (classifiers, 0)}, vols, {}, P, geo)
        assert out["sag_t1_left"][0] == classifiers
    far = _sagittal(12, 3.5)
    far.positions = far.positions + np.array([200.0, 0, 0])  # nowhere near the points
    out = placement.place({"sag_t1_left": (3, 0)}, {schema.SAG_T1: [(1, a), (3, far)]}, {}, P, geo)
    assert out["sag_t1_left"][0] == 1


def test_the_local_method_reads_the_pixels_and_falls_back_to_the_nearest_plane_without_a_scorer():
    rng = np.random.default_rng(1)
    train, _ = _groups(rng, 60)
    scorer = Scorer.fit(train)
    v, labelled, target = _foramen_volume(rng)
    while labelled == int(np.argmin(v.project(target)[0])):  # a case the nearest plane gets wrong
        v, labelled, target = _foramen_volume(rng)
    P = np.stack([target + np.array([0, 0, 40.0 - 20 * k]) for k in range(5)])
    P[2] = target
    local = Geometry(choice={schema.SAG_T1: "local"}, scorers={schema.SAG_T1: scorer.to_dict()}, max_gap_mm=12.0)
    out = placement.place({}, {schema.SAG_T1: [(3, v)]}, {}, P, local)
    assert slice_for(out["sag_t1_left"], 2) == labelled
    plain = placement.place({}, {schema.SAG_T1: [(3, v)]}, {}, P, Geometry(choice={schema.SAG_T1: "local"}, max_gap_mm=12.0))
    assert slice_for(plain["sag_t1_left"], 2) == int(np.argmin(v.project(target)[0]))


def test_selection_arrays_keep_each_levels_slice():
    from lumbar.preprocess.pipeline import arrays_to_selection, selection_to_arrays

    sel = {"sag_t1_left": with_levels(3, 6, (40.5, 60.25), [5, 6, 6, 7, 7], [10.0, 20.0, 30.0, 40.0, 50.0]),
           "sag_t1_right": with_levels(3, 2, None, [2, 2, 1, 2, 2], [np.nan, 20.0, 30.0, np.nan, 50.0]),
           "sag_t2": (4, 7, 1.0, 2.0), "axial_l1_l2": (5, 2)}
    back = arrays_to_selection(selection_to_arrays(sel))
    assert back.keys() == sel.keys()
    for name in sel:
        np.testing.assert_equal(np.asarray(back[name], np.float64), np.asarray(sel[name], np.float64))


def test_a_crops_rows_around_each_level_come_from_that_levels_slice():
    from lumbar.preprocess.pipeline import banded

    n, size = 6, 64
    v = _sagittal(n, 3.0, size, pixels=np.stack([np.full((size, size), float(j), np.float32) for j in range(n)]))
    box = np.array([0.0, 0.0, size, size])  # output pixel u samples source pixel u
    rows = [8.0, 20.0, 32.0, 44.0, 56.0]
    img = banded(v.pixels, v, 2, ([1, 1, 3, 4, 4], rows), box, size)
    centre = img[1]  # the middle channel: the slice itself (the others its neighbours)
    assert centre[8, 30] == pytest.approx(1.0) and centre[20, 30] == pytest.approx(1.0)
    assert centre[32, 30] == pytest.approx(3.0) and centre[44, 30] == pytest.approx(4.0)
    assert centre[25, 30] == pytest.approx(1.0) and centre[27, 30] == pytest.approx(3.0)  # the bands meet halfway
    assert img[0, 32, 30] == pytest.approx(2.0) and img[2, 32, 30] == pytest.approx(4.0)  # and neighbours travel with it
    unknown = banded(v.pixels, v, 2, ([2, 2, 2, 2, 2], [np.nan] * 5), box, size)
    np.testing.assert_array_equal(unknown, banded(v.pixels, v, 2, None, box, size))
    assert np.all(unknown[1] == 2.0)


def test_a_level_is_compared_with_the_slice_its_own_choice_shows_it_on():
    from lumbar.train.selection import _compare

    choice = {"sag_t1_left": with_levels(3, 6, None, [5, 6, 6, 7, 7], [np.nan] * 5), "axial_l1_l2": (8, 4)}
    truth = [("sag_t1_left", 3, 5, 0), ("sag_t1_left", 3, 6, 4), ("sag_t1_left", 9, 7, 3), ("axial_l1_l2", 8, 4, 0)]
    from types import SimpleNamespace as NS

    f = {schema.SAG_T1: [NS(series_id=3, volume=_sagittal(12, 4.0)), NS(series_id=9, volume=_sagittal(12, 4.0))],
         schema.AXIAL: [NS(series_id=8, volume=_blocks([5, 4]))]}
    got = _compare(truth, choice, f)
    assert [(r["exact"], r["within1"]) for r in got] == [(True, True), (False, True), (False, False), (True, True)]
    assert [r["kind"] for r in got] == ["stack"] * 3 + ["block, odd"]
    assert [r["series_type"] for r in got] == [schema.SAG_T1] * 3 + [schema.AXIAL]


def _blocks(sizes: list[int], step: float = 4.0, gap: float = 30.0) -> Volume:
    """Axial-like blocks of the given slice counts along one normal, `gap` mm between blocks."""
    depths, blocks, at = [], [], 0.0
    for b, n in enumerate(sizes):
        depths += [at + k * step for k in range(n)]
        blocks += [b] * n
        at += (n - 1) * step + gap
    v = _sagittal(len(depths), step)
    shift = (np.array(depths) - v.depth)[:, None] * v.normal[None, :]
    return Volume(v.pixels, v.positions + shift, v.normal, v.pixel_spacing, v.instance_numbers, v.orientation,
                  orientations=v.orientations, blocks=np.array(blocks))


def test_block_offsets_measure_from_the_middle_of_short_blocks_only():
    v = _blocks([3, 4, 12])
    assert [evidence.acquisition_kind(v, i) for i in (0, 4, 9)] == ["block, odd", "block, even", "stack"]
    assert evidence.acquisition_kind(_sagittal(30, 1.5), 3) == "thin"
    assert v.slice_step() == pytest.approx(4.0) and v.slice_step(v.blocks == 2) == pytest.approx(4.0) and _sagittal(30, 1.5).slice_step() == pytest.approx(1.5)
    one = _sagittal(1, 4.0)
    one.thickness = 3.0
    assert one.slice_step() == 3.0  # one slice: its thickness stands in
    off = evidence.block_offsets(v)
    np.testing.assert_allclose(off[:3], [4, 0, 4], atol=1e-6)  # odd: the middle slice is the block's middle
    np.testing.assert_allclose(off[3:7], [6, 2, 2, 6], atol=1e-6)  # even: two slices share it
    assert (off[7:] == 0).all()  # a long stack has no middle that means anything


def test_the_scorer_learns_that_blocks_are_centred_on_their_disc():
    """Where the labelled slice is each short block's middle and the target is up to a slice off, the
    scorer learns the block feature and beats the nearest plane."""
    rng = np.random.default_rng(1)

    def groups(count):
        out, nearest = [], []
        for _ in range(count):
            v = _blocks([5])
            target = v.to_patient(2, [[24.0, 24.0]])[0] + rng.uniform(-5, 5) * v.normal
            cands = candidates([(1, v)], target, 12.0)
            X = features(cands, lambda sid: v.pixels, lambda sid: v.pixel_spacing, None, 1)
            out.append((X, np.array([c.slice == 2 for c in cands])))
            nearest.append(cands[0].slice == 2)
        return out, nearest

    scorer = Scorer.fit(groups(60)[0])
    test, nearest = groups(40)
    assert np.mean(nearest) < 0.7 and np.mean([y[scorer.best(X)] for X, y in test]) >= 0.95
