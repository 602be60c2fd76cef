"""A study's series decoded once into the per-study cache; both models read volumes from here."""
from __future__ import annotations

import warnings

import numpy as np

from .cache import StudyCache
from .catalog import Study
from .dicom import DicomError, Volume, plane_of, plane_of_normal, read_series

# 2: a missing ImageOrientationPatient takes the plane of the series description
# 3: every block of a series kept, canonical orientation, per-slice and source geometry
# 4: tags some files lack taken from the series' other files; a series without PixelSpacing marked
# 5: a series without ImageOrientationPatient marked (its rows come from the study's other series)
# 6: a mixed-shape series resampled by data/resample.py (the same pixels under every OpenCV)
DECODE_VERSION = 6

# The field of view (mm) a series without any PixelSpacing is given when its study has no other series of
# its plane to take one from: lumbar sagittal ~300 mm, axial ~200 mm (REAL_DATA.md: 512-640 px at 0.4-0.7 mm).
# Without it the reader's stand-in, 1 mm, puts a 512-px series at twice its size in patient space.
TYPICAL_FOV_MM = {"sagittal": 300.0, "axial": 200.0}


def volume_to_arrays(v: Volume) -> dict[str, np.ndarray]:
    # Pixels quantised to 16 bits over their own range: exact for 16-bit DICOM, half the size of float32.
    lo, hi = float(v.pixels.min()), float(v.pixels.max())
    scale = (hi - lo) / 65535 if hi > lo else 1.0
    q = np.round((v.pixels - lo) / scale).astype(np.uint16)
    return {"q": q, "lo": np.float64(lo), "scale": np.float64(scale), "positions": v.positions, "normal": v.normal,
            "pixel_spacing": v.pixel_spacing, "instance_numbers": v.instance_numbers, "orientation": v.orientation,
            "thickness": np.float64(v.thickness), "orientations": v.orientations, "blocks": v.blocks,
            "source_geometry": v.source_geometry, "spacing_known": np.bool_(v.spacing_known),
            "orientation_known": np.bool_(v.orientation_known)}


def arrays_to_volume(a: dict[str, np.ndarray], source: str = "") -> Volume:
    pixels = (a["q"].astype(np.float32) * np.float32(a["scale"]) + np.float32(a["lo"])).astype(np.float32)
    return Volume(pixels, a["positions"], a["normal"], a["pixel_spacing"], a["instance_numbers"],
                  a["orientation"], float(a["thickness"]), source, a["orientations"], a["blocks"],
                  a["source_geometry"], bool(a.get("spacing_known", True)), bool(a.get("orientation_known", True)))


def field_of_view(v: Volume) -> float:
    """The larger side of a series' image in mm."""
    h, w = v.pixels.shape[1:]
    return float(max(h * v.pixel_spacing[0], w * v.pixel_spacing[1]))


def fill_spacing(vols: dict[str, list[tuple[int, Volume]]], study_id: int | str = "") -> dict:
    """A series none of whose files had PixelSpacing takes the field of view of the study's first series
    of its plane that had one (sagittal T1 and T2 share theirs), else TYPICAL_FOV_MM, spread over its own
    matrix: its geometry against the other series is then right to a few percent instead of 1 mm a pixel."""
    known = [(plane_of(t), i, u) for t, its in vols.items() for i, u in its if u.spacing_known]  # before any fill
    for stype, items in vols.items():
        plane = plane_of(stype)
        for k, (sid, v) in enumerate(items):
            if v.spacing_known:
                continue
            peers = [(i, u) for pl, i, u in known if pl == plane]
            fov, whence = ((field_of_view(peers[0][1]), f"series {peers[0][0]}'s field of view") if peers
                           else (TYPICAL_FOV_MM[plane], f"a typical {plane} field of view"))
            mm = fov / max(v.pixels.shape[1:])
            warnings.warn(f"study {study_id}: series {sid} has no PixelSpacing; {mm:.3f} mm from {whence} "
                          f"({fov:.0f} mm)", stacklevel=2)
            items[k] = (sid, v.with_spacing(mm))
    return vols


