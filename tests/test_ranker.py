"""The axial slice ranker (preprocess/ranker.py): patches in mm around each candidate's target, a CNN
that learns which plane shows the structure through its middle, kept as JSON and refused when it does
not fit the code."""
import json

import numpy as np
import pytest

from lumbar import schema
from lumbar.data.dicom import Volume
from lumbar.preprocess import placement
from lumbar.preprocess.evidence import FEATURES, candidates, features
from lumbar.preprocess.placement import Geometry
from lumbar.preprocess.ranker import PATCH, PATCH_MM, Ranker, candidate_patches, patch_stack, ranker_from


def _axial(n: int, step: float, size: int = 64, spacing: float = 1.0, blocks=None) -> Volume:
    """Axial slices (rows along +x, columns along +y) stacked upwards (+z) around z = 0."""
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    normal = np.cross(row, col)
    half = (size - 1) / 2 * spacing
    positions = (np.arange(n) - (n - 1) / 2)[:, None] * step * normal[None, :] - half * row - half * col
    v = Volume(np.zeros((n, size, size), np.float32), positions, normal, np.array([spacing, spacing]),
               np.arange(1, n + 1), np.concatenate([row, col]), orientations=np.tile(np.concatenate([row, col]), (n, 1)))
    if blocks is not None:
        v.blocks = np.asarray(blocks)
    return v


def _disc_level(rng, n=9, step=4.0):
    """A level whose recesses are two bright ellipses widest through its mid-plane (at a random height
    between two planes) and tapering above and below, on a background of the same mean brightness as
    the ellipses' surroundings; the labelled slice is the plane nearest the mid-plane; the target is
    the mid-plane's point moved up to 1.4 slices up or down (a level point's error)."""
    v = _axial(n, step)
    z0 = rng.uniform(-step, step)
    centre = np.array([rng.uniform(-6, 6), rng.uniform(-6, 6), z0])
    labelled = int(np.argmin(np.abs(v.centres[:, 2] - z0)))
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float64)
    _, xy, _ = v.project(centre)
    for j in range(n):
        r = max(0.0, 1 - ((v.centres[j, 2] - z0) / 7.0) ** 2)  # the cross-section shrinks away from the mid-plane
        img = 0.4 + rng.normal(0, 0.05, (64, 64))
        for side in (-1, 1):
            img[((xs - xy[j, 0] - side * 9) / (5 * r + 1e-6)) ** 2 + ((ys - xy[j, 1]) / (4 * r + 1e-6)) ** 2 <= 1] = 0.9
        v.pixels[j] = img
    target = centre + np.array([0, 0, rng.choice([-1, 1]) * rng.uniform(0.6, 1.4) * step])
    return v, labelled, target


def _groups(rng, count):
    out, nearest = [], []
    for _ in range(count):
        v, labelled, target = _disc_level(rng)
        cands = candidates([(1, v)], target, 12.0)
        X = features(cands, lambda sid: v.pixels, lambda sid: v.pixel_spacing, None, 1)
        P = candidate_patches(cands, [(1, v)], lambda sid: v.pixels)
        out.append((X, P, np.array([c.slice == labelled for c in cands])))
        nearest.append(cands[0].slice == labelled)
    return out, nearest


def test_the_ranker_finds_the_mid_plane_where_the_nearest_plane_misses_and_survives_json():
    rng = np.random.default_rng(0)
    train, _ = _groups(rng, 80)
    ranker = Ranker.fit(train, epochs=25)
    test, nearest = _groups(rng, 40)
    picked = [y[ranker.best(X, P)] for X, P, y in test]
    assert np.mean(nearest) < 0.5  # the target is a slice off most of the time
    assert np.mean(picked) >= 0.85
    again = ranker_from(json.loads(json.dumps(ranker.to_dict())), len(FEATURES))  # what levels.json keeps
    for X, P, _ in test:
        np.testing.assert_allclose(again.scores(X, P), ranker.scores(X, P), atol=1e-4)


def test_a_ranker_of_other_features_or_patches_is_refused_and_too_few_examples_fit_none():
    rng = np.random.default_rng(1)
    groups, _ = _groups(rng, 12)
    d = Ranker.fit(groups, epochs=1).to_dict()
    with pytest.raises(ValueError, match="features"):
        Ranker.from_dict(d, len(FEATURES) + 1)
    with pytest.raises(ValueError, match="patches"):
        Ranker.from_dict({**d, "patch": [PATCH, PATCH_MM / 2, 4.0]}, len(FEATURES))
    with pytest.raises(ValueError, match="without"):
        Ranker.from_dict({**d, "state": {}}, len(FEATURES))
    assert Ranker.fit(groups[:5], epochs=3) is None
    assert Ranker.fit([(X, P, np.zeros(len(y), bool)) for X, P, y in groups], epochs=3) is None  # no labelled slice


