"""Stage one per study, what inference runs (and training caches): features -> chosen slices -> crops of a
few neighbouring slices. Its trainers (the selector, the crop regions) are train/selector.py and train/crops.py.

Everything goes through the per-study cache. A study's crops are keyed by a hash of the config, its
selection and the crop regions, so a second run over the same data is a file read per study.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from .. import schema
from ..data.cache import StudyCache, config_hash
from ..data.catalog import Study
from ..data.dicom import Volume
from ..layout import Run
from ..data.volumes import cached_geometry, DECODE_VERSION, keep_geometry, normalised, study_volumes
from .crops import CROP_NAMES, CROPS, CropRegions, crop_resize, map_points
from .levels import thumbnails
from .placement import N_LEVELS, canal_points, centre_of, make_choice, per_level, place, with_levels
from .slice_select import FEATURE_VERSION, SliceSelector, naive_choice, sagittal_extent, slice_features, slice_targets

PREPROCESS_VERSION = 3  # 2: labelled points through each slice's geometry, neighbours within a block; 3: crops by data/resample.py


@dataclass
class PreprocessConfig:
    sag_size: int = 128  # a sagittal crop's side in pixels
    axial_size: int = 96  # an axial crop's side in pixels
    margin: float = 0.04  # room added on each side of a crop's box around its points (a share of the image side)
    slices: int = 3  # neighbouring slices per crop, centred on the chosen one (its channels; odd). 1st place: 5
    spare: int = 0  # slices more on each side, kept for training's slice-shift augmentation (the model reads
    # the centre `slices`; inference builds none)

    @property
    def channels(self) -> int:
        """What a crop holds: its slices and the spare ones."""
        return self.slices + 2 * self.spare

    def __post_init__(self):
        if self.slices < 1 or self.slices % 2 == 0 or self.spare < 0:
            raise ValueError(f"crops: slices={self.slices}, spare={self.spare}: slices must be odd and >= 1 "
                             "(centred on the chosen slice), spare >= 0")


def cache_version() -> str:
    """The cache folder name: decode, feature and preprocessing versions (crops add their own keys)."""
    return f"v{DECODE_VERSION}.{FEATURE_VERSION}.{PREPROCESS_VERSION}"


def read_preprocess_config(run) -> PreprocessConfig:
    """The crop geometry `train --model crops` used in a run (its config.json)."""
    import json

    path = Run(run).config("crops")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no crops in this run; run `python -m lumbar train --model crops` first")
    return preprocess_config(json.loads(path.read_text()))


def preprocess_config(d: dict) -> PreprocessConfig:
    """The crop geometry among a crops config's fields (its json, or `asdict` of it; weights from before
    `slices` and `spare` existed read as the three slices they were built with)."""
    from dataclasses import fields

    return PreprocessConfig(**{f.name: d.get(f.name, f.default) for f in fields(PreprocessConfig)})


def _reference_extent(by_type: dict[str, list]) -> tuple[float, float] | None:
    """The sagittal field of view (T2, else T1) that places axial slices along the spine."""
    ref = (by_type.get(schema.SAG_T2) or by_type.get(schema.SAG_T1) or [None])[0]
    if ref is None:
        return None
    return sagittal_extent(ref.volume if isinstance(ref, SeriesFeatures) else ref[1])


@dataclass
class SeriesFeatures:
    series_id: int
    volume: Volume
    features: np.ndarray


def study_features(study: Study, cache: StudyCache | None,
                   volumes: dict[str, list[tuple[int, Volume]]] | None = None,
                   keep_pixels: bool = True) -> dict[str, list[SeriesFeatures]]:
    """Series type -> per-series slice features (cached), computed on the study's decoded volumes.
    keep_pixels=False keeps each volume's geometry only (its pixels a zero-size broadcast of the same
    shape): what slice selection and its training read, at a few kB per study."""
    vols = volumes
    if vols is None and not keep_pixels and cache is not None:
        # geometry and cached features: no decode (the slice selector's training over every study)
        geo = cached_geometry(study, cache)
        if geo is not None and _all_cached(study, cache, _feature_names(geo)):
            vols = geo
    if vols is None:
        vols = study_volumes(study, cache)
    if not keep_pixels:  # a geometry-only reader comes back: spare its next decode (inference never does)
        keep_geometry(study, cache, vols)
    extent = _reference_extent(vols)
    out: dict[str, list[SeriesFeatures]] = {}
    for stype, items in vols.items():
        for sid, v in items:
            def build(v=v):
                return {"x": slice_features(v, extent if stype == schema.AXIAL else None)}
            feats = cache.get(study.study_id, f"feat_{sid}", build)["x"] if cache else build()["x"]
            out.setdefault(stype, []).append(SeriesFeatures(sid, v if keep_pixels else v.geometry_only(), feats))
    return out


def sagittal_thumbs(study: Study, cache: StudyCache | None, vols=None) -> dict[int, np.ndarray]:
    """Series id -> the level network's thumbnails of each sagittal T2 series (cached; decoded only on
    a miss): what its training and held-out evaluation read instead of the pixels."""
    out = {}
    for rec in study.series.get(schema.SAG_T2, []):
        def build(rec=rec):
            nonlocal vols
            if vols is None:
                vols = study_volumes(study, cache)
            v = dict(vols.get(schema.SAG_T2, [])).get(rec.series_id)
            return {"t": thumbnails(v) if v is not None else np.zeros((0, 1, 1), np.float16)}
        t = cache.get(study.study_id, f"thumb_{rec.series_id}", build)["t"] if cache else build()["t"]
        if len(t):
            out[rec.series_id] = t
    return out


def features_cached(study: Study, cache: StudyCache | None) -> bool:
    """Whether the study's geometry, slice features and thumbnails are all in the cache (nothing to decode)."""
    geo = cached_geometry(study, cache)
    thumbs = [f"thumb_{rec.series_id}" for rec in study.series.get(schema.SAG_T2, [])]
    return geo is not None and _all_cached(study, cache, _feature_names(geo) + thumbs)


