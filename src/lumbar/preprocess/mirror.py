"""The left-right mirror of a study's model inputs: what the same stages give for the patient mirrored
through the midline, whose left labels are the study's right ones. A second training example for every
study (augmentation) and a second look at test time (TTA).

In the canonical frame (data/volumes: LPS, sagittal slices ordered right to left, axial columns running
right to left of the patient) a mirror is exact bookkeeping, no resampling:
- sagittal crops: the T2 crop stays, the T1 left and right crops swap; each crop's slices (its
  channels, ordered along the normal) reverse; points stay (a sagittal image's plane is the mirror's);
- axial crops and frames: columns reverse (x -> S - 1 - x) and the left and right points swap;
- sagittal frames: their order along the normal reverses, and so do their positions in [0, 1].
The crops' boxes are centred on the canal (or on the labelled points, a few mm off the midline), so
the mirrored crop is the crop of the mirrored patient up to that; the test on a study written mirrored
(tests/test_mirror.py) bounds the difference.
"""
from __future__ import annotations

import numpy as np

from .. import schema

_SAG_ORDER = [0, 2, 1]  # sag_t2, sag_t1_left, sag_t1_right -> the mirror's
_PRESENT_ORDER = [0, 2, 1, 3, 4, 5, 6, 7]  # the same over all eight crops (the axial ones keep their level)
SAGITTAL_FRAMES = [schema.SERIES_TYPES.index(schema.SAG_T1), schema.SERIES_TYPES.index(schema.SAG_T2)]
AXIAL_FRAMES = schema.SERIES_TYPES.index(schema.AXIAL)


def mirror_labels(y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Labels [..., 25] (or probabilities [..., 25, 3] with axis=-2) of the mirrored patient."""
    return np.take(y, schema.MIRROR, axis=axis)


def _flip_x(points: np.ndarray, size: int) -> np.ndarray:
    out = points.copy()
    out[..., 0] = size - 1 - out[..., 0]
    return out


def mirror_crops(e: dict) -> dict:
    """A multitask input entry (pipeline.build_crops) of the mirrored patient: the fields the model
    reads (images, points, presence); the rest (boxes, slices) is the study's own."""
    out = dict(e)
    out["sag_image"] = e["sag_image"][_SAG_ORDER][:, ::-1]
    out["sag_points"] = e["sag_points"][_SAG_ORDER]
    size = e["axial_image"].shape[-1]
    out["axial_image"] = e["axial_image"][..., ::-1]
    out["axial_points"] = _flip_x(e["axial_points"][:, ::-1], size)
    out["present"] = e["present"][_PRESENT_ORDER]
    return out


def mirror_frames(e: dict) -> dict:
    """A sequence-model input entry (frames.build_frames) of the mirrored patient."""
    out = dict(e)
    frames, positions = e["frames"].copy(), e["positions"].copy()
    points = e["points"].copy() if "points" in e else None
    for t in SAGITTAL_FRAMES:
        frames[t] = e["frames"][t][::-1]
        positions[t] = 1.0 - e["positions"][t][::-1]
        if points is not None:
            points[t] = e["points"][t][::-1]
    t = AXIAL_FRAMES
    frames[t] = e["frames"][t][..., ::-1]
    if points is not None:  # channels 0 and 1 of an axial frame: the left and right recess
        swapped = e["points"][t].copy()
        swapped[:, [0, 1]] = swapped[:, [1, 0]]
        points[t] = _flip_x(swapped, frames.shape[-1])
    out.update(frames=frames, positions=positions)
    if points is not None:
        out["points"] = points
    return out
