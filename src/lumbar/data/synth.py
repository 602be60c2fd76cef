"""A synthetic competition folder: the real layout and formats, a phantom lumbar spine, exact oracle.

Patient coordinates are DICOM's LPS: +x is the patient's left, +y posterior, +z superior. The phantom
is analytic: every pixel of every slice is mapped to its 3D position and labelled with the tissue
there, so any slice geometry (rotation, spacing, shape) renders exactly. Each (condition, level) has a
latent severity (labelmodel.py); its structure narrows with it, only at its level and on its side:
- spinal canal stenosis: the disc bulges and the ligamentum flavum thickens into the central canal;
- neural foraminal narrowing: the fat-filled foramen (bright on T1) in the pedicle column shrinks;
- subarticular stenosis: the facet grows into the lateral recess of the canal.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from .. import schema
from ..files import write_json
from ..progress import bar
from .labelmodel import DEFAULT_RATER_NOISE, LabelModel, real_stats

# Tissues and their (T1, T2) signal, in [0, 1] before scanner scaling.
AIR, SOFT, MARROW, DISC, CSF, BONE, FAT, NERVE, LIGAMENT, FACET = range(10)
SIGNAL = np.array([
    [0.00, 0.00], [0.35, 0.25], [0.60, 0.40], [0.30, 0.85], [0.10, 1.00],
    [0.45, 0.30], [0.95, 0.60], [0.22, 0.35], [0.12, 0.10], [0.50, 0.32],
])
SYNTH_VERSION = 1


@dataclass
class SynthConfig:
    out: str = "data/synthetic"  # the competition folder to write
    studies: int = 200  # training studies (labels, coordinates)
    test_studies: int = 20  # test studies (no labels; sample_submission.csv lists them)
    seed: int = 0  # everything drawn from it: the same seed writes the same folder
    sag_size: int = 192  # default profile: sagittal matrix side, px
    axial_size: int = 128  # default profile: axial matrix side, px
    rater_noise: float = DEFAULT_RATER_NOISE  # spread of the raters around the latent severity
    coord_fraction: float = 0.7  # share of training studies with labelled coordinates
    # Real rates of the irregularities (shared/rsna2024_label_stats.json and typical DICOM exports).
    reversed_rate: float = 0.3  # series whose instance numbers run against their position
    gap_rate: float = 0.05  # series with gaps in their instance numbers
    mixed_shape_rate: float = 0.01  # series mixing two matrix sizes
    rescale_rate: float = 0.2  # series with a RescaleSlope/Intercept
    # With >= 8 studies, give each irregularity to at least one study so every folder exercises them.
    ensure_irregularities: bool = True
    workers: int = 2  # processes writing studies
    # "default": the kind geometry above (one orientation per series, ~1.4 mm pixels). "real": the real
    # data's geometry (REAL_DATA.md): 384-640 px matrices at 0.35-0.9 mm, lordotic discs, axial series of
    # angled blocks or long thin stacks, flipped rows, MONOCHROME1, missing tags in the test split.
    profile: str = "default"
    size_scale: float = 1.0  # real profile: matrix sizes times this (tests use 0.25; the FOV is kept)


@dataclass
class StudySpec:
    """Which series a study has and which irregularities each one shows."""
    n_t1: int = 1
    n_t2: int = 1
    n_axial: int = 1
    reversed: dict = field(default_factory=dict)  # series index -> bool
    gaps: dict = field(default_factory=dict)
    mixed: dict = field(default_factory=dict)
    rescale: dict = field(default_factory=dict)
    coordinates: bool = True
    # real profile only
    axial_kinds: dict = field(default_factory=dict)  # axial series index -> "blocks" | "stack" | "thin"
    flip: dict = field(default_factory=dict)  # series index -> row direction reversed
    mono1: dict = field(default_factory=dict)  # series index -> MONOCHROME1
    drop: dict = field(default_factory=dict)  # series index -> DICOM keywords left out (test split)
    thoracic: bool = False  # the sagittal field of view reaches up into the lower thoracic spine
    empty_series: bool = False  # an extra axial series folder with no files (test split)
    mismatch: bool = False  # the CSV swaps the two sagittal descriptions (test split)


class Phantom:
    """One study's anatomy: sizes, positions and narrowing of every structure."""

    def __init__(self, narrowing: np.ndarray, rng: np.random.Generator, tilt: bool = False):
        s = self.s = rng.uniform(0.9, 1.1)
        self.f = narrowing  # [25] in schema.LABEL_COLUMNS order
        self.H, self.D = 26 * s, 9 * s
        pitch = self.H + self.D
        self.z_disc = np.array([2 * pitch - k * pitch for k in range(5)]) + rng.uniform(-5, 5)
        self.z_vert = np.concatenate([self.z_disc + pitch / 2, [self.z_disc[-1] - pitch / 2]])
        self.z_mid = float(self.z_disc[2])
        self.y0 = rng.uniform(-8, 8)
        self.lordosis = rng.uniform(4, 14) * s
        self.cr_x, self.cr_y = 11 * s, 7 * s  # canal half-widths
        self.body_a, self.body_b = 22 * s, 17 * s
        # Lordosis tilts each disc about the left-right axis: L1/L2 a little forward, L5/S1 up to ~25
        # degrees from it (drawn only when tilted, so the default profile's random stream is unchanged).
        self.tilted = tilt
        self.theta = np.zeros(5)
        if tilt:
            base, spread = rng.uniform(-8, -2), rng.uniform(12, 25)
            self.theta = np.deg2rad(base + spread * np.arange(5) / 4)

    def disc_centre(self, k: int) -> tuple[float, float]:
        """(y, z) of disc k's centre: the point its tilt turns about."""
        return float(self.y_body(self.z_disc[k])), float(self.z_disc[k])

    def _local(self, k: int, y, z):
        """Global (y, z) -> level k's untilted frame (the anatomy of a level is drawn there)."""
        yb, zd = self.disc_centre(k)
        c, sn = np.cos(self.theta[k]), np.sin(self.theta[k])
        dy, dz = y - yb, z - zd
        return yb + c * dy + sn * dz, zd - sn * dy + c * dz

    def _global(self, k: int, y, z):
        """Level k's untilted frame -> global (y, z)."""
        yb, zd = self.disc_centre(k)
        c, sn = np.cos(self.theta[k]), np.sin(self.theta[k])
        u, v = y - yb, z - zd
        return yb + c * u - sn * v, zd + sn * u + c * v

    def disc_axes(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(normal, anterior-posterior direction) of disc k in phantom coordinates."""
        c, sn = np.cos(self.theta[k]), np.sin(self.theta[k])
        return np.array([0.0, -sn, c]), np.array([0.0, c, sn])

    def y_body(self, z):
        return self.y0 + self.lordosis * ((z - self.z_mid) / (2.2 * (self.H + self.D))) ** 2

    def y_canal(self, z):
        return self.y_body(z) + self.body_b + 2 * self.s + self.cr_y

    def f_of(self, condition: str, k: int) -> float:
        return float(self.f[schema.label_index(condition, schema.LEVELS[k])])

    def landmark(self, condition: str, k: int) -> np.ndarray:
        """The 3D point a radiologist would mark for (condition, level k)."""
        s, z = self.s, self.z_disc[k]
        yc = self.y_canal(z)
        side = 1.0 if condition.startswith("left") else -1.0
        if condition == "spinal_canal_stenosis":
            p = np.array([0.0, yc, z])
        elif "foraminal" in condition:
            p = np.array([side * 18 * s, yc - 3 * s, z + 4 * s])
        else:
            p = np.array([side * (self.cr_x - 1 * s), yc + 2 * s, z])
        if self.tilted:
            p[1], p[2] = self._global(k, p[1], p[2])
        return p

    def center(self) -> np.ndarray:
        return np.array([0.0, self.y_canal(self.z_mid) - 10 * self.s, self.z_mid])

    def tissue(self, p: np.ndarray) -> np.ndarray:
        """Tissue label of each point p [N, 3]. Later structures paint over earlier ones."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        s = self.s
        yb = self.y_body(z)
        yc = self.y_canal(z)
        t = np.zeros(len(p), dtype=np.uint8)
        t[(x / 140) ** 2 + ((y - yb - 25) / 105) ** 2 <= 1] = SOFT

        lumbar = (z < self.z_vert[0] + self.H / 2 + 4 * s) & (z > self.z_vert[-1] - self.H)
        # Posterior arch around the canal, spinous processes, pedicle/facet columns.
        t[((x / (self.cr_x + 7 * s)) ** 2 + ((y - yc) / (self.cr_y + 6 * s)) ** 2 <= 1) & lumbar] = BONE
        for zv in self.z_vert[:5]:
            spine = (np.abs(x) < 4 * s) & (y > yc) & (y < yc + self.cr_y + 28 * s) & (np.abs(z - zv - 3 * s) < 0.35 * self.H)
            t[spine] = BONE
        ax = np.abs(x)
        t[(ax > 12 * s) & (ax < 24 * s) & (y > yb + 12 * s) & (y < yc + self.cr_y + 4 * s) & lumbar] = BONE

        # Per-level structures only touch points near their disc: work on those points alone, in the
        # level's own (untilted) frame.
        bands = [np.flatnonzero(np.abs(z - zd) < 20 * s) for zd in self.z_disc]
        local = [self._local(k, y[idx], z[idx]) if self.tilted else (y[idx], z[idx]) for k, idx in enumerate(bands)]

        # Neural foramina: fat with the exiting root at the top; they shrink with the latent.
        for k, idx in enumerate(bands):
            if len(idx) == 0:
                continue
            zd = self.z_disc[k]
            xi, (yi, zi) = x[idx], local[k]
            for side, cond in ((1.0, "left_neural_foraminal_narrowing"), (-1.0, "right_neural_foraminal_narrowing")):
                f = self.f_of(cond, k)
                ry, rz = (6.5 - 4.0 * f) * s, (9.0 - 6.0 * f) * s
                cx, cy, cz = side * 18 * s, self.y_canal(zd) - 3 * s, zd + 4 * s
                fm = ((xi - cx) / (7 * s)) ** 2 + ((yi - cy) / ry) ** 2 + ((zi - cz) / rz) ** 2 <= 1
                t[idx[fm]] = FAT
                root = fm & (((yi - cy) / (1.8 * s)) ** 2 + ((zi - cz - 0.55 * rz) / (1.8 * s)) ** 2 <= 1)
                t[idx[root]] = NERVE

        # Central canal and lateral recesses (CSF).
        t[((x / self.cr_x) ** 2 + ((y - yc) / self.cr_y) ** 2 <= 1) & lumbar] = CSF
        for k, idx in enumerate(bands):
            zd = self.z_disc[k]
            yl, zl = local[k]
            ycl = self.y_canal(zl) if self.tilted else yc[idx]
            xi, yi, zi = x[idx], yl - ycl - 2 * s, zl - zd
            for side in (1.0, -1.0):
                rec = ((xi - side * 11 * s) / (5.5 * s)) ** 2 + (yi / (4 * s)) ** 2 + (zi / (8 * s)) ** 2 <= 1
                t[idx[rec]] = CSF

        # Vertebral bodies and discs.
        body = (x / self.body_a) ** 2 + ((y - yb) / self.body_b) ** 2 <= 1
        if not self.tilted:
            for zv in self.z_vert:
                t[body & (np.abs(z - zv) <= self.H / 2)] = MARROW
            for zd in self.z_disc:
                t[body & (np.abs(z - zd) < self.D / 2)] = DISC
        else:  # one column of bone marrow, then each disc in its own tilted slab
            t[body & (z <= self.z_vert[0] + self.H / 2) & (z >= self.z_vert[-1] - self.H / 2)] = MARROW
            for k, idx in enumerate(bands):
                yl, zl = local[k]
                yd, zd = self.disc_centre(k)
                disc = ((x[idx] / self.body_a) ** 2 + ((yl - yd) / self.body_b) ** 2 <= 1) & (np.abs(zl - zd) < self.D / 2)
                t[idx[disc]] = DISC

        for k, idx in enumerate(bands):
            if len(idx) == 0:
                continue
            zd = self.z_disc[k]
            xi, (yi, zi) = x[idx], local[k]
            zi = zi - zd
            yk = self.y_canal(zd)
            # Spinal canal stenosis: disc bulge from the front, ligamentum flavum from the back.
            f = self.f_of("spinal_canal_stenosis", k)
            bulge = ((xi / (9 * s)) ** 2 + ((yi - (yk - self.cr_y - 2 * s)) / ((2.5 + 9 * f) * s)) ** 2
                     + (zi / (self.D / 2 + 1.5 * s)) ** 2 <= 1)
            t[idx[bulge]] = DISC
            flavum = ((xi / (9 * s)) ** 2 + ((yi - (yk + self.cr_y)) / ((1.2 + 5.5 * f) * s)) ** 2
                      + ((zi - 2 * s) / (7 * s)) ** 2 <= 1)
            t[idx[flavum]] = LIGAMENT
            # Subarticular stenosis: the facet grows into the recess on its side.
            for side, cond in ((1.0, "left_subarticular_stenosis"), (-1.0, "right_subarticular_stenosis")):
                f = self.f_of(cond, k)
                r = (3 + 9 * f) * s
                facet = (((xi - side * (self.cr_x + 6 * s)) / r) ** 2 + ((yi - yk - 4 * s) / ((3 + 4 * f) * s)) ** 2
                         + (zi / (8 * s)) ** 2 <= 1)
                t[idx[facet]] = FACET
        return t


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class SliceGeom:
    ipp: np.ndarray  # ImagePositionPatient
    row_dir: np.ndarray  # IOP[:3]: direction of increasing column index
    col_dir: np.ndarray  # IOP[3:]: direction of increasing row index
    spacing: float  # square pixels, mm
    rows: int
    cols: int

    def points(self) -> np.ndarray:
        r, c = np.mgrid[0:self.rows, 0:self.cols].astype(np.float64)
        return (self.ipp[None, :] + (c.reshape(-1, 1) * self.row_dir + r.reshape(-1, 1) * self.col_dir) * self.spacing)

    def project(self, p: np.ndarray) -> tuple[float, float, float]:
        """(distance to the plane, column x, row y) of a 3D point."""
        d = p - self.ipp
        normal = np.cross(self.row_dir, self.col_dir)
        return float(d @ normal), float(d @ self.row_dir / self.spacing), float(d @ self.col_dir / self.spacing)


def _stack(center, row_dir, col_dir, step_dir, n, step, size, fov, mixed_rng=None) -> list[SliceGeom]:
    out = []
    for k in range(n):
        rows = cols = size
        if mixed_rng is not None and k >= n - 2:  # the last slices acquired at another matrix size
            rows = cols = size + 32
        sp = fov / cols
        c = center + (k - (n - 1) / 2) * step * step_dir
        ipp = c - (cols / 2) * sp * row_dir - (rows / 2) * sp * col_dir
        out.append(SliceGeom(ipp, row_dir, col_dir, sp, rows, cols))
    return out


def render(ph: Phantom, g: SliceGeom, seq: int, look: dict) -> np.ndarray:
    """One slice as float signal in [0, ~1.2]: tissue signal, blur, bias field, Rician noise."""
    t = ph.tissue(g.points()).reshape(g.rows, g.cols)
    img = (SIGNAL[:, seq] * look["jitter"][:, seq])[t]
    img = gaussian_filter(img, look["blur"])
    yy, xx = np.mgrid[0:g.rows, 0:g.cols] / max(g.rows, g.cols) - 0.5
    img = img * (1 + look["bias"][0] * xx + look["bias"][1] * yy)
    n1 = look["rng"].normal(0, look["noise"], img.shape)
    n2 = look["rng"].normal(0, look["noise"], img.shape)
    return np.sqrt((img + n1) ** 2 + n2 ** 2)


def _uid(*parts) -> str:
    return "1.2.826.0.1.3680043.8.498." + ".".join(str(int(p)) for p in parts)


class SeriesWriter:
    """Writes the slices of one MR series as DICOM Part 10 files (16-bit MONOCHROME2, explicit VR
    little endian). The series-level tags are built once; each slice sets only what differs."""

    def __init__(self, study_id: int, series_id: int, description: str, thickness: float,
                 slope: float = 1.0, intercept: float = 0.0, mono1: bool = False, drop: tuple = (),
                 spacing_between: float | None = None):
        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian

        self._pydicom3 = int(pydicom.__version__.split(".")[0]) >= 3
        self.study_id, self.series_id = study_id, series_id
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.Modality = "MR"
        ds.StudyInstanceUID = _uid(study_id)
        ds.SeriesInstanceUID = _uid(study_id, series_id)
        ds.PatientID = str(study_id)
        ds.StudyID = str(study_id)
        ds.SeriesNumber = int(series_id % 100000)
        ds.SeriesDescription = description
        ds.SliceThickness = round(float(thickness), 3)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12 if mono1 else 16  # MONOCHROME1 is inverted against 2**BitsStored - 1
        ds.HighBit = ds.BitsStored - 1
        if spacing_between is not None:
            ds.SpacingBetweenSlices = round(float(spacing_between), 3)
        ds.PixelRepresentation = 0
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleSlope = slope
            ds.RescaleIntercept = intercept
        if not self._pydicom3:
            ds.is_little_endian, ds.is_implicit_VR = True, False
        self.ds = ds
        self.drop = tuple(drop)  # keywords the hidden test's files lack now and then

    def write(self, path: Path, pixels: np.ndarray, g: SliceGeom, instance: int) -> None:
        import pydicom

        ds = self.ds
        uid = _uid(self.study_id, self.series_id, instance)
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPInstanceUID = uid
        ds.InstanceNumber = int(instance)
        ds.ImagePositionPatient = [round(float(v), 4) for v in g.ipp]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*g.row_dir, *g.col_dir)]
        ds.PixelSpacing = [round(g.spacing, 6), round(g.spacing, 6)]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
        for keyword in self.drop:
            if keyword in ds:
                delattr(ds, keyword)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._pydicom3:
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
        else:  # pydicom 2.x
            ds.save_as(path, write_like_original=False)


