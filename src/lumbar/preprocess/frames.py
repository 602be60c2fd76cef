"""The sequence model's input: per series type, N frames.

Sagittal frames are evenly spaced along the slice direction (right to left, the canonical order);
when a study has several series of a type, `pick` chooses the one covering the most (the widest span
along its normal) or merges them into one stack ordered by position. With `sagittal="placed"` the T1 frames
sit where stage one put the foraminal crops instead, half around each side's slice: evenly spaced
frames step over the foramina, a few slices wide on a series of 15-20 (the sequence model's foraminal
columns were its weakest by far). The T2 frames stay spread: the canal is central, where even frames
fall anyway, and an even count around one slice could not be mirror-symmetric (half per T1 side can,
with an odd half). `sagittal="snapped"` keeps the spread and moves the frame nearest each foraminal
slice onto it. Axial frames are placed per level
(`axial="levels"`): N/5 frames around each level's axial slice, chosen over every block of every axial
series (the stage-one selection, or the naive rule), so a study whose levels are spread over 2-4
series, or a 192-slice stack whose discs would fall between evenly spaced frames, still shows every
level. Each frame is a crop of the region holding the spine, found in the image (edge energy),
resized and normalised per volume (scanners differ in range). A missing series type gives zero
frames and a mask.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import schema
from ..data.cache import StudyCache, config_hash
from ..data.catalog import Study
from ..data.dicom import Volume
from ..data.volumes import normalised, study_volumes
from .crops import crop_resize, edges, find_spine_column, map_points
from .pipeline import naive_selection

FRAMES_VERSION = 5  # 3: axial frames per level across series and blocks; points through slice geometry;
# 4: axial frame boxes centred exactly (mirror-symmetric); 5: sagittal frames placed by stage one (option)


@dataclass
class FramesConfig:
    n_frames: int = 10
    size: int = 64
    pick: str = "most_levels"  # or "merge" (sagittal; axial too with axial="even")
    axial: str = "levels"  # or "even": evenly spaced over one axial series (`pick`)
    sagittal: str = "even"  # "placed": the T1 frames around stage one's foraminal slices, half per side;
    # "snapped": even, the frame nearest each foraminal slice moved onto it
    sag_box: float = 0.7  # sagittal box side, fraction of the image
    axial_box: float = 0.55

    @classmethod
    def of_model(cls, cfg) -> "FramesConfig":
        """The frames a sequence-model config (n_frames, frame_size, pick, axial_frames) reads."""
        return cls(n_frames=cfg.n_frames, size=cfg.frame_size, pick=cfg.pick, axial=cfg.axial_frames,
                   sagittal=cfg.sagittal_frames)

    def uses_selection(self) -> bool:
        """Whether stage one's slice selection places any of the frames."""
        return self.axial == "levels" or self.sagittal != "even"


def choose_series(vols: list[tuple[int, Volume]], pick: str) -> tuple[np.ndarray, np.ndarray, Volume]:
    """(normalised pixels [n, h, w] ordered along the normal, positions [n], reference volume)."""
    if pick not in ("most_levels", "merge"):
        raise ValueError(f"pick must be 'most_levels' or 'merge', not {pick!r}")
    if pick == "most_levels" or len(vols) == 1:
        _, v = max(vols, key=lambda item: (np.ptp(item[1].depth), len(item[1])))
        return normalised(v), v.depth, v
    ref = vols[0][1]
    shape = ref.pixels.shape[1:]
    pixels, pos = [], []
    for _, v in vols:
        px = normalised(v)
        if px.shape[1:] != shape:
            import cv2
            px = np.stack([cv2.resize(p, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) for p in px])
        pixels.append(px)
        pos.append(v.centres @ ref.normal)
    pixels, pos = np.concatenate(pixels), np.concatenate(pos)
    order = np.argsort(pos, kind="stable")
    return pixels[order], pos[order], ref


N_CHANNELS = 5  # points per frame: a level (T2 canal, T1 foramen) or a side (axial recess: 0 left, 1 right)


def _channel(condition: str, level: str) -> tuple[str, int]:
    if condition == "spinal_canal_stenosis":
        return schema.SAG_T2, schema.LEVELS.index(level)
    if condition.endswith("neural_foraminal_narrowing"):
        return schema.SAG_T1, schema.LEVELS.index(level)
    return schema.AXIAL, 0 if condition.startswith("left") else 1


