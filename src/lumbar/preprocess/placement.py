"""Stage one's choices through patient space, as the best solutions made them: the five level points
found on the sagittal T2 (levels.py) place each level's axial slice (the plane passing closest, over
every axial series and block), the sagittal T1 slice of each side (the canal's points moved by the
foramen offset learned in training) and every crop's centre (the points projected onto the chosen
slice). The slice classifiers stay: "fused" weighs their probability by the plane's distance,
"local" weighs the planes near each target by what they show there (evidence.py), and where a study
has no sagittal T2, no positions or implausible points, their choice stands.

The sagittal T1 crops of a side take each level's slice on its own (the foramina of one side do not lie
in one plane: a spine turned a few degrees moves them a slice between L1 and S1), so a choice may carry
five slices and the row of each level on them: (series, slice, centre x, centre y, s1..s5, y1..y5); the
crop's rows around a level come from that level's slice (pipeline.build_crops).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import schema
from ..data.dicom import Volume
from .evidence import FEATURES, Scorer, candidates, features
from .ranker import Ranker, candidate_patches, ranker_from
from .levels import N_LEVELS, LevelLocaliser, from_thumb, stack_at

METHODS = ("ensemble", "geometry", "fused", "local", "ranked")  # how a series type's slice is chosen
MIN_PITCH_MM = 12.0  # consecutive level points closer than this (or out of order) are not a spine


@dataclass
class Geometry:
    """What placement learned in training (saved in levels.json beside the network)."""
    offsets: dict = field(default_factory=dict)  # crop name -> mean 3D offset (mm) of its labelled points from the canal's
    choice: dict = field(default_factory=dict)  # series type -> one of METHODS (by held-out accuracy)
    sigma_mm: float = 3.0  # fused: a plane this far off costs what a classifier probability e^-0.5 times lower does
    max_gap_mm: float = 10.0  # no geometric choice for a level farther than this from every plane
    scorers: dict = field(default_factory=dict)  # series type -> evidence.Scorer as a dict ("local")
    rankers: dict = field(default_factory=dict)  # series type -> ranker.Ranker as a dict ("ranked")

    def scorer(self, stype: str) -> Scorer | None:
        d = self.scorers.get(stype)
        return Scorer.from_dict(d) if d else None

    def ranker(self, stype: str) -> Ranker | None:
        d = self.rankers.get(stype)
        return ranker_from(d, len(FEATURES)) if d else None


def centre_of(choice: tuple) -> tuple[float, float] | None:
    """A choice's crop centre (stored pixels), None where the classifiers' regions place the box."""
    if len(choice) >= 4 and np.isfinite(choice[2:4]).all():
        return float(choice[2]), float(choice[3])
    return None


def per_level(choice: tuple) -> tuple[list[int], list[float]] | None:
    """(each level's slice, each level's row on it) of a choice that carries them, else None."""
    if len(choice) < 4 + 2 * N_LEVELS:
        return None
    return [int(s) for s in choice[4:4 + N_LEVELS]], [float(y) for y in choice[4 + N_LEVELS:4 + 2 * N_LEVELS]]


def slice_for(choice: tuple, level: int) -> int:
    """The slice a choice shows level `level` (0 = L1/L2) on."""
    levels = per_level(choice)
    return levels[0][level] if levels else int(choice[1])


def with_levels(sid: int, idx: int, centre, slices, rows) -> tuple:
    """The choice tuple of a crop whose levels each have their own slice."""
    c = tuple(centre) if centre is not None else (np.nan, np.nan)
    return (int(sid), int(idx), *map(float, c), *map(int, slices), *map(float, rows))


def make_choice(sid: int, idx: int, centre=None, levels: tuple | None = None) -> tuple:
    """The shortest choice tuple that holds what is given: (series, slice), a finite centre, each
    level's (slices, rows)."""
    if levels is not None:
        return with_levels(sid, idx, centre, *levels)
    if centre is not None and np.isfinite(centre).all():
        return (int(sid), int(idx), *map(float, centre))
    return int(sid), int(idx)