def write_dicom(path: Path, pixels: np.ndarray, g: SliceGeom, instance: int, study_id: int, series_id: int,
                description: str, thickness: float, slope: float = 1.0, intercept: float = 0.0) -> None:
    """One slice as its own series file (tests build small series with this)."""
    SeriesWriter(study_id, series_id, description, thickness, slope, intercept).write(path, pixels, g, instance)


def unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """n distinct random integers in [low, high), like the competition's study and series ids."""
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < n:
        v = int(rng.integers(low, high))
        if v not in seen:
            seen.add(v)
            out.append(v)
    return np.array(out, dtype=np.int64)


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


def _study_specs(cfg: SynthConfig, n: int, rng: np.random.Generator, test: bool = False) -> list[StudySpec]:
    comp = real_stats()["series_composition_counts"]
    keys = list(comp)
    p = np.array([comp[k] for k in keys], dtype=float)
    p /= p.sum()
    specs = []
    for i in range(n):
        t1, t2, ax = (int(part.split("x")[0]) for part in keys[rng.choice(len(keys), p=p)].split("+"))
        n_series = t1 + t2 + ax
        spec = StudySpec(n_t1=t1, n_t2=t2, n_axial=ax,
                         reversed={j: bool(rng.random() < cfg.reversed_rate) for j in range(n_series)},
                         gaps={j: bool(rng.random() < cfg.gap_rate) for j in range(n_series)},
                         mixed={j: bool(rng.random() < cfg.mixed_shape_rate) for j in range(n_series)},
                         rescale={j: bool(rng.random() < cfg.rescale_rate) for j in range(n_series)},
                         coordinates=bool(rng.random() < cfg.coord_fraction))
        specs.append(spec)
    if cfg.ensure_irregularities and n >= 8:
        # The first studies get one irregularity each (series index 0 = first sagittal T1 / T2).
        specs[0].n_axial = 2
        specs[1].n_t1 = 0
        specs[2].n_t2 = 0
        specs[3].reversed[0] = True
        specs[4].gaps[0] = True
        specs[5].mixed[0] = True
        specs[6].n_axial = 3
        specs[7].n_t1 = 2
        specs[3].coordinates = specs[4].coordinates = specs[5].coordinates = True
    if cfg.profile == "real":
        _real_irregularities(specs, rng, test, cfg.ensure_irregularities)
    return specs


