"""The left-right mirror: of labels, of each model's inputs (checked against a study written mirrored
into its DICOM files), as training augmentation, and as the test-time mirror and its place in the budget."""
import warnings

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from lumbar import schema
from lumbar.data.catalog import load_studies
from lumbar.data.volumes import study_volumes
from lumbar.preprocess.crops import CropRegions
from lumbar.preprocess.frames import FramesConfig, build_frames
from lumbar.preprocess.mirror import mirror_crops, mirror_frames, mirror_labels
from lumbar.preprocess.pipeline import PreprocessConfig, build_crops, study_features, true_selection


def test_the_label_mirror_swaps_left_and_right_and_keeps_the_canal():
    cols = np.array(schema.LABEL_COLUMNS)
    m = cols[list(schema.MIRROR)]
    for j, c in enumerate(cols):
        expect = c.replace("left_", "@").replace("right_", "left_").replace("@", "right_")
        assert m[j] == expect
    assert list(np.take(schema.MIRROR, schema.MIRROR)) == list(range(25))  # an involution
    probs = np.random.default_rng(0).random((4, 25, 3))
    np.testing.assert_array_equal(mirror_labels(mirror_labels(probs, axis=1), axis=1), probs)


def _random_crops(rng, s=16, sa=12, c=3):
    return {"sag_image": rng.random((3, c, s, s)).astype(np.float16), "axial_image": rng.random((5, c, sa, sa)).astype(np.float16),
            "sag_points": rng.random((3, 5, 2)).astype(np.float32) * s, "axial_points": rng.random((5, 2, 2)).astype(np.float32) * sa,
            "present": rng.random(8) > 0.3, "boxes": rng.random((8, 4))}


def _random_frames(rng, n=5, s=12):
    return {"frames": rng.random((3, n, s, s)).astype(np.float16), "mask": np.array([True, True, False]),
            "positions": np.sort(rng.random((3, n)), axis=1).astype(np.float32),
            "points": rng.random((3, n, 5, 2)).astype(np.float32) * s}


def test_mirroring_twice_gives_the_input_back():
    rng = np.random.default_rng(1)
    for e, mirror in ((_random_crops(rng), mirror_crops), (_random_frames(rng), mirror_frames)):
        back = mirror(mirror(e))
        assert back.keys() == e.keys()
        for k in e:
            np.testing.assert_allclose(np.asarray(back[k], np.float64), np.asarray(e[k], np.float64), atol=1e-6)
        once = mirror(e)
        assert any(not np.array_equal(once[k], e[k]) for k in e)