def _feature_names(geo: dict[str, list]) -> list[str]:
    """The slice-feature cache entries of a study's series."""
    return [f"feat_{sid}" for items in geo.values() for sid, _ in items]


def _all_cached(study: Study, cache: StudyCache, names: list[str]) -> bool:
    return all(cache.path(study.study_id, n).exists() for n in names)


def training_rows(study: Study, feats: dict[str, list[SeriesFeatures]]):
    """(series type, features, classes) for each series with coordinates."""
    for stype, items in feats.items():
        for sf in items:
            y = slice_targets(stype, sf.volume, sf.series_id, study.coords)
            if y is not None:
                yield stype, sf.features, y


# crop name -> (series_id, slice index), or (series_id, slice index, centre x, centre y) where the
# level points placed the crop's centre (stored pixels of that slice), or that and each level's own
# slice and row (sagittal T1: placement.with_levels)
Selection = dict[str, tuple]


def series_probas(feats: dict[str, list[SeriesFeatures]], selector: SliceSelector | None,
                  member: str | None = None) -> dict[int, np.ndarray | None]:
    """Series id -> the classifier's per-slice probabilities (None where its type was never fitted)."""
    if selector is None:
        return {}
    return {sf.series_id: selector.predict_proba(stype, sf.features, member) for stype, items in feats.items()
            for sf in items}


def select(feats: dict[str, list[SeriesFeatures]], selector: SliceSelector | None, member: str | None = None,
           naive: bool = False, probas: dict[int, np.ndarray | None] | None = None) -> Selection:
    """For each crop, the (series, slice) where its class is most probable across the study's series
    of that type. With naive=True, the naive rule instead; with no fitted selector, naive too."""
    extent = _reference_extent(feats)
    if probas is None and not naive:
        probas = series_probas(feats, selector, member)
    best: dict[str, tuple[float, int, int]] = {}
    for stype, items in feats.items():
        for sf in items:
            proba = None if naive or not probas else probas.get(sf.series_id)
            naive_idx = naive_choice(stype, sf.volume, extent) if proba is None else None
            for name, (t, cls, _) in CROPS.items():
                if t != stype:
                    continue
                if proba is None:
                    idx, score = naive_idx[cls], -1.0
                else:
                    idx = int(np.argmax(proba[:, cls]))
                    score = float(proba[idx, cls])
                if name not in best or score > best[name][0]:
                    best[name] = (score, sf.series_id, idx)
    return {name: (sid, idx) for name, (_, sid, idx) in best.items()}