# Rates of the real profile's irregularities (REAL_DATA.md; per series unless said).
REAL_RATES = {"flip": 0.04, "mono1": 0.03, "mixed": 0.03, "rescale": 0.18, "thoracic": 0.25,  # per study
              "drop_thickness": 0.5, "drop_spacing": 0.05, "drop_orientation": 0.05, "empty_series": 0.05, "mismatch": 0.03}


def _real_irregularities(specs: list[StudySpec], rng: np.random.Generator, test: bool, ensure: bool) -> None:
    r = REAL_RATES
    for spec in specs:
        n_series = spec.n_t1 + spec.n_t2 + spec.n_axial
        spec.axial_kinds = {a: str(rng.choice([k for k, _ in AXIAL_KINDS], p=[p for _, p in AXIAL_KINDS]))
                            for a in range(spec.n_axial)}
        spec.flip = {j: bool(rng.random() < r["flip"]) for j in range(n_series)}
        spec.mono1 = {j: bool(rng.random() < r["mono1"]) for j in range(n_series)}
        spec.mixed = {j: bool(rng.random() < r["mixed"]) for j in range(n_series)}
        spec.rescale = {j: bool(rng.random() < r["rescale"]) for j in range(n_series)}
        spec.thoracic = bool(rng.random() < r["thoracic"])
        if test:
            for j in range(n_series):
                drop = []
                if rng.random() < r["drop_thickness"]:
                    drop += ["SliceThickness", "SpacingBetweenSlices"]
                if rng.random() < r["drop_spacing"]:
                    drop.append("PixelSpacing")
                if rng.random() < r["drop_orientation"]:
                    drop.append("ImageOrientationPatient")
                spec.drop[j] = tuple(drop)
            spec.empty_series = bool(rng.random() < r["empty_series"])
            spec.mismatch = bool(rng.random() < r["mismatch"]) and spec.n_t1 > 0 and spec.n_t2 > 0
    if not ensure or len(specs) < 4:
        return
    # Every folder of 4+ studies shows each irregularity at least once.
    a = specs[0]
    a.n_axial, a.axial_kinds = 2, {0: "blocks", 1: "thin"}
    specs[1].axial_kinds = {0: "blocks"}
    specs[1].flip[0] = True
    specs[2].mono1[0] = specs[2].mixed[0] = True
    specs[3].thoracic = True
    if specs[3].n_axial:
        specs[3].axial_kinds[0] = "stack"
    if test:
        specs[0].drop[0] = ("SliceThickness", "SpacingBetweenSlices")
        specs[1].drop[1] = ("PixelSpacing",)
        specs[2].drop[0] = ("ImageOrientationPatient",)
        specs[3].empty_series = True
        if specs[3].n_t1 and specs[3].n_t2:
            specs[3].mismatch = True


