"""Test-time views of a study: as it is, the patient mirrored left-right, the crops' centres moved a
few pixels. Each view's probabilities are brought back to the study's own columns (the mirror's left
is the study's right) and the views are averaged in probability space.

A model declares which views it has on its spec (`mirror`, `shift`); its config says how far the
shifts go (`tta_shift`, pixels; 0: none). The engine, the held-out (OOF) predictions the ensemble is
fitted on, and the attribution report all predict through the same list, so the ensemble is fitted on
what it is applied to. The list is ordered so that every level the time budget can fall back to is a
prefix of it: as is; + mirrored; + each shift and its mirror.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..preprocess.mirror import mirror_labels
from ..preprocess.shift import shift_offsets


@dataclass(frozen=True)
class View:
    name: str
    mirror: bool = False
    offset: tuple[int, int] = (0, 0)  # (dx, dy): pixels the crops' centres move

    def apply(self, entry: dict, mirror: Callable[[dict], dict] | None,
              shift: Callable[[dict, int, int], dict] | None) -> dict:
        """The input entry of this view (the model's own mirror and shift functions)."""
        if (self.mirror and mirror is None) or (self.offset != (0, 0) and shift is None):
            raise ValueError(f"view {self.name!r}: the model declares no {'mirror' if self.mirror else 'shift'}")
        if self.mirror:
            entry = mirror(entry)
        if self.offset != (0, 0):
            entry = shift(entry, *self.offset)
        return entry

    def back(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities [n, 25, 3] of this view in the study's own label columns."""
        return mirror_labels(probs, axis=1) if self.mirror else probs


AS_IS = View("as is")
MIRRORED = View("mirrored", mirror=True)


def model_views(spec, mirror: bool = True, shift: int = 0) -> list[View]:
    """The views a model (its spec) is predicted with: the mirror where asked for and declared, the
    shifts by `shift` pixels where asked for and declared (each with its mirror too)."""
    mirror = mirror and spec.mirror is not None
    views = [AS_IS] + ([MIRRORED] if mirror else [])
    if spec.shift is not None:
        for o in shift_offsets(int(shift)):
            views.append(View(f"shifted {o}", offset=o))
            if mirror:
                views.append(View(f"mirrored, shifted {o}", mirror=True, offset=o))
    return views


def levels(views: list[View]) -> list[tuple[str, int]]:
    """What the time budget can fall back to, cheapest first: (name, number of views) — 'as is' 1,
    'mirror' 2 where the second view is the mirror, 'shifts' all of them where there are more."""
    out = [("as is", 1)]
    if len(views) > 1 and views[1] == MIRRORED:
        out.append(("mirror", 2))
    if len(views) > out[-1][1]:
        out.append(("shifts", len(views)))
    return out


def average(views: list[View], probs: list[np.ndarray]) -> np.ndarray:
    """The views' probabilities [n, 25, 3] (in view order) averaged in the study's own columns."""
    if len(views) != len(probs) or not views:
        raise ValueError(f"{len(probs)} predictions for {len(views)} views")
    return np.mean([v.back(np.asarray(p, np.float64)) for v, p in zip(views, probs)], 0)