def fill_orientation(vols: dict[str, list[tuple[int, Volume]]], study_id: int | str = "") -> dict:
    """A series none of whose files had ImageOrientationPatient knows its slices' normals (from their
    positions) but not how its images turn within their plane: a sagittal one takes its rows from the
    study's sagittal series of the same normal (T1 and T2 are planned alike), an axial one from an axial
    series that has them, else from the patient's left-right axis, which is a sagittal series' normal."""
    known = [(plane_of(t), i, u) for t, its in vols.items() for i, u in its if u.orientation_known]
    for stype, items in vols.items():
        for k, (sid, v) in enumerate(items):
            if v.orientation_known or not len(v):
                continue
            plane = plane_of_normal(v.normal)
            same = [(abs(float(u.normal @ v.normal)), i, u) for pl, i, u in known if pl == plane]
            closest = max(same, key=lambda t: t[0], default=None)
            row = whence = None
            if closest and closest[0] > np.cos(np.radians(5)):
                row, whence = closest[2].orientation[:3], f"series {closest[1]}'s rows"
            elif plane == "axial":
                sag = [(i, u) for pl, i, u in known if pl == "sagittal"]
                if sag:  # sagittal slices are ordered right to left: their normal is the patient's left
                    row, whence = sag[0][1].normal, f"series {sag[0][0]}'s normal (the patient's left)"
            if row is None:
                continue
            warnings.warn(f"study {study_id}: series {sid} has no ImageOrientationPatient; its rows from {whence}",
                          stacklevel=2)
            items[k] = (sid, v.with_rows(row))
    return vols


def _decoded(study: Study, rec, stype: str, cache: StudyCache | None) -> dict[str, np.ndarray]:
    def build():
        return volume_to_arrays(read_series(rec.path, plane_of(stype)))
    return cache.get(study.study_id, f"vol_{rec.series_id}", build) if cache else build()


def series_arrays(study: Study, series_id: int, cache: StudyCache | None = None) -> dict[str, np.ndarray] | None:
    """One series' cache arrays (volume_to_arrays), decoded through the cache; None if the study has no
    such series or it cannot be read."""
    for stype, records in study.series.items():
        for rec in records:
            if rec.series_id == series_id:
                try:
                    return _decoded(study, rec, stype, cache)
                except DicomError:
                    return None
    return None


def study_volumes(study: Study, cache: StudyCache | None = None) -> dict[str, list[tuple[int, Volume]]]:
    """Series type -> [(series_id, Volume)], decoded through the cache. A series that cannot be read
    is left out with a warning naming it; the study goes on with what remains."""
    out: dict[str, list[tuple[int, Volume]]] = {}
    for stype, records in study.series.items():
        for rec in records:
            try:
                arrays = _decoded(study, rec, stype, cache)
            except DicomError as e:
                warnings.warn(f"study {study.study_id}: {e}; series skipped", stacklevel=2)
                continue
            out.setdefault(stype, []).append((rec.series_id, arrays_to_volume(arrays, str(rec.path))))
    return fill_orientation(fill_spacing(out, study.study_id), study.study_id)


def series_pixels(study: Study, series_id: int, cache: StudyCache | None) -> np.ndarray | None:
    """One series' normalised pixels [n, h, w], decoded through the cache (None if it cannot be read)."""
    a = series_arrays(study, series_id, cache)
    return None if a is None else normalised(arrays_to_volume(a))


def pixels_reader(study: Study, cache: StudyCache | None):
    """series id -> its normalised pixels, each series decoded once."""
    memo: dict[int, np.ndarray | None] = {}

    def pixels_of(sid: int):
        if sid not in memo:
            memo[sid] = series_pixels(study, sid, cache)
        return memo[sid]
    return pixels_of