def canal_points(v: Volume, idx: int, thumbs: np.ndarray, localiser: LevelLocaliser,
                 proba: np.ndarray | None = None, pixels: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """(five patient points [5, 3] or None when implausible, peak masses [5]) from the canal slice
    `idx` of a sagittal T2 volume; with its normalised pixels [n, h, w] the second look refines them.
    With the canal classifier's slice probabilities the points move along the normal to their
    probability-weighted depth (finer than a slice step)."""
    # the network on the canal slice and on its neighbours (parallel slices share one pixel grid):
    # the mean of the three answers is steadier than any one
    near = sorted(set(v.neighbours(idx, 3)))
    pts, mass = localiser.predict(np.stack([stack_at(thumbs, v, j) for j in near]))
    xy = from_thumb(pts.mean(0), v.pixels.shape[1:])
    mass = mass.mean(0, keepdims=True)
    if pixels is not None and localiser.fine is not None:
        xy = localiser.refine(pixels[v.neighbours(idx, 3)], xy, v.pixel_spacing)
    P = v.to_patient(idx, xy)
    if proba is not None and v.has_positions:
        near = v.neighbours(idx, 3)
        w = np.asarray([proba[i] for i in near], np.float64)
        if w.sum() > 0:
            depth = v.depth
            P = P + ((w @ depth[near]) / w.sum() - depth[idx]) * v.normal
    if not v.has_positions or not plausible(P):
        return None, mass[0]
    return P, mass[0]


def plausible(P: np.ndarray) -> bool:
    """Level points run down the spine (L1/L2 highest: +z is superior in LPS) a disc pitch apart."""
    dz = -np.diff(P[:, 2])
    return bool(np.isfinite(P).all() and (dz > 0).all() and (np.linalg.norm(np.diff(P, axis=0), axis=1) >= MIN_PITCH_MM).all())


def plane_choice(vols: list[tuple[int, Volume]], point: np.ndarray, probas: dict[int, np.ndarray | None] | None,
                 cls: int, method: str, geo: Geometry) -> tuple[int, int, float] | None:
    """(series id, slice, distance mm) whose plane passes closest to `point` within its field of view
    ("geometry"), or the best classifier probability weighed by that distance ("fused"); None when no
    plane is within geo.max_gap_mm (or no series has positions)."""
    best = None
    for sid, v in vols:
        if not v.has_positions:
            continue
        dist, _, inside = v.project(point)
        ok = inside & (dist <= geo.max_gap_mm)
        if not ok.any():
            continue
        score = -(dist ** 2) / (2 * geo.sigma_mm ** 2)
        if method == "fused" and probas and probas.get(sid) is not None:
            score = score + np.log(probas[sid][:, cls] + 1e-4)
        score = np.where(ok, score, -np.inf)
        i = int(np.argmax(score))
        if best is None or score[i] > best[0]:
            best = (float(score[i]), sid, i, float(dist[i]))
    return None if best is None else best[1:]


def local_choice(vols: list[tuple[int, Volume]], target: np.ndarray, probas, cls: int, scorer: Scorer | Ranker,
                 geo: Geometry, pixels_of) -> tuple[int, int] | None:
    """(series id, slice) of the candidate plane near `target` the scorer (or ranker) ranks first;
    None without one."""
    cands = candidates(vols, target, geo.max_gap_mm)
    if not cands:
        return None
    if len(cands) == 1:
        return cands[0].series_id, cands[0].slice
    spacing = {sid: v.pixel_spacing for sid, v in vols}
    X = features(cands, pixels_of, spacing.__getitem__, probas, cls)
    if isinstance(scorer, Ranker):
        best = cands[scorer.best(X, candidate_patches(cands, vols, pixels_of))]
    else:
        best = cands[scorer.best(X)]
    return best.series_id, best.slice


def side_choice(vols: list[tuple[int, Volume]], points: np.ndarray, probas, cls: int, method: str,
                geo: Geometry, pixels_of=None, prefer: int | None = None) -> tuple[int, int, list[int]] | None:
    """A side's sagittal series (`prefer`, the classifiers' series, where one of its planes reaches
    the points' median; else the one whose plane passes nearest it), its central slice and each level's
    own slice there (by `method`; a level no plane reaches takes the central)."""
    mode, median = "fused" if method == "fused" else "geometry", np.median(points, axis=0)
    first = plane_choice([(s, v) for s, v in vols if s == prefer], median, probas, cls, mode, geo) if prefer is not None else None
    if first is None:
        first = plane_choice(vols, median, probas, cls, mode, geo)
    if first is None:
        return None
    sid = first[0]
    series = [(s, v) for s, v in vols if s == sid]
    scorer = geo.scorer(schema.SAG_T1) if method == "local" else None
    slices = []
    for p in points:
        if scorer is not None and pixels_of is not None:
            got = local_choice(series, p, probas, cls, scorer, geo, pixels_of)
        else:
            got = plane_choice(series, p, probas, cls, mode, geo)
        slices.append(first[1] if got is None else got[1])
    return sid, int(sorted(slices)[len(slices) // 2]), slices


def centre_on(v: Volume, idx: int, points: np.ndarray) -> tuple[float, float] | None:
    """The mean foot (stored pixels) of the points that fall inside slice idx's image."""
    feet = []
    for p in points:
        _, xy, inside = v.project(p)
        if inside[idx]:
            feet.append(xy[idx])
    return tuple(np.mean(feet, 0).tolist()) if feet else None


def place(selection: dict, items: dict[str, list[tuple[int, Volume]]], probas: dict[int, np.ndarray | None],
          P: np.ndarray | None, geo: Geometry, methods: dict[str, str] | None = None, pixels_of=None) -> dict:
    """The classifier's selection {crop: (series, slice)} refined through the level points P [5, 3]:
    per series type the method of `methods` (default geo.choice; "ensemble" keeps the classifier's
    slice), and every crop centred on its points projected onto its slice: {crop: (series, slice, x, y)}
    (sagittal T1 by any other method: each level's own slice and row too, see with_levels).
    "local" reads pixels: pixels_of(series id) -> normalised [n, h, w], by default the volumes' own."""
    from ..data.volumes import normalised
    from .crops import CROPS

    if P is None:
        return dict(selection)
    methods = methods if methods is not None else geo.choice
    out = dict(selection)
    by_id = {sid: v for vs in items.values() for sid, v in vs}
    if pixels_of is None:
        memo: dict[int, np.ndarray] = {}

        def pixels_of(sid):  # normalised once per series, however many levels read it
            if sid not in memo:
                memo[sid] = normalised(by_id[sid])
            return memo[sid]
    for name, (stype, cls, _) in CROPS.items():
        targets = P + np.asarray(geo.offsets.get(name, np.zeros(3)), np.float64)
        method = methods.get(stype, "ensemble")
        levels = None
        if method != "ensemble" and stype != schema.SAG_T2:
            if stype == schema.AXIAL:
                scorer = {"local": geo.scorer, "ranked": geo.ranker}.get(method, lambda _: None)(stype)
                if scorer is not None:
                    got = local_choice(items.get(stype, []), targets[cls - 1], probas, cls, scorer, geo, pixels_of)
                else:
                    got = plane_choice(items.get(stype, []), targets[cls - 1], probas, cls,
                                       "geometry" if method in ("local", "ranked") else method, geo)
            else:
                got = side_choice(items.get(stype, []), targets, probas, cls, method, geo, pixels_of,
                                  prefer=out[name][0] if name in out else None)
                levels = got[2] if got is not None else None
            if got is not None:
                out[name] = (got[0], got[1])
        if name not in out or out[name][0] not in by_id:
            continue
        sid, idx = out[name][:2]
        v = by_id[sid]
        if not v.has_positions:
            continue
        pts = targets[[cls - 1]] if stype == schema.AXIAL else targets
        c = centre_on(v, idx, pts)
        if levels is not None:
            rows = [float(v.project(p)[1][s, 1]) for p, s in zip(targets, levels)]
            out[name] = with_levels(sid, idx, c, levels, rows)
        elif c is not None:
            out[name] = (sid, idx, *c)
    return out


def labelled_points(study, items: dict[str, list[tuple[int, Volume]]]) -> dict[str, np.ndarray]:
    """Crop name -> its labelled points in patient space [5 levels, 3] (NaN where unlabelled)."""
    from .crops import CROPS

    by_id = {sid: v for vs in items.values() for sid, v in vs}
    out = {name: np.full((5, 3), np.nan) for name in CROPS}
    if not len(study.coords):
        return out
    for r in study.coords.itertuples(index=False):
        v = by_id.get(int(r.series_id))
        if v is None or not v.has_positions:
            continue
        j = schema.label_index(schema.condition_slug(r.condition), schema.level_slug(r.level))
        for name, (_, _, cols) in CROPS.items():
            if j in cols:
                try:
                    idx = v.index_of_instance(int(r.instance_number))
                except KeyError:
                    continue
                p = v.to_patient(idx, v.from_source(idx, [float(r.x), float(r.y)]))[0]
                level = schema.LEVELS.index(schema.level_slug(r.level))
                prev = out[name][level]
                out[name][level] = p if not np.isfinite(prev).all() else (prev + p) / 2  # left and right: their middle
    return out


def fit_offsets(per_study: list[dict[str, np.ndarray]]) -> dict[str, list[float]]:
    """Mean offset of each crop's labelled points from the canal's labelled points, same level."""
    from .crops import CROPS

    out = {}
    for name in CROPS:
        if name == "sag_t2":
            continue
        d = [pts[name] - pts["sag_t2"] for pts in per_study]
        d = np.concatenate(d) if d else np.zeros((0, 3))
        d = d[np.isfinite(d).all(1)]
        if len(d):
            out[name] = np.median(d, 0).round(3).tolist()
    return out

