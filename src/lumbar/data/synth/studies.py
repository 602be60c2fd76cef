"""One study's series on disk, in either profile: the default (one orientation per series, all tags) and
the real one (its matrix sizes, slice counts, axial blocks and stacks, a lordotic phantom, irregularities),
and its labelled coordinates."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import schema
from .dicom import SeriesWriter, unique_ids
from .phantom import Phantom, SIGNAL, SliceGeom, _rotation, _stack, render
from .spec import StudySpec


def _axial_groups(n_axial: int) -> list[list[int]]:
    """Which levels each axial series covers: one covers all; several split the spine."""
    return [list(a) for a in np.array_split(np.arange(5), n_axial)] if n_axial > 1 else [list(range(5))]


def make_study(root: Path, study_id: int, narrowing: np.ndarray, spec: StudySpec, seed: int,
               sag_size: int = 192, axial_size: int = 128) -> tuple[list[dict], list[dict]]:
    """Render and write one study's series under root/<study_id>/; returns (series rows, coordinate rows)."""
    rng = np.random.default_rng(seed)
    ph = Phantom(narrowing, rng)
    rot = _rotation(rng, 4.0)
    ex, ey, ez = rot @ np.array([1.0, 0, 0]), rot @ np.array([0, 1.0, 0]), rot @ np.array([0, 0, 1.0])
    series_rows, coord_rows = [], []
    sid_iter = iter(int(v) for v in unique_ids(rng, 16, 10 ** 7, 4 * 10 ** 9))

    plan = []  # (description, seq, geometries, levels covered)
    sag_center = ph.center() + np.array([0.0, rng.uniform(-15, 15), rng.uniform(-15, 15)])
    sag_fov = rng.uniform(250, 300) * ph.s
    for description, seq, count in ((schema.SAG_T1, 0, spec.n_t1), (schema.SAG_T2, 1, spec.n_t2)):
        for _ in range(count):
            n = int(rng.integers(13, 18))
            step = rng.uniform(3.6, 4.4) * ph.s
            plan.append((description, seq, n, step, sag_center + ex * rng.uniform(-2, 2), ey, -ez, ex,
                         sag_size, sag_fov, None))
    for levels in _axial_groups(spec.n_axial)[:spec.n_axial] if spec.n_axial else []:
        z_hi = ph.z_disc[levels[0]] + 14 * ph.s
        z_lo = ph.z_disc[levels[-1]] - 14 * ph.s
        step = rng.uniform(4.0, 5.0)
        n = int(np.floor((z_hi - z_lo) / step)) + 1
        center = np.array([rng.uniform(-5, 5), ph.y_canal((z_hi + z_lo) / 2) - 20 * ph.s + rng.uniform(-8, 8),
                           (z_hi + z_lo) / 2])
        plan.append((schema.AXIAL, 1, n, step, center, ex, ey, ez, axial_size, rng.uniform(150, 190) * ph.s, levels))

    first_of = {}
    for idx, (description, seq, n, step, center, row_dir, col_dir, step_dir, size, fov, levels) in enumerate(plan):
        series_id = next(sid_iter)
        mixed = spec.mixed.get(idx, False)
        geoms = _stack(center, row_dir, col_dir, step_dir, n, step, size, fov, mixed_rng=rng if mixed else None)
        instances = np.arange(1, n + 1)
        if spec.gaps.get(idx, False):
            cut = int(rng.integers(1, n))
            instances[cut:] += int(rng.integers(2, 6))
            instances += int(rng.integers(0, 3))
        if spec.reversed.get(idx, False):
            instances = instances[::-1].copy()
        slope, intercept = (1.0, 0.0)
        if spec.rescale.get(idx, False):
            slope, intercept = float(rng.choice([0.5, 1.0, 2.0])), float(rng.choice([-100.0, 0.0, 50.0]))
        look = {"jitter": 1 + rng.normal(0, 0.05, SIGNAL.shape), "blur": rng.uniform(0.4, 0.8),
                "bias": rng.uniform(-0.25, 0.25, 2), "noise": rng.uniform(0.02, 0.05), "rng": rng}
        scale = rng.uniform(400, 3000)
        writer = SeriesWriter(study_id, series_id, description, step * 0.9, slope, intercept)
        _write_series(root / str(study_id) / str(series_id), writer, ph, geoms, instances, seq, look, scale)
        series_rows.append({"study_id": study_id, "series_id": series_id, "series_description": description})
        if description == schema.AXIAL:
            for k in levels:
                first_of.setdefault((description, k), (series_id, geoms, instances))
        else:
            first_of.setdefault(description, (series_id, geoms, instances))

    if spec.coordinates:
        coord_rows = _coordinates(ph, first_of, study_id)
    return series_rows, coord_rows


