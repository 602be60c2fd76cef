"""Each level's slice from the image around its target: where the level points say a crop's level
lies, the planes near it are compared by what they show there.

The nearest plane alone is as good as the target is: a level point 1.5 mm off, or a foramen whose
distance from the canal differs from the learned mean, moves the answer a slice. The labelled slice is
also the one where the structure is largest: the foramen's fat is widest through its middle, the disc
fills the axial slice through its mid-plane. So every candidate plane (those within reach of the
target, in the field of view) is described by its distance, the slice classifier's probability, the
mean intensity of square windows (3-16 mm) at the target's foot and at the point ANTERIOR_MM in front of
it (inside the disc on an axial slice), each relative to the other candidates, and, in a short block
(an axial block prescribed through one disc), how far the plane is from the block's middle:
radiographers centre each block on its disc. A logistic regression fitted on the held-out level points
of training studies weighs them. Windows in mm, not pixels: one scorer serves every resolution.

The scorer is a handful of numbers kept in levels.json (no pickle to carry between library versions).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..data.dicom import Volume

WINDOWS_MM = (3.0, 6.0, 10.0, 16.0)  # half-widths of the square windows at the target's foot
FEATURES = ("distance", "distance^2", "log p - best", *[f"w{w:g} - best" for w in WINDOWS_MM],
            *[f"w{w:g} - mean" for w in WINDOWS_MM], "block offset", "block offset - least",
            *[f"front w{w:g} - best" for w in WINDOWS_MM], *[f"front w{w:g} - mean" for w in WINDOWS_MM])
ANTERIOR_MM = 20.0  # the second set of windows sits this far in front of the target: inside the disc
# for an axial level (the canal's centre is ~20-25 mm behind the disc's), the body/disc beside a foramen
MAX_CANDIDATES = 7  # the nearest planes compared per level (a labelled slice is within 3 of the nearest)
SHORT_BLOCK = 7  # a block of at most this many slices was prescribed through one disc (real: 3-6)


@dataclass
class Candidate:
    series_id: int
    slice: int
    distance: float  # mm from the target to the slice's plane
    xy: tuple[float, float]  # the target's foot on the slice (stored pixels)
    block_offset: float = 0.0  # mm from the middle of its short block (0 in a longer stack)
    front_xy: tuple[float, float] = (np.nan, np.nan)  # the foot of the point ANTERIOR_MM in front of the target


def block_offsets(v: Volume) -> np.ndarray:
    """[n] each slice's distance (mm, along the slices' order) from the middle of its block where the
    block is short (SHORT_BLOCK), else 0: a long stack has no middle that means anything."""
    out = np.zeros(len(v))
    depth = v.depth
    for b in np.unique(v.blocks):
        m = v.blocks == b
        if m.sum() <= SHORT_BLOCK:
            out[m] = np.abs(depth[m] - (depth[m].min() + depth[m].max()) / 2)
    return out


def acquisition_kind(v: Volume, idx: int) -> str:
    """The kind of acquisition slice idx belongs to, for reports: "block, odd" / "block, even" (a short
    block through one disc: odd counts have a slice through the block's middle), "stack" (a longer run
    of slices 3 mm or more apart) or "thin" (closer: a level spans several slices)."""
    m = v.blocks == v.blocks[idx]
    if m.sum() <= SHORT_BLOCK:
        return "block, odd" if m.sum() % 2 else "block, even"
    return "stack" if v.slice_step(m) >= 3.0 else "thin"


def candidates(vols: list[tuple[int, Volume]], target: np.ndarray, max_gap_mm: float) -> list[Candidate]:
    """The MAX_CANDIDATES planes nearest `target` among those within max_gap_mm whose image holds its
    foot, over the given series (all blocks)."""
    out = []
    for sid, v in vols:
        if not v.has_positions:
            continue
        dist, xy, inside = v.project(target)
        _, front, _ = v.project(np.asarray(target, np.float64) + ANTERIOR_MM * np.array([0.0, -1.0, 0.0]))  # LPS: -y is anterior
        offsets = block_offsets(v)
        for j in np.flatnonzero(inside & (dist <= max_gap_mm)):
            out.append(Candidate(sid, int(j), float(dist[j]), (float(xy[j, 0]), float(xy[j, 1])), float(offsets[j]),
                                 (float(front[j, 0]), float(front[j, 1]))))
    out.sort(key=lambda c: c.distance)
    return out[:MAX_CANDIDATES]


def window_means(img: np.ndarray, xy, spacing) -> list[float]:
    """Mean of img in squares of WINDOWS_MM half-widths centred on xy (clipped to the image)."""
    h, w = img.shape
    x, y = int(round(min(max(xy[0], 0), w - 1))), int(round(min(max(xy[1], 0), h - 1)))
    out = []
    for mm in WINDOWS_MM:
        rx, ry = max(1, int(round(mm / spacing[1]))), max(1, int(round(mm / spacing[0])))
        out.append(float(img[max(0, y - ry):y + ry + 1, max(0, x - rx):x + rx + 1].mean()))
    return out


def features(cands: list[Candidate], pixels_of, spacing_of, probas: dict | None, cls: int) -> np.ndarray:
    """[len(cands), len(FEATURES)]: each candidate against the others. pixels_of(series id) gives the
    series' normalised pixels [n, h, w]; spacing_of(series id) its (row, column) spacing."""
    d = np.array([c.distance for c in cands])
    W = np.array([window_means(pixels_of(c.series_id)[c.slice], c.xy, spacing_of(c.series_id)) for c in cands])
    lp = np.array([np.log(probas[c.series_id][c.slice, cls] + 1e-4) if probas and probas.get(c.series_id) is not None
                   else 0.0 for c in cands])
    b = np.array([c.block_offset for c in cands])
    F = np.array([window_means(pixels_of(c.series_id)[c.slice], c.front_xy, spacing_of(c.series_id)) for c in cands])
    return np.column_stack([d, d ** 2, lp - lp.max(), W - W.max(0), W - W.mean(0), b, b - b.min(), F - F.max(0), F - F.mean(0)])


@dataclass
class Scorer:
    """A logistic regression over FEATURES (standardised): the candidate with the highest score wins."""
    mean: list = field(default_factory=list)
    scale: list = field(default_factory=list)
    coef: list = field(default_factory=list)

    @classmethod
    def fit(cls, groups: list[tuple[np.ndarray, np.ndarray]], seed: int = 0) -> "Scorer | None":
        """groups: (features [c, F], which candidate is the labelled slice [c] bool); groups without
        the labelled slice among their candidates teach nothing and are skipped. None with too few."""
        from sklearn.linear_model import LogisticRegression

        groups = [(X, y) for X, y in groups if y.any() and len(y) > 1]
        if len(groups) < 10:
            return None
        X = np.concatenate([g[0] for g in groups])
        y = np.concatenate([g[1] for g in groups])
        mean, scale = X.mean(0), X.std(0) + 1e-6
        m = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit((X - mean) / scale, y)
        return cls(mean.round(6).tolist(), scale.round(6).tolist(), m.coef_[0].round(6).tolist())

    def best(self, X: np.ndarray) -> int:
        return int(np.argmax(((X - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scorer":
        if len(d.get("coef", ())) != len(FEATURES):
            raise ValueError(f"a slice scorer of {len(d.get('coef', ()))} features; this code computes {len(FEATURES)}")
        return cls(**d)
