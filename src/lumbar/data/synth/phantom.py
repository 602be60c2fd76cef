"""The phantom: an analytic lumbar spine in patient space (DICOM LPS: +x left, +y posterior, +z superior),
whose every pixel of any slice geometry renders exactly: the tissue at its 3D position, then its signal.
Each (condition, level) has a latent severity (labelmodel.py); its structure narrows with it, only at its
level and on its side:
- spinal canal stenosis: the disc bulges and the ligamentum flavum thickens into the central canal;
- neural foraminal narrowing: the fat-filled foramen (bright on T1) in the pedicle column shrinks;
- subarticular stenosis: the facet grows into the lateral recess of the canal.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from ... import schema


# Tissues and their (T1, T2) signal, in [0, 1] before scanner scaling.
AIR, SOFT, MARROW, DISC, CSF, BONE, FAT, NERVE, LIGAMENT, FACET = range(10)
SIGNAL = np.array([
    [0.00, 0.00], [0.35, 0.25], [0.60, 0.40], [0.30, 0.85], [0.10, 1.00],
    [0.45, 0.30], [0.95, 0.60], [0.22, 0.35], [0.12, 0.10], [0.50, 0.32],
])
SYNTH_VERSION = 1


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