def level_points(feats: dict[str, list[SeriesFeatures]], selector: SliceSelector | None, selection: Selection,
                 probas: dict[int, np.ndarray | None], thumbs: dict[int, np.ndarray] | None = None,
                 pixels_of=None):
    """The five canal points (patient mm) the selector's level network finds on the chosen sagittal
    T2 slice, or None (no network, no sagittal T2, no positions, or points that are not a spine).
    The second look reads the slice's pixels: the volume's own, or `pixels_of(series_id)` (normalised)
    where the features hold geometry only."""
    if selector is None or selector.levels is None or "sag_t2" not in selection:
        return None
    sid, idx = selection["sag_t2"][:2]
    sf = next((sf for sf in feats.get(schema.SAG_T2, []) if sf.series_id == sid), None)
    if sf is None:
        return None
    geometry_only = sf.volume.pixels.strides == (0, 0, 0)  # training reads features, not pixels
    t = thumbs.get(sid) if thumbs else None
    if t is None and geometry_only:
        return None
    if t is None:
        t = thumbnails(sf.volume)
    proba = probas.get(sid)
    px = (pixels_of(sid) if pixels_of else None) if geometry_only else normalised(sf.volume)
    P, _ = canal_points(sf.volume, idx, t, selector.levels, None if proba is None else proba[:, 1], px)
    return P


def geometric(feats: dict[str, list[SeriesFeatures]], selector: SliceSelector | None, selection: Selection,
              probas: dict[int, np.ndarray | None], thumbs: dict[int, np.ndarray] | None = None,
              methods: dict[str, str] | None = None, points=None, pixels_of=None, geometry=None) -> Selection:
    """The classifier's selection placed through the level points (placement.place); unchanged
    without them. `pixels_of` where the features hold geometry only (training); `geometry` instead of
    the selector's (training's held-out scorers)."""
    P = level_points(feats, selector, selection, probas, thumbs) if points is None else points
    if P is None:
        return selection
    return place(selection, series_items(feats), probas, P, geometry or selector.geometry, methods, pixels_of)


def series_items(feats: dict[str, list[SeriesFeatures]]) -> dict[str, list[tuple[int, Volume]]]:
    """Series type -> [(series id, volume)]: the features' volumes in the shape placement reads."""
    return {stype: [(sf.series_id, sf.volume) for sf in sfs] for stype, sfs in feats.items()}


def naive_selection(vols: dict[str, list[tuple[int, Volume]]]) -> Selection:
    """The naive rule's selection from decoded volumes alone (no slice features needed)."""
    feats = {stype: [SeriesFeatures(sid, v, np.zeros((len(v), 0), np.float32)) for sid, v in items]
             for stype, items in vols.items()}
    return select(feats, None, naive=True)


def labelled_slices(study: Study, feats: dict[str, list[SeriesFeatures]]) -> list[tuple[str, int, int, int]]:
    """(crop name, series_id, slice index, level index) of every labelled (condition, level) of the study."""
    out = []
    if not len(study.coords):
        return out
    index = {sf.series_id: sf.volume for items in feats.values() for sf in items}
    for r in study.coords.itertuples(index=False):
        v = index.get(int(r.series_id))
        if v is None:
            continue
        j = schema.label_index(schema.condition_slug(r.condition), schema.level_slug(r.level))
        name = next(n for n, (_, _, cols) in CROPS.items() if j in cols)
        try:
            out.append((name, int(r.series_id), v.index_of_instance(int(r.instance_number)),
                        schema.LEVELS.index(schema.level_slug(r.level))))
        except KeyError:
            continue
    return out


