"""Crop boxes around where the labels are, and the mapping of points into and out of crops.

Axial boxes are fitted from training coordinates (where labelled points fall, as fractions of the
image, with a margin). Sagittal boxes are found from the image itself: the column of the vertebral
column is where horizontal edges (disc/body interfaces) pile up; the box sits at fitted offsets from
it. When that heuristic fails (no clear peak, or a column outside what training saw) the box falls
back to the fitted absolute position.

Coordinates are continuous pixel positions with pixel centres at integers. A box (x0, y0, x1, y1)
resized to S x S samples output pixel u at source x = x0 + (u + 0.5) * (x1 - x0) / S - 0.5, and
points map with exactly that affine map, so map-then-unmap is the identity.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from .. import schema
from ..data.resample import warp_affine
from ..files import write_json

# name -> (series type, selector class, label columns of its points)
CROPS: dict[str, tuple[str, int, list[int]]] = {
    "sag_t2": (schema.SAG_T2, 1, [schema.label_index("spinal_canal_stenosis", lv) for lv in schema.LEVELS]),
    "sag_t1_left": (schema.SAG_T1, 1, [schema.label_index("left_neural_foraminal_narrowing", lv) for lv in schema.LEVELS]),
    "sag_t1_right": (schema.SAG_T1, 2, [schema.label_index("right_neural_foraminal_narrowing", lv) for lv in schema.LEVELS]),
}
for _k, _lv in enumerate(schema.LEVELS):
    CROPS[f"axial_{_lv}"] = (schema.AXIAL, _k + 1, [schema.label_index("left_subarticular_stenosis", _lv),
                                                    schema.label_index("right_subarticular_stenosis", _lv)])
CROP_NAMES = tuple(CROPS)
SAGITTAL_CROPS = ("sag_t2", "sag_t1_left", "sag_t1_right")


def find_spine_column(img: np.ndarray) -> tuple[float, float]:
    """(column as a fraction of the width, peak prominence) of the vertebral column on a sagittal slice."""
    h, w = img.shape
    gy = np.abs(edges(img)[0])
    profile = gy[int(0.15 * h):int(0.85 * h)].mean(axis=0)
    profile = gaussian_filter(profile, max(w / 64, 1.0))
    lo, hi = int(0.1 * w), int(0.9 * w)
    col = lo + int(np.argmax(profile[lo:hi]))
    prominence = float(profile[col]) / (float(np.median(profile[lo:hi])) + 1e-6)  # in float64 under numpy 1 and 2
    return col / w, prominence


def edges(img: np.ndarray, sigma: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """(d/dy, d/dx) of the image smoothed by a Gaussian of `sigma` pixels (OpenCV: at 512² a few times
    faster than scipy.ndimage for the same filters)."""
    import cv2

    sm = cv2.GaussianBlur(np.ascontiguousarray(img, np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (cv2.Sobel(sm, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT),
            cv2.Sobel(sm, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT))


def _span(values: np.ndarray, margin: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo - margin), float(hi + margin)


def slice_summary(name: str, img: np.ndarray) -> dict:
    """What fitting crop regions reads of a labelled slice: its shape and, for sagittal crops, the
    detected spine column and its prominence."""
    return {"shape": tuple(img.shape), "spine": find_spine_column(img) if name in SAGITTAL_CROPS else None}


@dataclass
class CropRegions:
    """Fitted crop geometry, all in fractions of the image width (x) and height (y)."""
    margin: float = 0.04
    axial_x: tuple[float, float] = (0.3, 0.7)
    axial_y: tuple[float, float] = (0.4, 0.8)
    sag: dict = field(default_factory=dict)  # name -> {"dx": [lo, hi], "y": [lo, hi], "x": [lo, hi]}
    spine: tuple[float, float] = (0.5, 0.1)  # mean, sd of the detected column
    min_prominence: float = 1.5

    @classmethod
    def fit(cls, samples: list[tuple[str, np.ndarray | dict, np.ndarray]], margin: float = 0.04) -> "CropRegions":
        """samples: (crop name, chosen slice [h, w] or its `slice_summary`, points [K, 2] in its pixels,
        NaN if unknown)."""
        reg = cls(margin=margin)
        ax_x, ax_y = [], []
        sag: dict[str, dict[str, list]] = {n: {"dx": [], "y": [], "x": []} for n in SAGITTAL_CROPS}
        spines = []
        for name, img, pts in samples:
            summary = img if isinstance(img, dict) else slice_summary(name, img)
            h, w = summary["shape"]
            ok = np.isfinite(pts).all(axis=1)
            if not ok.any():
                continue
            x, y = pts[ok, 0] / w, pts[ok, 1] / h
            if name in SAGITTAL_CROPS:
                col, prom = summary["spine"]
                if prom >= reg.min_prominence:
                    spines.append(col)
                    sag[name]["dx"] += (x - col).tolist()
                sag[name]["x"] += x.tolist()
                sag[name]["y"] += y.tolist()
            else:
                ax_x += x.tolist()
                ax_y += y.tolist()
        if ax_x:
            reg.axial_x, reg.axial_y = _span(np.array(ax_x), margin), _span(np.array(ax_y), margin)
        for name, d in sag.items():
            if d["x"]:
                reg.sag[name] = {"x": _span(np.array(d["x"]), margin), "y": _span(np.array(d["y"]), margin),
                                 "dx": _span(np.array(d["dx"]), margin) if d["dx"] else None}
        if spines:
            reg.spine = (float(np.mean(spines)), float(np.std(spines) + 0.01))
        return reg

    def box(self, name: str, img: np.ndarray, centre=None) -> tuple[np.ndarray, bool]:
        """(box [x0, y0, x1, y1] in pixels, square, and whether the image placed it: the spine column
        heuristic, or `centre` (x, y), the crop's points projected from the level points)."""
        h, w = img.shape
        from_image = False
        if name in SAGITTAL_CROPS:
            r = self.sag.get(name)
            if r is None:
                x, y = (0.3, 0.7), (0.1, 0.9)
            else:
                x, y = r["x"], r["y"]
                col, prom = find_spine_column(img)
                if r["dx"] is not None and prom >= self.min_prominence and abs(col - self.spine[0]) < 4 * self.spine[1]:
                    x = (col + r["dx"][0], col + r["dx"][1])
                    from_image = True
        else:
            x, y = self.axial_x, self.axial_y
        x0, x1, y0, y1 = x[0] * w, x[1] * w, y[0] * h, y[1] * h
        side = max(x1 - x0, y1 - y0)  # square, so a resize does not distort anatomy
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if centre is not None:
            (cx, cy), from_image = centre, True
        return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]), from_image

    def save(self, path: str | Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "CropRegions":
        d = json.loads(Path(path).read_text())
        d["axial_x"], d["axial_y"], d["spine"] = tuple(d["axial_x"]), tuple(d["axial_y"]), tuple(d["spine"])
        return cls(**d)


def map_points(pts: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Image pixel coordinates [K, 2] -> crop pixel coordinates of an S x S crop of box."""
    pts = np.asarray(pts, dtype=np.float64)
    scale = size / np.array([box[2] - box[0], box[3] - box[1]])
    return (pts + 0.5 - box[:2]) * scale - 0.5


def unmap_points(pts: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Crop pixel coordinates -> image pixel coordinates (inverse of map_points)."""
    pts = np.asarray(pts, dtype=np.float64)
    scale = np.array([box[2] - box[0], box[3] - box[1]]) / size
    return (pts + 0.5) * scale + box[:2] - 0.5


def crop_resize(stack: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """[C, h, w] -> [C, S, S] sampling box bilinearly;
    outside the image is 0. Output pixel u samples x0 + (u + 0.5) * (x1 - x0) / S - 0.5."""
    sx, sy = (box[2] - box[0]) / size, (box[3] - box[1]) / size
    m = np.array([[sx, 0.0, box[0] + 0.5 * sx - 0.5], [0.0, sy, box[1] + 0.5 * sy - 0.5]])  # output -> input
    return warp_affine(stack, m, (size, size))


def slice_window(stack: np.ndarray, slices: int, offset: int = 0):
    """The `slices` channels of crops [..., C, S, S] centred `offset` slices off the middle one: what the
    model reads of crops built with spare slices (offset 0), or a training view shifted along the normal.
    Works on numpy arrays and torch tensors alike."""
    c = stack.shape[-3]
    start = (c - slices) // 2 + offset
    if slices > c or start < 0 or start + slices > c:
        raise ValueError(f"crops of {c} slices have no window of {slices} slices {offset:+d} off their middle")
    return stack[..., start:start + slices, :, :]