def _job(args):
    root, study_id, narrowing, spec, seed, sag, ax, profile, scale = args
    if profile == "real":
        return make_real_study(Path(root), study_id, narrowing, spec, seed, scale)
    return make_study(Path(root), study_id, narrowing, spec, seed, sag, ax)


def generate(cfg: SynthConfig, progress: bool = True) -> Path:
    """Write the whole folder; returns its path. Deterministic for cfg.seed."""
    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = LabelModel.default(cfg.rater_noise)
    rng = np.random.default_rng(cfg.seed)
    n_total = cfg.studies + cfg.test_studies
    study_ids = unique_ids(rng, n_total, 10 ** 6, 4 * 10 ** 9)
    z = model.draw_latent(n_total, rng)
    labels = model.draw_labels(z, rng)
    if cfg.ensure_irregularities and cfg.studies >= 8 and not (labels[:cfg.studies] < 0).any():
        labels[9 % cfg.studies, schema.label_index("left_subarticular_stenosis", "l1_l2")] = -1
    oracle = model.oracle(z)
    narrowing = model.narrowing(z)
    train_ids, test_ids = study_ids[:cfg.studies], study_ids[cfg.studies:]
    if cfg.profile not in ("default", "real"):
        raise ValueError(f"unknown synthetic profile {cfg.profile!r}: 'default' or 'real'")
    specs = _study_specs(cfg, cfg.studies, rng) + _study_specs(cfg, cfg.test_studies, rng, test=True)
    for spec in specs[cfg.studies:]:
        spec.coordinates = False
    seeds = rng.integers(0, 2 ** 31, size=n_total)

    jobs = []
    for i, sid in enumerate(study_ids):
        part = "train_images" if i < cfg.studies else "test_images"
        jobs.append((str(out / part), int(sid), narrowing[i], specs[i], int(seeds[i]), cfg.sag_size, cfg.axial_size,
                     cfg.profile, cfg.size_scale))
    results = []
    pbar = bar(total=len(jobs), desc="synth studies", quiet=not progress)
    if cfg.workers > 1:
        with get_context("spawn" if _torch_loaded() else "fork").Pool(cfg.workers) as pool:
            for r in pool.imap(_job, jobs):
                results.append(r)
                pbar.update()
    else:
        for j in jobs:
            results.append(_job(j))
            pbar.update()
    pbar.close()

    series = [row for r in results for row in r[0]]
    coords = [row for r in results for row in r[1]]
    series_df = pd.DataFrame(series, columns=["study_id", "series_id", "series_description"])
    series_df[series_df.study_id.isin(train_ids)].to_csv(out / "train_series_descriptions.csv", index=False)
    series_df[series_df.study_id.isin(test_ids)].to_csv(out / "test_series_descriptions.csv", index=False)
    pd.DataFrame(coords, columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]).to_csv(
        out / "train_label_coordinates.csv", index=False)
    labels_frame(train_ids, labels[:cfg.studies]).to_csv(out / "train.csv", index=False)
    labels_frame(test_ids, labels[cfg.studies:]).to_csv(out / "test_labels.csv", index=False)
    sample = pd.DataFrame({"row_id": schema.row_ids(test_ids)})
    for c in schema.PROB_COLUMNS:
        sample[c] = 1 / 3
    sample.to_csv(out / "sample_submission.csv", index=False)
    from ..metric import probs_to_submission
    probs_to_submission(study_ids, oracle).to_csv(out / "oracle.csv", index=False, float_format="%.10g")
    meta = {"synth_version": SYNTH_VERSION, "config": asdict(cfg)}
    write_json(out / "synth_meta.json", meta)
    return out


def _torch_loaded() -> bool:
    import sys
    return "torch" in sys.modules  # forking after torch's thread pools start can deadlock


def labels_frame(study_ids, y: np.ndarray) -> pd.DataFrame:
    """Integer labels [n, 25] (-1 missing) -> train.csv-format frame."""
    frame = pd.DataFrame({"study_id": np.asarray(study_ids, dtype=np.int64)})
    names = np.array(schema.SEVERITIES, dtype=object)
    for j, col in enumerate(schema.LABEL_COLUMNS):
        v = names[np.clip(y[:, j], 0, 2)]
        v[y[:, j] < 0] = None
        frame[col] = v
    return frame