def test_a_patch_spans_the_same_mm_in_a_thin_stack_as_in_a_block():
    thin = _axial(30, 1.0, size=128, spacing=0.5)
    thin.pixels[:] = np.arange(30, dtype=np.float32)[:, None, None]  # each slice shows its index
    c = PATCH // 2
    p = patch_stack(thin, thin.pixels, 10, (63.5, 63.5))
    assert p.shape == (3, PATCH, PATCH)
    assert p[:, c, c].tolist() == [6.0, 10.0, 14.0]  # the planes 4 mm below and above, not the next slices
    assert patch_stack(thin, thin.pixels, 1, (63.5, 63.5))[:, c, c].tolist() == [0.0, 1.0, 5.0]  # clamped at the end
    blocks = _axial(6, 4.0, blocks=[0, 0, 0, 1, 1, 1])
    blocks.pixels[:] = np.arange(6, dtype=np.float32)[:, None, None]
    assert patch_stack(blocks, blocks.pixels, 2, (31.5, 31.5))[:, c, c].tolist() == [1.0, 2.0, 2.0]  # never the next block
    # PATCH_MM of the image at any pixel size: a 5 mm disc covers the same share of both patches
    ys, xs = np.mgrid[0:128, 0:128]
    thin.pixels[:] = ((xs - 63.5) ** 2 + (ys - 63.5) ** 2 <= 10 ** 2).astype(np.float32)
    coarse = _axial(30, 1.0, size=64, spacing=1.0)
    ys, xs = np.mgrid[0:64, 0:64]
    coarse.pixels[:] = ((xs - 31.5) ** 2 + (ys - 31.5) ** 2 <= 5 ** 2).astype(np.float32)
    a, b = patch_stack(thin, thin.pixels, 10, (63.5, 63.5))[1], patch_stack(coarse, coarse.pixels, 10, (31.5, 31.5))[1]
    assert abs(a.sum() - b.sum()) / b.sum() < 0.1 and b.sum() > 0.5 * np.pi * (5 / (PATCH_MM / PATCH)) ** 2


def test_the_ranked_method_uses_the_ranker_and_without_one_takes_the_nearest_plane():
    rng = np.random.default_rng(2)
    train, _ = _groups(rng, 80)
    ranker = Ranker.fit(train, epochs=25)
    v, labelled, target = _disc_level(rng)
    while labelled == int(np.argmin(v.project(target)[0])):  # a case the nearest plane gets wrong
        v, labelled, target = _disc_level(rng)
    P = np.stack([target + np.array([0, 0, 40.0 - 20 * k]) for k in range(5)])
    P[0] = target  # L1/L2's axial crop is the one asked about
    ranked = Geometry(choice={schema.AXIAL: "ranked"}, rankers={schema.AXIAL: ranker.to_dict()}, max_gap_mm=12.0)
    out = placement.place({}, {schema.AXIAL: [(3, v)]}, {}, P, ranked)
    assert out["axial_l1_l2"][:2] == (3, labelled)
    plain = placement.place({}, {schema.AXIAL: [(3, v)]}, {}, P, Geometry(choice={schema.AXIAL: "ranked"}, max_gap_mm=12.0))
    assert plain["axial_l1_l2"][:2] == (3, int(np.argmin(v.project(target)[0])))


def test_the_rankers_step_cap_bounds_its_training_and_changes_nothing_below_it(monkeypatch):
    """At 1,975 studies 20 epochs were 13,460 steps per fit: `max_steps` bounds them; at or above the steps
    the epochs make, the fit is the same to the bit."""
    import torch

    rng = np.random.default_rng(3)
    groups, _ = _groups(rng, 40)  # 40 levels: 2 steps of 16 an epoch
    steps: list[int] = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (steps.append(1), step(self, *a, **k))[1])
    free = Ranker.fit(groups, epochs=3).to_dict()
    assert len(steps) == 6
    steps.clear()
    assert Ranker.fit(groups, epochs=3, max_steps=6).to_dict() == free and len(steps) == 6
    steps.clear()
    capped = Ranker.fit(groups, epochs=3, max_steps=3).to_dict()
    assert len(steps) == 3 and capped["state"] != free["state"]