def _mirror_study(src, dst, coords: pd.DataFrame, study_id: int, new_id: int) -> pd.DataFrame:
    """A copy of a study as the patient mirrored through the midline would give it: the same pixels in
    every file with patient x negated in ImagePositionPatient and ImageOrientationPatient (a
    reflection), and every left label written as right and right as left."""
    out = coords[coords.study_id == study_id].copy()
    out["study_id"] = new_id
    swap = {"Left": "Right", "Right": "Left"}
    out["condition"] = [" ".join([swap.get(c.split()[0], c.split()[0]), *c.split()[1:]]) for c in out["condition"]]
    for series_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / series_dir.name).mkdir(parents=True)
        for f in sorted(series_dir.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            ipp = [float(x) for x in ds.ImagePositionPatient]
            iop = [float(x) for x in ds.ImageOrientationPatient]
            ds.ImagePositionPatient = [f"{x:.10g}" for x in (-ipp[0], ipp[1], ipp[2])]
            ds.ImageOrientationPatient = [f"{x:.10g}" for x in (-iop[0], iop[1], iop[2], -iop[3], iop[4], iop[5])]
            ds.save_as(dst / series_dir.name / f.name)
    return out


@pytest.fixture(scope="module")
def mirrored_patient(synth_dir, tmp_path_factory):
    """(original study, its mirrored copy) from the small synthetic folder (a labelled train study)."""
    import shutil

    data = tmp_path_factory.mktemp("patient_mirror") / "competition"
    shutil.copytree(synth_dir, data)
    coords = pd.read_csv(data / "train_label_coordinates.csv")
    src = int(coords.study_id.iloc[0])
    new = 990_001
    rows = _mirror_study(data / "train_images" / str(src), data / "train_images" / str(new), coords, src, new)
    pd.concat([coords, rows]).to_csv(data / "train_label_coordinates.csv", index=False)
    train = pd.read_csv(data / "train.csv")
    row = train[train.study_id == src].copy()
    row["study_id"] = new
    for c in schema.LABEL_COLUMNS:  # the mirrored patient's labels: the study's, left and right swapped
        row[c] = train.loc[train.study_id == src, schema.LABEL_COLUMNS[schema.MIRROR[schema.LABEL_COLUMNS.index(c)]]].values
    pd.concat([train, row]).to_csv(data / "train.csv", index=False)
    desc = pd.read_csv(data / "train_series_descriptions.csv")
    pd.concat([desc, desc[desc.study_id == src].assign(study_id=new)]).to_csv(data / "train_series_descriptions.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        studies = {s.study_id: s for s in load_studies(data, "train")}
    return studies[src], studies[new]


def _inputs(study, selection=None):
    """(crops, frames, selection, volumes) of a study: at its labelled slices, or at `selection`."""
    vols = study_volumes(study, None)
    sel = selection or true_selection(study, study_features(study, None, vols))
    crops = build_crops(study, vols, sel, CropRegions(), PreprocessConfig(sag_size=48, axial_size=40))
    n = {stype: len(items[0][1]) for stype, items in vols.items()}
    # as many frames as sagittal slices (every slice once: spreading fewer evenly is not mirror-symmetric)
    frames = build_frames(vols, FramesConfig(n_frames=n[schema.SAG_T1], size=32), study.coords, sel)
    return crops, frames, sel, vols


def _mirrored_selection(sel: dict, vols) -> dict:
    """The same slices named in the mirrored patient's volumes: sagittal slices count from the other end
    (their order runs right to left), the T1 sides swap; axial slices keep their index."""
    from lumbar.preprocess.placement import per_level, with_levels

    n = {sid: len(v) for items in vols.values() for sid, v in items}
    names = {"sag_t1_left": "sag_t1_right", "sag_t1_right": "sag_t1_left"}
    out = {}
    for name, choice in sel.items():
        if not name.startswith("sag"):
            out[name] = choice
            continue
        sid, idx = choice[:2]
        levels = per_level(choice)
        flip = n[sid] - 1
        out[names.get(name, name)] = (with_levels(sid, flip - idx, None, [flip - s for s in levels[0]], levels[1])
                                      if levels else (sid, flip - idx))
    return out


def test_the_mirror_of_a_studys_inputs_is_what_the_mirrored_patient_gives(mirrored_patient):
    study, copy = mirrored_patient
    np.testing.assert_array_equal(copy.labels, mirror_labels(study.labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crops, frames, sel, vols = _inputs(study)
        assert len({len(v) for _, v in vols[schema.SAG_T1] + vols[schema.SAG_T2]}) == 1  # the frames' premise
        crops_m, frames_m, _, _ = _inputs(copy, _mirrored_selection(sel, vols))
    want = mirror_crops(crops)
    np.testing.assert_array_equal(want["present"], crops_m["present"])
    for key in ("sag_image", "axial_image"):
        np.testing.assert_allclose(want[key].astype(np.float32), crops_m[key].astype(np.float32), atol=2e-2)
    for key in ("sag_points", "axial_points"):
        assert np.isfinite(crops_m[key]).any()
        np.testing.assert_allclose(want[key], crops_m[key], atol=0.05, equal_nan=True)
    want = mirror_frames(frames)
    np.testing.assert_array_equal(want["mask"], frames_m["mask"])
    np.testing.assert_allclose(want["positions"], frames_m["positions"], atol=1e-4)
    np.testing.assert_allclose(want["frames"].astype(np.float32), frames_m["frames"].astype(np.float32), atol=2e-2)
    np.testing.assert_allclose(want["points"], frames_m["points"], atol=0.05, equal_nan=True)


def test_placed_t1_frames_sit_at_each_foramen_and_mirror_exactly(mirrored_patient):
    """sagittal="placed": half the T1 frames are each side's selected slice and its neighbours (in the
    order along the normal), they carry that side's labelled foraminal points, the T2 frames stay as
    they were, the cache key follows the T1 slices, and the mirrored patient gives the mirrored frames."""
    from dataclasses import replace

    from lumbar.preprocess.frames import frames_key

    study, copy = mirrored_patient
    cfg = FramesConfig(n_frames=6, size=32, sagittal="placed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, sel, vols = _inputs(study)
        _, _, _, vols_m = _inputs(copy)
        placed = build_frames(vols, cfg, study.coords, sel)
        even = build_frames(vols, replace(cfg, sagittal="even"), study.coords, sel)
        placed_m = build_frames(vols_m, cfg, copy.coords, _mirrored_selection(sel, vols))
    t1, t2 = schema.SERIES_TYPES.index(schema.SAG_T1), schema.SERIES_TYPES.index(schema.SAG_T2)
    (sid_r, right), (sid_l, left) = sel["sag_t1_right"][:2], sel["sag_t1_left"][:2]
    assert sid_r == sid_l and right < left  # sagittal slices run right to left
    v = dict(vols[schema.SAG_T1])[sid_r]
    slices = v.neighbours(right, 3) + v.neighbours(left, 3)
    want = (v.depth[slices] - v.depth.min()) / np.ptp(v.depth)
    np.testing.assert_allclose(placed["positions"][t1], want, atol=1e-6)
    ok = np.isfinite(placed["points"][t1]).all(-1)  # [6 frames, 5 levels]
    assert ok[1].any() and ok[4].any()  # each side's middle frame: its own slice, its labelled foramina
    assert ok.sum() >= np.isfinite(even["points"][t1]).all(-1).sum()  # even frames may step over them
    np.testing.assert_array_equal(placed["frames"][t2], even["frames"][t2])
    snapped = build_frames(vols, replace(cfg, sagittal="snapped"), study.coords, sel)  # the spread, both slices in it
    from lumbar.preprocess.frames import even_indices, snapped_indices
    slices = snapped_indices(even_indices(len(v), 6), [right, left])
    assert right in slices and left in slices
    np.testing.assert_allclose(snapped["positions"][t1], (v.depth[slices] - v.depth.min()) / np.ptp(v.depth), atol=1e-6)
    np.testing.assert_array_equal(snapped["frames"][t2], even["frames"][t2])
    moved = dict(sel, sag_t1_left=(sid_l, left - 1))
    assert frames_key(cfg, moved) != frames_key(cfg, sel)
    assert frames_key(replace(cfg, sagittal="even"), moved) == frames_key(replace(cfg, sagittal="even"), sel)
    mirrored = mirror_frames(placed)
    np.testing.assert_allclose(mirrored["positions"][t1], placed_m["positions"][t1], atol=1e-4)
    np.testing.assert_allclose(mirrored["frames"][t1].astype(np.float32), placed_m["frames"][t1].astype(np.float32),
                               atol=2e-2)
    np.testing.assert_allclose(mirrored["points"][t1], placed_m["points"][t1], atol=0.05, equal_nan=True)


def test_a_mirrored_example_is_the_same_training_example():
    from lumbar.train.multitask import CropDataset
    from lumbar.train.sequence import FramesDataset

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (1, 25))
    for make, mirror, e in ((CropDataset, mirror_crops, _random_crops(rng)), (FramesDataset, mirror_frames, _random_frames(rng))):
        always = make([e], labels, augment=True, seed=0, mirror=1.0)
        # drawn (the same random stream) but never taken: the mirrored input seen as it is
        never = make([mirror(e)], mirror_labels(labels), augment=True, seed=0, mirror=1e-12)
        always.set_epoch(0)
        never.set_epoch(0)
        a, b = always[0], never[0]
        for k in a:
            torch.testing.assert_close(a[k], b[k], equal_nan=True)
        assert make([e], labels, augment=False, mirror=1.0)[0]["labels"].tolist() == labels[0].tolist()  # off unless augmenting


def _engine_probs(net, cfg, entry, tta: bool):
    """The engine's (_models_on) fold-averaged probabilities [25, 3] for one study, views as `tta` says."""
    from collections import defaultdict
    from types import SimpleNamespace

    from lumbar.infer.budget import Plan
    from lumbar.infer.engine import _models_on
    from lumbar.infer.settings import PredictConfig
    from lumbar.models.registry import get_spec
    from lumbar.models.views import levels, model_views

    views = model_views(get_spec("multitask"), mirror=True, shift=cfg.tta_shift)
    bundle = SimpleNamespace(models={"multitask": {0: net}}, prior=np.full((25, 3), 1 / 3), views={"multitask": views})
    plan = Plan({"multitask": [0]}, budget=1e9, n_studies=1, workers=0, views={"multitask": levels(views)} if tta else {})
    out = _models_on([{"study_id": 1, "inputs": {"multitask": entry}}], bundle, plan, defaultdict(float), {},
                     PredictConfig(), {})
    return out["multitask"][0]


def _tiny_multitask(**over):
    from conftest import TINY_MULTITASK
    from lumbar import config
    from lumbar.models.registry import create_model
    from lumbar.train.multitask import MultitaskTraining

    torch.manual_seed(0)
    cfg = config.override(MultitaskTraining(), TINY_MULTITASK + [f"{k}={v}" for k, v in over.items()])
    rng = np.random.default_rng(3)
    e = _random_crops(rng, s=64, sa=48, c=int(over.get("slices", 3)))  # the tiny network's sizes (test_models)
    e["present"][:] = True
    e["sag_points"][:] = np.nan
    e["axial_points"][:] = np.nan
    net = create_model("multitask", cfg).eval()
    with torch.no_grad():  # an untrained head answers ~1/3 everywhere: views would differ by ~1e-5 only
        net.head_w.mul_(100.0)
    return net, cfg, e, rng


@pytest.mark.parametrize("slices", [3, 5])
def test_the_test_time_mirror_makes_a_prediction_mirror_equivariant(slices):
    """With the mirror on (no shifts), the model's answer for a study's mirror is its answer with left
    and right swapped (exactly: the average of both passes), and off it is not; the held-out (OOF)
    predictions the ensemble is fitted on are the engine's. Three slices per crop or five (their order
    reverses in the mirror)."""
    from lumbar.train.datasets import mirrored
    from lumbar.train.folds import held_out_probs, held_out_views
    from lumbar.train.multitask import CropDataset

    net, cfg, e, rng = _tiny_multitask(tta_shift=0, slices=slices)
    p, pm = _engine_probs(net, cfg, e, True), _engine_probs(net, cfg, mirror_crops(e), True)
    np.testing.assert_allclose(pm, mirror_labels(p, axis=0), atol=1e-5)
    q, qm = _engine_probs(net, cfg, e, False), _engine_probs(net, cfg, mirror_crops(e), False)
    assert np.abs(qm - mirror_labels(q, axis=0)).max() > 1e-3  # one pass alone is not symmetric
    np.testing.assert_allclose(p, (q + mirror_labels(qm, axis=0)) / 2, atol=1e-5)

    labels = rng.integers(0, 3, (1, 25))
    ds = CropDataset([e], labels)
    cpu = torch.device("cpu")
    assert len(held_out_views("multitask", cfg)) == 2
    np.testing.assert_allclose(held_out_probs(net, ds, 4, cpu, False, held_out_views("multitask", cfg))[0], p, atol=1e-5)
    np.testing.assert_allclose(held_out_probs(net, ds, 4, cpu, False)[0], q, atol=1e-5)
    assert mirrored(ds)[0]["labels"].tolist() == mirror_labels(labels[0]).tolist() and ds.view is None


def test_the_test_time_shifts_average_the_crops_moved_each_way_in_the_engine_and_the_oof():
    """tta_shift=3: ten views (as is, mirrored, four shifts and their mirrors); the engine's answer is
    the mean of the network on each view's entry (mirrored ones swapped back), the held-out prediction
    is the same, and a shifted view is the crops' content moved the other way."""
    from lumbar.models.registry import get_spec
    from lumbar.models.views import levels, model_views
    from lumbar.preprocess.shift import shift_crops
    from lumbar.train.datasets import viewed
    from lumbar.train.folds import held_out_probs, held_out_views
    from lumbar.train.multitask import CropDataset

    net, cfg, e, rng = _tiny_multitask(tta_shift=3)
    views = model_views(get_spec("multitask"), mirror=True, shift=3)
    assert len(views) == 10 and [n for n, _ in levels(views)] == ["as is", "mirror", "shifts"]
    assert {v.offset for v in views} == {(0, 0), (3, 0), (-3, 0), (0, 3), (0, -3)}

    moved = shift_crops(e, 3, -2)  # the centre 3 px right and 2 up: what sat at (x, y) is at (x - 3, y + 2)
    np.testing.assert_array_equal(moved["sag_image"][..., 12, 10], e["sag_image"][..., 10, 13])
    np.testing.assert_array_equal(moved["axial_image"][..., 12, 10], e["axial_image"][..., 10, 13])
    pts = e["sag_points"].copy()
    pts[0, 0] = [20.0, 30.0]
    assert shift_crops({**e, "sag_points": pts}, 3, -2)["sag_points"][0, 0].tolist() == [17.0, 32.0]

    ds = CropDataset([e], rng.integers(0, 3, (1, 25)))
    cpu = torch.device("cpu")
    one = {v: held_out_probs(net, viewed(ds, v), 4, cpu, False)[0] for v in views}
    expected = np.mean([v.back(one[v][None])[0] for v in views], 0)
    p = _engine_probs(net, cfg, e, True)
    np.testing.assert_allclose(p, expected, atol=1e-5)
    assert np.abs(p - _engine_probs(net, cfg, e, False)).max() > 1e-3  # the views change the answer
    np.testing.assert_allclose(held_out_probs(net, ds, 4, cpu, False, held_out_views("multitask", cfg))[0], p, atol=1e-5)
    # the shifted dataset view and the shifted entry are the same input
    torch.testing.assert_close(viewed(ds, views[2])[0]["sag_image"],
                               torch.from_numpy(np.ascontiguousarray(views[2].apply(e, mirror_crops, shift_crops)["sag_image"].astype(np.float32))))
    # the sequence model declares no shift: its held-out views are as is and mirrored, whatever tta_shift says
    assert len(held_out_views("sequence", cfg)) == 2


def test_the_budget_drops_the_test_time_views_before_any_fold_and_restores_them_last():
    from lumbar.infer.budget import Plan

    clock = [0.0]
    levels = [("as is", 1), ("mirror", 2), ("shifts", 10)]
    plan = Plan({"a": [0, 1], "b": [0, 1]}, budget=100.0, n_studies=100, workers=0, clock=lambda: clock[0], start=0.0,
                warmup_batches=0, views={"a": levels, "b": levels[:2]})
    assert plan.passes("a") == 10 and plan.passes("b") == 2
    # a: 10 passes x 2 folds at 0.06 s a pass (1.2 s), b: 2 passes x 2 folds at 0.2 s (0.8 s): 200 s projected
    plan.observe(1, 2.0, {}, {("a", 0): 0.6, ("a", 1): 0.6, ("b", 0): 0.4, ("b", 1): 0.4})
    said = plan.decide()
    assert plan.active == {"a": [0, 1], "b": [0, 1]}  # views go; no fold does
    # the costliest model's last level first (a's shifts: 104 s left), then b's mirror (b now costs more)
    assert ["shifts of a" in said[0], "mirror of b" in said[1], len(said)] == [True, True, 2]
    assert plan.views_on() == {"a": "mirror", "b": "as is"} and plan.passes("a") == 2
    assert plan.per_study() == pytest.approx(0.12 * 2 + 0.4, rel=0.05)
    plan.budget = 1000.0  # room again: every level comes back, the last dropped first
    said = plan.decide()
    assert plan.views_on() == {"a": "shifts", "b": "mirror"}
    assert ["mirror of b" in said[0], "shifts of a" in said[1]] == [True, True]


def test_a_turned_and_scaled_crop_carries_its_points_and_cutout_zeroes_squares():
    from lumbar.train.datasets import cutout, random_affine

    size = 48
    pts = np.array([[10.0, 12.0], [30.0, 35.0], [np.nan, np.nan]], np.float32)
    stack = np.zeros((3, size, size), np.float32)
    for x, y in pts[:2].astype(int):
        stack[:, y - 1:y + 2, x - 1:x + 2] = 1.0  # a 3 px blob on each point, in every channel
    rng = np.random.default_rng(4)
    for _ in range(5):
        out, moved = random_affine(stack, pts, rng, max_deg=15.0, max_scale=0.15)
        assert np.isnan(moved[2]).all() and not np.allclose(moved[:2], pts[:2])
        for (x, y) in moved[:2]:  # each blob's brightest pixel is where its point went
            win = out[1, int(round(y)) - 3:int(round(y)) + 4, int(round(x)) - 3:int(round(x)) + 4]
            iy, ix = np.unravel_index(np.argmax(win), win.shape)
            assert abs(ix - 3) <= 1 and abs(iy - 3) <= 1 and win.max() > 0.5
        np.testing.assert_array_equal(out[0], out[2])  # one draw for every channel
    same, kept = random_affine(stack, pts, rng, 0.0, 0.0)
    assert same is stack and kept is pts  # switched off: untouched, nothing drawn
    holes = cutout(np.ones((3, size, size), np.float32), np.random.default_rng(0), boxes=2)
    side = round(0.2 * size)
    assert side * side <= (holes[0] == 0).sum() <= 2 * side * side and (holes[0] == holes[1]).all()
    assert cutout(stack, rng, 0) is stack


def test_the_augmentation_switches_reach_both_datasets():
    from lumbar.train.multitask import CropDataset
    from lumbar.train.sequence import FramesDataset

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, (1, 25))
    for make, e in ((CropDataset, _random_crops(rng)), (FramesDataset, _random_frames(rng))):
        plain = make([e], labels, augment=True, seed=0)
        turned = make([e], labels, augment=True, seed=0, rotate=20.0, scale=0.2, cutout=2)
        plain.set_epoch(0)
        turned.set_epoch(0)
        key = "sag_image" if make is CropDataset else "frames"
        a, b = plain[0][key], turned[0][key]
        assert a.shape == b.shape and not torch.allclose(a, b)
        assert (b == 0).float().mean() > (a == 0).float().mean()  # the rotation's corners and the cutouts


def test_a_finished_fold_is_not_retrained_for_a_field_that_only_changes_its_held_out_prediction():
    """tta and tta_shift change how the held-out studies are predicted, not the weights: the fold's
    identity (what its checkpoint is resumed under) ignores them, and not a training field."""
    from dataclasses import replace

    from lumbar.train.folds import fold_identity
    from lumbar.train.multitask import MultitaskTraining

    ids, y = np.arange(4), np.zeros((4, 25), int)

    def ident(cfg):
        return fold_identity(cfg, ids, y, None, None, np.arange(4))

    base = MultitaskTraining()
    assert ident(replace(base, tta_shift=5)) == ident(base) == ident(replace(base, tta=False))
    assert ident(replace(base, lr=base.lr / 2))["config"] != ident(base)["config"]


def test_five_slice_crops_hold_the_three_slice_ones_at_their_centre(mirrored_patient):
    """slices=5 with a spare slice each side builds seven neighbouring slices; the centre three are the
    three-slice crop exactly, and the window read one slice off centre is the neighbours' crop."""
    from lumbar.preprocess.crops import slice_window

    study, _ = mirrored_patient
    vols = study_volumes(study, None)
    sel = true_selection(study, study_features(study, None, vols))
    three = build_crops(study, vols, sel, CropRegions(), PreprocessConfig(sag_size=48, axial_size=40))
    seven = build_crops(study, vols, sel, CropRegions(), PreprocessConfig(sag_size=48, axial_size=40, slices=5, spare=1))
    assert seven["sag_image"].shape == (3, 7, 48, 48) and seven["axial_image"].shape == (5, 7, 40, 40)
    for key in ("sag_image", "axial_image"):
        np.testing.assert_array_equal(slice_window(seven[key], 3), three[key])
        assert not np.array_equal(slice_window(seven[key], 3, 1), three[key])  # really other slices
    np.testing.assert_array_equal(seven["sag_points"], three["sag_points"])  # the points are the plane's
    with pytest.raises(ValueError, match="slices must be odd"):
        PreprocessConfig(slices=4)
    with pytest.raises(ValueError, match="no window of 5 slices -2 off"):
        slice_window(seven["sag_image"], 5, -2)


def test_the_slice_shift_reads_every_window_within_the_spare_slices_and_none_without_augmenting():
    """Each crop of a training example is read up to slice_shift slices off its centre, drawn per crop;
    held out (no augmentation) it is read at its centre."""
    import torch

    from lumbar.train.multitask import CropDataset

    rng = np.random.default_rng(4)
    e = _random_crops(rng, c=7)
    e["sag_image"][:] = np.arange(7, dtype=np.float16)[None, :, None, None]  # each channel holds its index
    e["axial_image"][:] = np.arange(7, dtype=np.float16)[None, :, None, None]
    labels = rng.integers(0, 3, (1, 25))
    shifted = CropDataset([e], labels, augment=True, seed=0, max_shift=0, slices=5, slice_shift=1)
    offsets, per_example = [], []
    for epoch in range(12):
        shifted.set_epoch(epoch)
        item = shifted[0]
        drawn = []
        for key in ("sag_image", "axial_image"):
            v = item[key][:, :, 0, 0].double()  # [crops, 5]: channel index s + k as (s + k) ** gamma * gain
            assert torch.equal(v.argsort(dim=1), torch.arange(5).expand(len(v), 5))  # consecutive, in order
            # the window's first slice: 0 reads 0; else the first two's ratio is 2 ** gamma or 1.5 ** gamma
            ratio = v[:, 1] / v[:, 0].clamp_min(1e-9)
            drawn += torch.where(v[:, 0] == 0, 0, torch.where(ratio > 1.7, 1, 2)).sub(1).tolist()
        offsets += drawn
        per_example.append(len(set(drawn)))
    assert set(offsets) == {-1, 0, 1}
    assert max(per_example) > 1  # drawn per crop, not once per study
    plain = CropDataset([e], labels, slices=5, slice_shift=1)[0]
    assert plain["sag_image"][:, :, 0, 0].tolist() == [[1, 2, 3, 4, 5]] * 3  # the centre, untouched