def true_selection(study: Study, feats: dict[str, list[SeriesFeatures]], per_level_crops=("sag_t1_left", "sag_t1_right")) -> Selection:
    """Per crop, the labelled (series, slice) most of its levels share (the median slice); the crops
    of `per_level_crops` also carry each labelled level's own slice and row (unlabelled levels: the
    median slice, no row), as placement gives them."""
    per: dict[str, list[tuple[int, int, int]]] = {}
    for name, sid, idx, level in labelled_slices(study, feats):
        per.setdefault(name, []).append((sid, idx, level))
    volumes = {sf.series_id: sf.volume for items in feats.values() for sf in items}
    out: Selection = {}
    for name, items in per.items():
        sid = max(set(s for s, _, _ in items), key=[s for s, _, _ in items].count)
        idxs = sorted(i for s, i, _ in items if s == sid)
        idx = idxs[len(idxs) // 2]
        out[name] = (sid, idx)
        if name in per_level_crops:
            slices, rows = [idx] * N_LEVELS, [np.nan] * N_LEVELS
            pts, _ = labels_for(study, name, sid, volumes[sid])
            for s, i, level in items:
                if s == sid and np.isfinite(pts[level]).all():
                    slices[level], rows[level] = i, float(pts[level, 1])
            out[name] = with_levels(sid, idx, None, slices, rows)
    return out


def labels_for(study: Study, name: str, series_id: int, v: Volume,
               others: dict[int, Volume] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The crop's labelled points [K, 2] in the series' stored pixels (each mapped from its file's pixel
    grid through its slice's geometry; NaN where unlabelled or on a slice the series lacks) and their
    instance numbers [K] (-1 where unlabelled or labelled in another series).

    With `others` (the study's other series of the same type), a point labelled in one of them is
    carried through patient space onto this series' nearest plane when that plane passes within a
    slice's spacing of it: a study with two sagittal T1 series has its foramina labelled in one, and a
    crop from the other shows the same structure."""
    cols = CROPS[name][2]
    pts = np.full((len(cols), 2), np.nan)
    inst = np.full(len(cols), -1, np.int64)
    if not len(study.coords):
        return pts, inst
    elsewhere = []
    for r in study.coords.itertuples(index=False):
        j = schema.label_index(schema.condition_slug(r.condition), schema.level_slug(r.level))
        if j not in cols:
            continue
        if int(r.series_id) != series_id:
            elsewhere.append(r)
            continue
        try:
            idx = v.index_of_instance(int(r.instance_number))
        except KeyError:
            continue
        pts[cols.index(j)] = v.from_source(idx, [float(r.x), float(r.y)])[0]
        inst[cols.index(j)] = int(r.instance_number)
    if others and v.has_positions:
        reach = v.slice_step()
        for r in elsewhere:
            k = cols.index(schema.label_index(schema.condition_slug(r.condition), schema.level_slug(r.level)))
            o = others.get(int(r.series_id))
            if np.isfinite(pts[k]).all() or o is None or not o.has_positions:
                continue
            try:
                idx = o.index_of_instance(int(r.instance_number))
            except KeyError:
                continue
            p = o.to_patient(idx, o.from_source(idx, [float(r.x), float(r.y)]))[0]
            dist, xy, _ = v.project(p)
            near = int(np.argmin(dist))
            if dist[near] <= reach:
                pts[k] = xy[near]
    return pts, inst


def build_crops(study: Study, vols: dict[str, list[tuple[int, Volume]]], selection: Selection,
                regions: CropRegions, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """The cache entry of a study's crops: sagittal [3, C, S, S] and axial [5, C, S, S] images (float16;
    C = cfg.channels neighbouring slices), points in crop pixels (NaN unknown), presence, boxes, series
    and slices."""
    n, c = len(CROP_NAMES), cfg.channels
    sag = np.zeros((3, c, cfg.sag_size, cfg.sag_size), np.float16)
    axial = np.zeros((5, c, cfg.axial_size, cfg.axial_size), np.float16)
    sag_pts = np.full((3, 5, 2), np.nan, np.float32)
    ax_pts = np.full((5, 2, 2), np.nan, np.float32)
    present = np.zeros(n, bool)
    boxes = np.zeros((n, 4), np.float32)
    series = np.full(n, -1, np.int64)
    slices = np.full(n, -1, np.int64)
    instances = np.full(n, -1, np.int64)
    true_instances = np.full(n, -1, np.int64)
    from_image = np.zeros(n, bool)
    mm_per_px = np.zeros(n, np.float32)
    by_id = {sid: v for items in vols.values() for sid, v in items}
    pixels: dict[int, np.ndarray] = {}
    for i, name in enumerate(CROP_NAMES):
        if name not in selection or selection[name][0] not in by_id:
            continue
        sid, idx = selection[name][:2]
        v = by_id[sid]
        if sid not in pixels:
            pixels[sid] = normalised(v)  # once per volume, however many crops read it
        px = pixels[sid]
        size = cfg.sag_size if i < 3 else cfg.axial_size
        box, from_image[i] = regions.box(name, px[idx], centre_of(selection[name]))  # centre: from the level points
        img = banded(px, v, idx, per_level(selection[name]), box, size, c)
        same_type = {s: o for s, o in vols.get(CROPS[name][0], []) if s != sid}
        raw_pts, labelled = labels_for(study, name, sid, v, same_type)
        pts = map_points(raw_pts, box, size).astype(np.float32)
        if i < 3:
            sag[i], sag_pts[i] = img, pts
        else:
            axial[i - 3], ax_pts[i - 3] = img, pts
        present[i], boxes[i], series[i], slices[i] = True, box, sid, idx
        instances[i] = v.instance_numbers[idx]
        mm_per_px[i] = float(v.pixel_spacing[0]) * (box[2] - box[0]) / size
        if (labelled >= 0).any():  # the instance most of its labelled points sit on
            true_instances[i] = int(np.bincount(labelled[labelled >= 0]).argmax())
    return {"sag_image": sag, "axial_image": axial, "sag_points": sag_pts, "axial_points": ax_pts,
            "present": present, "boxes": boxes, "series_id": series, "slice": slices, "instance": instances,
            "true_instance": true_instances, "from_image": from_image, "mm_per_px": mm_per_px}


def banded(px: np.ndarray, v: Volume, idx: int, levels: tuple[list[int], list[float]] | None,
           box: np.ndarray, size: int, count: int = 3) -> np.ndarray:
    """The crop [count, S, S] of slice idx and its neighbours; where each level has its own slice (and its
    row on it), the crop's rows nearest a level come from that level's slice and its neighbours (the
    bands meet halfway between consecutive levels' rows)."""
    img = crop_resize(px[v.neighbours(idx, count)], box, size)
    if levels is None:
        return img
    slices, rows = levels
    known = [(r, s) for r, s in zip(rows, slices) if np.isfinite(r)]
    if not known or all(s == idx for _, s in known):
        return img
    crop_rows = map_points(np.array([[0.0, r] for r, _ in known]), box, size)[:, 1]
    owner = np.abs(np.arange(size)[:, None] - crop_rows[None, :]).argmin(1)  # each crop row's nearest level
    out = img.copy()
    for s in {s for _, s in known} - {idx}:
        mine = np.isin(owner, [k for k, (_, t) in enumerate(known) if t == s])
        out[:, mine] = crop_resize(px[v.neighbours(s, count)], box, size)[:, mine]
    return out


CROPS_VERSION = 2  # 2: points labelled in another series of the crop's type carried through patient space


def crops_key(cfg: PreprocessConfig, selection: Selection, regions: CropRegions) -> str:
    return f"crops{CROPS_VERSION}_" + config_hash(asdict(cfg), sorted((k, list(v)) for k, v in selection.items()), asdict(regions))


def study_crops(study: Study, selection: Selection, regions: CropRegions, cfg: PreprocessConfig,
                cache: StudyCache | None, vols: dict[str, list[tuple[int, Volume]]] | None = None) -> dict[str, np.ndarray]:
    """Cached build_crops: decodes the study (unless `vols` are given) only on a miss."""
    def build():
        return build_crops(study, vols if vols is not None else study_volumes(study, cache), selection, regions, cfg)
    return cache.get(study.study_id, crops_key(cfg, selection, regions), build) if cache else build()


def selection_to_arrays(sel: Selection) -> dict[str, np.ndarray]:
    none = (-1, -1)
    levels = [per_level(sel[n]) if n in sel else None for n in CROP_NAMES]
    return {"series_id": np.array([sel.get(n, none)[0] for n in CROP_NAMES], np.int64),
            "slice": np.array([sel.get(n, none)[1] for n in CROP_NAMES], np.int64),
            "centre": np.array([centre_of(sel[n]) or (np.nan, np.nan) if n in sel else (np.nan, np.nan)
                                for n in CROP_NAMES], np.float64),
            "levels": np.array([lv[0] if lv else [-1] * N_LEVELS for lv in levels], np.int64),
            "level_rows": np.array([lv[1] if lv else [np.nan] * N_LEVELS for lv in levels], np.float64)}


def arrays_to_selection(a: dict[str, np.ndarray]) -> Selection:
    n = len(CROP_NAMES)
    centre = a["centre"] if "centre" in a else np.full((n, 2), np.nan)
    levels = a["levels"] if "levels" in a else np.full((n, N_LEVELS), -1)
    rows = a["level_rows"] if "level_rows" in a else np.full((n, N_LEVELS), np.nan)
    out: Selection = {}
    for k, (name, s, i) in enumerate(zip(CROP_NAMES, a["series_id"], a["slice"])):
        if s < 0:
            continue
        c = centre[k] if np.isfinite(centre[k]).all() else None
        out[name] = make_choice(s, i, c, (levels[k], rows[k]) if (levels[k] >= 0).all() else None)
    return out


def select_slices(study: Study, selector: SliceSelector | None, cache: StudyCache | None,
                  vols: dict[str, list[tuple[int, Volume]]] | None = None, selector_id: str = "") -> Selection:
    """Stage one's choice of slices for a study (the naive rule without a selector); cached per
    selector when `selector_id` names it."""
    def build():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sklearn feature-name chatter
            feats = study_features(study, cache, vols)
            probas = series_probas(feats, selector)
            return selection_to_arrays(geometric(feats, selector, select(feats, selector, probas=probas), probas))
    arrays = cache.get(study.study_id, f"sel_{selector_id}", build) if cache and selector_id else build()
    return arrays_to_selection(arrays)


def preprocess_study(study: Study, selector: SliceSelector | None, selector_id: str, regions: CropRegions,
                     cfg: PreprocessConfig, cache: StudyCache | None, vols=None,
                     selection: Selection | None = None) -> dict[str, np.ndarray]:
    """Stage one at inference, the one path the engine, bench and reports take: choose slices (unless
    `selection` is given) and crop (cached per selection)."""
    if selection is None:
        selection = select_slices(study, selector, cache, vols, selector_id)
    return study_crops(study, selection, regions, cfg, cache, vols)


def folder_fingerprint(folder) -> str:
    """sha1 over a folder's files (names and bytes): names cache entries after what produced them."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha1()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def load_stage_one(run):
    """(selector, selector id, crop regions, preprocess config) saved by `train --model slice_select`
    and `train --model crops` in a run directory; clear errors when a stage has not been trained."""
    run = Run(run)
    model = run.selector
    if not (model / "selector.json").exists():
        raise FileNotFoundError(f"{model}: no slice selector; run `python -m lumbar train --model slice_select` first")
    regions_path = run.regions()
    if not regions_path.exists():
        raise FileNotFoundError(f"{regions_path}: no crop regions; run `python -m lumbar train --model crops` first")
    return SliceSelector.load(model), folder_fingerprint(model), CropRegions.load(regions_path), read_preprocess_config(run.root)