# The real profile's matrix sizes (px) and fields of view (mm) per series type: spacing = FOV / size
# lands on the real ranges (sagittal ~0.45-0.9 mm, mean ~0.65; axial ~0.3-0.6 mm, median ~0.43).
REAL_SIZES = {"sag": ([384, 512, 608, 640], [0.3, 0.45, 0.1, 0.15]), "axial": ([384, 512, 608, 640], [0.25, 0.55, 0.05, 0.15])}
REAL_FOV = {"sag": (280.0, 340.0), "axial": (170.0, 230.0)}
AXIAL_KINDS = (("blocks", 0.5), ("stack", 0.4), ("thin", 0.1))


def _real_size(rng: np.random.Generator, kind: str, scale: float) -> int:
    sizes, p = REAL_SIZES[kind]
    return max(32, int(round(int(rng.choice(sizes, p=p)) * scale)))


def _second_size(rng: np.random.Generator, kind: str, size: int, scale: float) -> int:
    """The other matrix size of a series that mixes two (never its own)."""
    other = _real_size(rng, kind, scale)
    return other if other != size else size + max(8, size // 16)


def _real_slices(rng: np.random.Generator, description: str) -> int:
    """Sagittal slice counts from the real histograms: T1 10-38 (mostly 13-21), T2/STIR 8-29 (mostly 14-19)."""
    if description == schema.SAG_T1:
        return int(rng.integers(22, 39)) if rng.random() < 0.04 else int(np.clip(round(rng.normal(17, 2.2)), 10, 38))
    return int(rng.integers(20, 30)) if rng.random() < 0.03 else int(np.clip(round(rng.normal(16.5, 1.5)), 8, 29))


def _plane_stack(center, row_dir, col_dir, step_dir, n, step, size, fov, other_size=None) -> list[SliceGeom]:
    """n parallel slices; with other_size, the last few at that matrix size (one series, two sizes)."""
    out = []
    tail = int(min(n - 1, max(2, n // 4))) if other_size else 0
    for k in range(n):
        rows = cols = other_size if k >= n - tail else size
        sp = fov / cols
        c = center + (k - (n - 1) / 2) * step * step_dir
        out.append(SliceGeom(c - (cols / 2) * sp * row_dir - (rows / 2) * sp * col_dir, row_dir, col_dir, sp, rows, cols))
    return out


def _real_plan(ph: Phantom, rng: np.random.Generator, spec: StudySpec, rot: np.ndarray, scale: float):
    """(description, seq, geometries, levels covered, slice step) of every series of a real-profile study."""
    ex, ey, ez = rot @ np.array([1.0, 0, 0]), rot @ np.array([0, 1.0, 0]), rot @ np.array([0, 0, 1.0])
    plan = []
    sag_center = ph.center() + np.array([0.0, rng.uniform(-15, 15), rng.uniform(-15, 15)])
    if spec.thoracic:
        sag_center[2] += rng.uniform(30, 70)
    sag_fov = rng.uniform(*REAL_FOV["sag"])
    index = 0
    for description, seq, count in ((schema.SAG_T1, 0, spec.n_t1), (schema.SAG_T2, 1, spec.n_t2)):
        for _ in range(count):
            n, step, size = _real_slices(rng, description), rng.uniform(4.0, 5.0), _real_size(rng, "sag", scale)
            row = -ey if spec.flip.get(index) else ey
            other = _second_size(rng, "sag", size, scale) if spec.mixed.get(index) else None
            geoms = _plane_stack(sag_center + ex * rng.uniform(-2, 2), row, -ez, ex, n, step, size, sag_fov, other)
            plan.append((description, seq, geoms, None, step))
            index += 1
    for a, levels in enumerate(_axial_groups(spec.n_axial)[:spec.n_axial] if spec.n_axial else []):
        kind = spec.axial_kinds.get(a, "blocks")
        size, fov = _real_size(rng, "axial", scale), rng.uniform(*REAL_FOV["axial"])
        flip = spec.flip.get(index)
        geoms: list[SliceGeom] = []
        if kind == "blocks":  # one block of 3-6 slices parallel to each disc it covers
            step = rng.uniform(3.5, 4.5)
            for k in levels:
                normal, ap = ph.disc_axes(k)
                zd = ph.z_disc[k]
                yc, zc = ph._global(k, ph.y_canal(zd) - 20 * ph.s, zd)
                centre = np.array([rng.uniform(-3, 3), yc, zc]) + rot @ normal * rng.uniform(-1, 1)
                n_k = int(rng.integers(3, 7))
                row = -ex if flip else ex
                geoms += _plane_stack(centre, row, rot @ ap, rot @ normal, n_k, step, size, fov)
        else:  # one continuous stack angled to the mean of the discs it covers
            theta = float(np.mean(ph.theta[levels]))
            normal = rot @ np.array([0.0, -np.sin(theta), np.cos(theta)])
            ap = rot @ np.array([0.0, np.cos(theta), np.sin(theta)])
            z_hi, z_lo = ph.z_disc[levels[0]] + 14 * ph.s, ph.z_disc[levels[-1]] - 14 * ph.s
            step = rng.uniform(3.8, 5.0) if kind == "stack" else rng.uniform(0.9, 2.5)
            n = int(min(192, np.floor((z_hi - z_lo) / step) + 1))
            centre = np.array([rng.uniform(-5, 5), ph.y_canal((z_hi + z_lo) / 2) - 20 * ph.s, (z_hi + z_lo) / 2])
            row = -ex if flip else ex
            other = _second_size(rng, "axial", size, scale) if spec.mixed.get(index) else None
            geoms = _plane_stack(centre, row, ap, normal, n, step, size, fov, other)
        plan.append((schema.AXIAL, 1, geoms, levels, step))
        index += 1
    return plan


def make_real_study(root: Path, study_id: int, narrowing: np.ndarray, spec: StudySpec, seed: int,
                    size_scale: float = 1.0) -> tuple[list[dict], list[dict]]:
    """The real profile's study: lordotic phantom, real matrix sizes and slice counts, axial blocks or
    long stacks, and the per-series irregularities of `spec`. Returns (series rows, coordinate rows)."""
    rng = np.random.default_rng(seed)
    ph = Phantom(narrowing, rng, tilt=True)
    rot = _rotation(rng, 4.0)
    sid_iter = iter(int(v) for v in unique_ids(rng, 16, 10 ** 7, 4 * 10 ** 9))
    series_rows, first_of = [], {}
    for idx, (description, seq, geoms, levels, step) in enumerate(_real_plan(ph, rng, spec, rot, size_scale)):
        series_id = next(sid_iter)
        n = len(geoms)
        instances = np.arange(1, n + 1)
        if spec.gaps.get(idx, False):
            cut = int(rng.integers(1, n))
            instances[cut:] += int(rng.integers(2, 6))
        if spec.reversed.get(idx, False):
            instances = instances[::-1].copy()
        slope, intercept = (1.0, 0.0)
        if spec.rescale.get(idx, False):
            slope, intercept = 1.0, float(rng.choice([-1024.0, -100.0, 50.0]))
        look = {"jitter": 1 + rng.normal(0, 0.05, SIGNAL.shape), "blur": rng.uniform(0.6, 1.4),
                "bias": rng.uniform(-0.3, 0.3, 2), "noise": rng.uniform(0.02, 0.05), "rng": rng}
        mono1 = bool(spec.mono1.get(idx, False))
        scale = rng.uniform(400, 1400) if mono1 else rng.uniform(400, 3000)
        writer = SeriesWriter(study_id, series_id, description, step * 0.9, slope, intercept, mono1=mono1,
                              drop=spec.drop.get(idx, ()), spacing_between=step)
        _write_series(root / str(study_id) / str(series_id), writer, ph, geoms, instances, seq, look, scale, mono1)
        series_rows.append({"study_id": study_id, "series_id": series_id, "series_description": description})
        for k in levels or []:
            first_of.setdefault((description, k), (series_id, geoms, instances))
        if levels is None:
            first_of.setdefault(description, (series_id, geoms, instances))
    if spec.empty_series:
        series_id = next(sid_iter)
        (root / str(study_id) / str(series_id)).mkdir(parents=True, exist_ok=True)
        series_rows.append({"study_id": study_id, "series_id": series_id, "series_description": schema.AXIAL})
    if spec.mismatch:  # the CSV has the two sagittal descriptions swapped; the files' tags are right
        swap = {schema.SAG_T1: schema.SAG_T2, schema.SAG_T2: schema.SAG_T1}
        for r in series_rows:
            r["series_description"] = swap.get(r["series_description"], r["series_description"])
    coords = _coordinates(ph, first_of, study_id, rng, noise_px=1.5, neighbour_rate=0.05) if spec.coordinates else []
    return series_rows, coords


def _write_series(folder: Path, writer: SeriesWriter, ph: Phantom, geoms: list[SliceGeom], instances, seq: int,
                  look: dict, scale: float, mono1: bool = False) -> None:
    """Render and write every slice; stored values undo the writer's rescale (and MONOCHROME1 inverts)."""
    slope, intercept = float(writer.ds.get("RescaleSlope", 1.0)), float(writer.ds.get("RescaleIntercept", 0.0))
    for g, inst in zip(geoms, instances):
        value = render(ph, g, seq, look) * scale
        stored = np.round((value - intercept) / slope)
        stored = np.clip(4095 - stored, 0, 4095) if mono1 else np.clip(stored, 0, 65535)
        writer.write(folder / f"{inst}.dcm", stored.astype(np.uint16), g, int(inst))


def _coordinates(ph: Phantom, first_of: dict, study_id: int, rng: np.random.Generator | None = None,
                 noise_px: float = 0.0, neighbour_rate: float = 0.0) -> list[dict]:
    """train_label_coordinates.csv rows: each landmark projected onto the nearest slice of the first
    series that shows it; with rng, annotator noise (pixels) and now and then the neighbouring slice."""
    rows = []
    for condition in schema.CONDITIONS:
        stype = schema.CONDITION_SERIES[condition]
        for k, level_name in enumerate(schema.LEVEL_NAMES):
            key = (stype, k) if stype == schema.AXIAL else stype
            if key not in first_of:
                continue
            series_id, geoms, instances = first_of[key]
            p = ph.landmark(condition, k)
            proj = [g.project(p) for g in geoms]
            j = int(np.argmin([abs(d) for d, _, _ in proj]))
            x, y = proj[j][1], proj[j][2]
            if rng is not None:
                if rng.random() < neighbour_rate:
                    near = [i for i in (j - 1, j + 1) if 0 <= i < len(geoms)
                            and np.allclose(geoms[i].row_dir, geoms[j].row_dir)]  # same block
                    if near:
                        j = int(rng.choice(near))
                        _, x, y = geoms[j].project(p)
                x, y = x + rng.normal(0, noise_px), y + rng.normal(0, noise_px)
                x = float(np.clip(x, 0, geoms[j].cols - 1))
                y = float(np.clip(y, 0, geoms[j].rows - 1))
            rows.append({"study_id": study_id, "series_id": series_id, "instance_number": int(instances[j]),
                         "condition": schema.condition_name(condition), "level": level_name,
                         "x": round(x, 3), "y": round(y, 3)})
    return rows