def frame_points(coords, stype: str, sid: int, v: Volume, idx: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """[N, 5, 2] frame-pixel points (NaN unknown): each labelled point of the series, on the frames
    within one slice spacing of its slice (the structure is still in view there)."""
    out = np.full((len(idx), N_CHANNELS, 2), np.nan, np.float32)
    if coords is None or not len(coords):
        return out
    depth = v.depth
    tol = 1.01 * v.slice_step()
    for r in coords[coords["series_id"] == sid].itertuples(index=False):
        t, ch = _channel(schema.condition_slug(r.condition), schema.level_slug(r.level))
        if t != stype:
            continue
        try:
            at = v.index_of_instance(int(r.instance_number))
        except KeyError:
            continue
        near = (np.abs(depth[idx] - depth[at]) <= tol) & (v.blocks[idx] == v.blocks[at])
        out[near, ch] = map_points(v.from_source(at, [float(r.x), float(r.y)]), box, size)[0]
    return out


def level_counts(n: int) -> list[int]:
    """Frames per level: n spread over the five levels, the upper levels taking the remainder."""
    return [n // 5 + (k < n % 5) for k in range(5)]


def axial_level_frames(items: list[tuple[int, Volume]], cfg: FramesConfig, selection: dict, coords=None):
    """(frames [N, S, S], positions [N], points [N, 5, 2]) with each level's frames around its chosen
    axial slice; `selection` maps "axial_<level>" to (series_id, slice index)."""
    n, s = cfg.n_frames, cfg.size
    frames = np.zeros((n, s, s), np.float32)
    points = np.full((n, N_CHANNELS, 2), np.nan, np.float32)
    positions = np.zeros(n, np.float32)
    by_id = dict(items)
    start = 0
    for k, (lv, count) in enumerate(zip(schema.LEVELS, level_counts(n))):
        sid, idx = selection.get(f"axial_{lv}", (None, -1))[:2]
        if sid not in by_id or count == 0:
            start += count
            continue
        v = by_id[sid]
        px = normalised(v)
        idxs = v.neighbours(idx, count)
        box = spine_box(px[idx], False, cfg.axial_box)
        frames[start:start + count] = crop_resize(px[idxs], box, s)
        positions[start:start + count] = (k + np.arange(count) / count) / 5
        points[start:start + count] = frame_points(coords, schema.AXIAL, sid, v, np.array(idxs), box, s)
        start += count
    return frames, positions, points


PLACES = {schema.SAG_T1: ("sag_t1_right", "sag_t1_left")}  # right first: the canonical order


def placed_sagittal_frames(items: list[tuple[int, Volume]], stype: str, cfg: FramesConfig, selection: dict,
                           coords=None):
    """(frames [N, S, S], positions [N], points [N, 5, 2]) around the selection's slices of a sagittal
    type (PLACES), ordered along the normal as even frames are (so the mirror reverses them alike);
    None when the type has no places or the selection lacks one."""
    if stype not in PLACES:
        return None
    by_id = dict(items)
    picks = [selection.get(name, (None, -1))[:2] for name in PLACES[stype]]
    if any(sid not in by_id for sid, _ in picks):
        return None
    n, s = cfg.n_frames, cfg.size
    counts = [n // len(picks) + (k < n % len(picks)) for k in range(len(picks))]
    series: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # both sides mostly read one series
    frames, positions, points = [], [], []
    for (sid, idx), count in zip(picks, counts):
        v = by_id[sid]
        if sid not in series:
            px = normalised(v)
            series[sid] = px, spine_box(px[len(px) // 2], True, cfg.sag_box)  # as even frames: the middle slice
        px, box = series[sid]
        idxs = np.array(v.neighbours(int(idx), count))
        frames.append(crop_resize(px[idxs], box, s))
        positions.append((v.depth[idxs] - v.depth.min()) / (np.ptp(v.depth) or 1.0))
        points.append(frame_points(coords, stype, sid, v, idxs, box, s))
    positions = np.concatenate(positions).astype(np.float32)
    order = np.argsort(positions, kind="stable")
    return np.concatenate(frames)[order], positions[order], np.concatenate(points)[order]


def snapped_indices(idx: np.ndarray, targets: list[int]) -> np.ndarray:
    """Even indices with the one nearest each target moved onto it (sorted): the spread kept, the
    selected slices in it."""
    idx = np.array(idx)
    for target in targets:
        idx[int(np.argmin(np.abs(idx - target)))] = target
    return np.sort(idx)


def even_indices(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over 0..n-1 (repeats when n < k)."""
    return np.round(np.linspace(0, n - 1, k)).astype(int) if n > 0 else np.zeros(0, int)


def spine_box(img: np.ndarray, sagittal: bool, side_frac: float) -> np.ndarray:
    """A square box around the spine: on sagittal slices the vertebral column (horizontal edges pile up
    there); on axial slices the centre of edge energy in the central part of the image."""
    h, w = img.shape
    side = side_frac * max(h, w)
    if sagittal:
        col, prom = find_spine_column(img)
        cx = col * w + 0.08 * w if prom >= 1.5 else w / 2  # the canal lies just behind the bodies
        cy = h / 2
    else:
        energy = np.hypot(*edges(img))
        y0, x0 = int(0.2 * h), int(0.2 * w)
        y1, x1 = h - y0, w - x0  # symmetric: the mirrored image's box is the mirrored box
        e = energy[y0:y1, x0:x1]
        total = e.sum()
        if total <= 0:
            cx, cy = w / 2, h / 2
        else:  # the energy's centroid (pixel centres at integers) in box coordinates (pixel i spans i..i+1)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            cx, cy = float((e * xx).sum() / total) + 0.5, float((e * yy).sum() / total) + 0.5
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def build_frames(vols: dict[str, list[tuple[int, Volume]]], cfg: FramesConfig, coords=None,
                 selection: dict | None = None) -> dict[str, np.ndarray]:
    """frames [3, N, S, S] float16 (series types in schema order), mask [3], positions [3, N] in [0, 1],
    points [3, N, 5, 2] (labelled points on the frames in frame pixels, NaN unknown; from `coords`, the
    study's train_label_coordinates rows, when given). `selection` (crop name -> (series, slice), the
    stage-one selection) places the axial frames (and the T1 ones, `sagittal="placed"` or "snapped");
    without it the naive rule does."""
    if cfg.axial not in ("levels", "even"):
        raise ValueError(f"axial frames must be 'levels' or 'even', not {cfg.axial!r}")
    if cfg.sagittal not in ("even", "placed", "snapped"):
        raise ValueError(f"sagittal frames must be 'even', 'placed' or 'snapped', not {cfg.sagittal!r}")
    if cfg.axial == "levels" and cfg.n_frames < 5:
        raise ValueError(f"axial frames per level need n_frames >= 5 (one per level), not {cfg.n_frames}")
    n, s = cfg.n_frames, cfg.size
    frames = np.zeros((len(schema.SERIES_TYPES), n, s, s), np.float16)
    points = np.full((len(schema.SERIES_TYPES), n, N_CHANNELS, 2), np.nan, np.float32)
    mask = np.zeros(len(schema.SERIES_TYPES), bool)
    positions = np.zeros((len(schema.SERIES_TYPES), n), np.float32)
    for t, stype in enumerate(schema.SERIES_TYPES):
        items = vols.get(stype)
        if not items:
            continue
        if selection is None and cfg.uses_selection():
            selection = naive_selection(vols)
        if stype == schema.AXIAL and cfg.axial == "levels":
            f, positions[t], points[t] = axial_level_frames(items, cfg, selection, coords)
            frames[t], mask[t] = f.astype(np.float16), True
            continue
        if stype in PLACES and cfg.sagittal == "placed":
            placed = placed_sagittal_frames(items, stype, cfg, selection, coords)
            if placed is not None:  # else: even frames, as without the option
                frames[t], positions[t], points[t] = placed[0].astype(np.float16), placed[1], placed[2]
                mask[t] = True
                continue
        pixels, pos, ref = choose_series(items, cfg.pick)
        idx = even_indices(len(pixels), n)
        one = cfg.pick == "most_levels" or len(items) == 1  # the frames index one series' slices
        sid = next(i for i, v in items if v is ref) if one else None
        if cfg.sagittal == "snapped" and stype in PLACES and one:
            idx = snapped_indices(idx, [int(selection[k][1]) for k in PLACES[stype]
                                        if k in selection and selection[k][0] == sid])
        sagittal = stype != schema.AXIAL
        box = spine_box(pixels[len(pixels) // 2], sagittal, cfg.sag_box if sagittal else cfg.axial_box)
        frames[t] = crop_resize(pixels[idx], box, s).astype(np.float16)
        span = np.ptp(pos) or 1.0
        positions[t] = (pos[idx] - pos.min()) / span
        mask[t] = True
        if one:  # points need one series' slices
            points[t] = frame_points(coords, stype, sid, ref, idx, box, s)
    return {"frames": frames, "mask": mask, "positions": positions, "points": points}


def frames_key(cfg: FramesConfig, selection: dict | None = None) -> str:
    places = None
    if cfg.uses_selection() and selection is not None:
        names = tuple(k for k in selection if (cfg.axial == "levels" and k.startswith("axial_"))
                      or (cfg.sagittal != "even" and k.startswith("sag_t1")))
        places = sorted((k, [int(x) for x in selection[k][:2]]) for k in names)  # slices, not centres
    return f"frames{FRAMES_VERSION}_" + config_hash(asdict(cfg), places)


def study_frames(study: Study, cfg: FramesConfig, cache: StudyCache | None,
                 selection: dict | None = None) -> dict[str, np.ndarray]:
    """A study's frames through the per-study cache (decoded volumes shared with the multitask model)."""
    def build():
        return build_frames(study_volumes(study, cache), cfg, study.coords if study.has_coords else None, selection)
    return cache.get(study.study_id, frames_key(cfg, selection), build) if cache else build()
