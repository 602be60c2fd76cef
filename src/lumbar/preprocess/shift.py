"""The crops' centres moved a few pixels: a test-time view of the multitask model's input.

Training moves every crop by up to ±`max_shift` pixels (a roll, train/multitask.CropDataset), so the
network has seen each study's crops off-centre; at test time the mean over a few such views smooths
what one placement of the centres leaves to chance. The roll is what training applied, so the views
are inputs of the trained distribution (the rows that wrap in from the far edge included).
"""
from __future__ import annotations

import numpy as np


def shift_offsets(px: int) -> list[tuple[int, int]]:
    """The four moves of the crop centres by `px` pixels, (dx, dy): right, left, down, up."""
    return [(px, 0), (-px, 0), (0, px), (0, -px)] if px > 0 else []


def shift_crops(e: dict, dx: int, dy: int) -> dict:
    """A multitask input entry (pipeline.build_crops) whose every crop is centred (dx, dy) pixels away
    from where stage one put it: the images' contents move by (-dx, -dy), and their points with them
    (NaN stays NaN); the rest (boxes, presence) is the study's own."""
    out = dict(e)
    for image, points in (("sag_image", "sag_points"), ("axial_image", "axial_points")):
        out[image] = np.roll(e[image], (-int(dy), -int(dx)), axis=(-2, -1))
        out[points] = e[points] - np.array([dx, dy], dtype=e[points].dtype)
    return out
