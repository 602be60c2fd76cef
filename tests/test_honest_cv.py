"""Honest cross-validation: the scored fold cannot reach the weights that predict it, and augmentations
are drawn afresh per DataLoader worker and per epoch."""
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from lumbar import schema
from lumbar.train.datasets import collate
from lumbar.train.multitask import CropDataset
from lumbar.train.oof import read_oof
from lumbar.cv import read_folds
from lumbar.train.runner import RunConfig, train

from conftest import TINY_MULTITASK


def _multitask_oof(stage_one_run, data, cache, tmp_path, name):
    run = tmp_path / name
    run.mkdir()
    for item in ("folds.csv", "slice_select", "crops"):
        src = stage_one_run / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, run / item)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU reductions in one thread: two runs of the same data are bit-identical
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train("multitask", data, run, RunConfig(n_folds=2), [f"cache_dir={cache}", *TINY_MULTITASK, "epochs=2"])
    finally:
        torch.set_num_threads(threads)
    ids = pd.read_csv(data / "train.csv").study_id.tolist()
    return ids, read_oof(run, "multitask", ids)


def test_shuffled_labels_of_the_scored_fold_leave_its_predictions_unchanged(stage_one, synth_dir, synth_copy, tmp_path):
    run, cache, _ = stage_one
    folds = read_folds(run)
    labels = pd.read_csv(synth_copy / "train.csv")
    held = labels.study_id.map(folds).to_numpy() == 0
    rng = np.random.default_rng(0)
    cols = list(schema.LABEL_COLUMNS)
    values = labels.loc[held, cols].to_numpy()
    shuffled = values[rng.permutation(len(values))]
    flip = rng.random(shuffled.shape) < 0.5  # and a random severity in half the cells, so it surely changes
    shuffled[flip] = rng.choice(["Normal/Mild", "Moderate", "Severe"], size=int(flip.sum()))
    labels.loc[held, cols] = shuffled
    assert (labels.loc[held, cols].to_numpy() != values).any()
    labels.to_csv(synth_copy / "train.csv", index=False)

    ids, a = _multitask_oof(run, synth_dir, cache, tmp_path, "original")
    ids2, b = _multitask_oof(run, synth_copy, cache, tmp_path, "shuffled")
    assert ids == ids2
    in_fold0 = np.array([folds[s] == 0 for s in ids])
    np.testing.assert_array_equal(a[in_fold0], b[in_fold0])  # the scored fold: not one bit moved
    # the other fold was trained on the shuffled labels: its predictions did move (the test can fail)
    assert np.abs(a[~in_fold0] - b[~in_fold0]).max() > 1e-4


def _entries(n=8, size=16):
    e = {"sag_image": np.zeros((3, 3, size, size), np.float16), "axial_image": np.zeros((5, 3, size, size), np.float16),
         "sag_points": np.zeros((3, 5, 2), np.float32), "axial_points": np.zeros((5, 2, 2), np.float32),
         "present": np.ones(8, bool)}
    ramp = np.linspace(0.1, 1.0, size * size, dtype=np.float32).reshape(size, size)
    e["sag_image"][:] = ramp
    e["axial_image"][:] = ramp
    return [e] * n


def _draws(ds, workers: int, epoch: int) -> list[np.ndarray]:
    ds.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=workers, collate_fn=collate,
                        generator=torch.Generator().manual_seed(epoch))
    return [b["sag_points"][0].numpy().copy() for b in loader]  # the shift each item drew


def test_dataloader_workers_draw_different_augmentations_and_new_ones_each_epoch():
    ds = CropDataset(_entries(), augment=True, seed=3)
    e0 = _draws(ds, workers=2, epoch=0)
    # batch_size 1 and 2 workers: items 0, 2, 4 come from worker 0 and 1, 3, 5 from worker 1, in order.
    assert not np.array_equal(e0[0], e0[1]), "both workers replayed one augmentation stream"
    assert not np.array_equal(e0[2], e0[3])
    e1 = _draws(ds, workers=2, epoch=1)
    assert not np.array_equal(e0[0], e1[0]), "worker 0 drew the same augmentation in two epochs"
    assert not np.array_equal(e0[1], e1[1])
    again = _draws(ds, workers=2, epoch=0)
    assert all(np.array_equal(x, y) for x, y in zip(e0, again)), "a rerun draws the same augmentations"


@pytest.mark.parametrize("workers", [0])
def test_without_workers_each_epoch_draws_anew(workers):
    ds = CropDataset(_entries(), augment=True, seed=3)
    e0, e1 = _draws(ds, workers, 0), _draws(ds, workers, 1)
    assert not all(np.array_equal(x, y) for x, y in zip(e0, e1))