def normalise(pixels: np.ndarray) -> np.ndarray:
    """Robust per-volume scaling to ~[0, 1] (1st/99.5th percentiles): scanners differ in range. The
    percentiles come from a strided grid of ~256k pixels: at 512² a full sort took most of the input
    preparation, for the same numbers to a fraction of a percent."""
    step = max(1, int(np.sqrt(pixels.size / 2 ** 18)))
    # float32 scalars: numpy 2 computes float32 pixels with a float64 scalar in float64 (NEP 50), numpy 1 in
    # float32; the last bit then moves HOG orientation bins and the kernel differs between Kaggle images.
    lo, hi = np.percentile(pixels[..., ::step, ::step], [1, 99.5]).astype(np.float32)
    scale = np.float32(max(float(hi - lo), 1e-6))
    return np.clip((pixels.astype(np.float32, copy=False) - lo) / scale, 0, 1.5).astype(np.float32, copy=False)


def normalised(v: Volume) -> np.ndarray:
    """normalise(v.pixels), computed once per Volume object (features, crops and frames all read it)."""
    cached = v.__dict__.get("_normalised")
    if cached is None:
        cached = v.__dict__["_normalised"] = normalise(v.pixels)
    return cached


# A study's geometry alone (positions, spacing, orientation, shape of every series, after the fills above):
# the slice selector's training reads nothing else once the slice features are cached, and decoding every
# study again only for it cost ~500 s an attempt at 1,975 half-size studies (issue 42). One small entry.
GEOMETRY_ENTRY = "geometry"
_GEOMETRY_FIELDS = ("positions", "normal", "pixel_spacing", "instance_numbers", "orientation", "orientations",
                    "blocks", "source_geometry")


def geometry_to_arrays(vols: dict[str, list[tuple[int, Volume]]]) -> dict[str, np.ndarray]:
    """A study's decoded volumes' geometry as one cache entry (no pixels; their shape kept)."""
    out: dict[str, np.ndarray] = {}
    keys = []
    for stype, items in vols.items():
        for sid, v in items:
            keys.append((stype, sid))
            p = f"{sid}."
            out.update({p + f: np.asarray(getattr(v, f)) for f in _GEOMETRY_FIELDS})
            out[p + "shape"] = np.asarray(v.pixels.shape, np.int64)
            out[p + "thickness"] = np.float64(v.thickness)
            out[p + "known"] = np.array([v.spacing_known, v.orientation_known])
    out["series_type"] = np.array([k[0] for k in keys], dtype=str)
    out["series_id"] = np.array([k[1] for k in keys], np.int64)
    return out


def arrays_to_geometry(a: dict[str, np.ndarray], study: Study) -> dict[str, list[tuple[int, Volume]]]:
    """geometry_to_arrays read back: every series a pixel-less Volume (Volume.geometry_only's zero broadcast)."""
    paths = {rec.series_id: str(rec.path) for records in study.series.values() for rec in records}
    out: dict[str, list[tuple[int, Volume]]] = {}
    for stype, sid in zip(a["series_type"].tolist(), a["series_id"].tolist()):
        p = f"{sid}."
        empty = np.broadcast_to(np.zeros((), np.float32), tuple(int(s) for s in a[p + "shape"]))
        known = a[p + "known"]
        v = Volume(empty, *(a[p + f] for f in _GEOMETRY_FIELDS[:5]), float(a[p + "thickness"]), paths.get(sid, ""),
                   *(a[p + f] for f in _GEOMETRY_FIELDS[5:]), bool(known[0]), bool(known[1]))
        out.setdefault(str(stype), []).append((int(sid), v))
    return out


def cached_geometry(study: Study, cache: StudyCache | None) -> dict[str, list[tuple[int, Volume]]] | None:
    """The study's pixel-less volumes from its cache entry, or None where there is none (decode then)."""
    a = cache.load(study.study_id, GEOMETRY_ENTRY) if cache is not None else None
    return None if a is None else arrays_to_geometry(a, study)


def keep_geometry(study: Study, cache: StudyCache | None, vols: dict[str, list[tuple[int, Volume]]]) -> None:
    """Write the study's geometry entry from its decoded volumes, once."""
    if cache is not None and cache.root is not None and not cache.path(study.study_id, GEOMETRY_ENTRY).exists():
        cache.save(study.study_id, GEOMETRY_ENTRY, geometry_to_arrays(vols))
