"""Bilinear affine resampling whose pixels do not depend on any library's version.

OpenCV's warpAffine rounds each sample's coordinates to 1/32 of a pixel, and OpenCV 5 changed how: the
same call on float32 images differs by up to 0.025 (values in [0, 1.2]) between opencv 4.13 and 5.0, and
the kernel's predictions moved by 5e-3 with it. Here coordinates are float64, the weights float32, and each
output pixel one fixed sequence of float32 IEEE operations on its four neighbours (along y first, then x),
so every numpy from 1.26 to 2.4 gives the same bits, and the separable path (no rotation: crops,
rescaling) gives the same bits as the general one.
"""
from __future__ import annotations

import numpy as np


def invert_affine(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine map (output -> input from input -> output, and back)."""
    m = np.asarray(m, dtype=np.float64)
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, -(a @ m[:, 2:])], axis=1)


def rotation_matrix(centre: tuple[float, float], angle_deg: float, scale: float) -> np.ndarray:
    """The 2x3 input -> output map turning by angle_deg (counter-clockwise on screen) and scaling about
    centre: OpenCV's getRotationMatrix2D, computed here."""
    a = np.deg2rad(angle_deg)
    alpha, beta = scale * np.cos(a), scale * np.sin(a)
    cx, cy = centre
    return np.array([[alpha, beta, (1 - alpha) * cx - beta * cy], [-beta, alpha, beta * cx + (1 - alpha) * cy]])


def _taps(coord: np.ndarray, n: int, border: str):
    """Each coordinate's two neighbours along one axis (clipped indices) and their weights; with a
    constant border a neighbour outside [0, n) weighs 0 (the image is 0 there)."""
    i0 = np.floor(coord)
    f = coord - i0
    i0 = i0.astype(np.int64)
    i1 = i0 + 1
    w0, w1 = 1.0 - f, f
    if border == "constant":
        w0 = w0 * ((i0 >= 0) & (i0 < n))
        w1 = w1 * ((i1 >= 0) & (i1 < n))
    elif border != "replicate":
        raise ValueError(f"border {border!r}: expected 'constant' (0 outside) or 'replicate'")
    # weights rounded once to float32: the products and sums below are single IEEE operations on float32
    # arrays (no scalar in them: NEP 50 cannot change their type), the same bits in every numpy
    return np.clip(i0, 0, n - 1), np.clip(i1, 0, n - 1), w0.astype(np.float32), w1.astype(np.float32)


def warp_affine(img: np.ndarray, m: np.ndarray, shape: tuple[int, int], inverse: bool = True,
                border: str = "constant") -> np.ndarray:
    """img [..., h, w] sampled bilinearly at m's points: out[..., y, x] = img at m @ (x, y, 1), m the 2x3
    map from output to input pixel (`inverse=True`, OpenCV's WARP_INVERSE_MAP) or from input to output
    (`inverse=False`, as getRotationMatrix2D gives it). Pixel centres at integers; outside the image 0
    (`border="constant"`) or the nearest edge pixel ("replicate"). float32 out."""
    m = np.asarray(m, dtype=np.float64)
    if not inverse:
        m = invert_affine(m)
    img = np.asarray(img, dtype=np.float32)
    h, w = img.shape[-2:]
    rows, cols = int(shape[0]), int(shape[1])
    x = np.arange(cols, dtype=np.float64)
    y = np.arange(rows, dtype=np.float64)
    if m[0, 1] == 0 and m[1, 0] == 0:  # axis-aligned: rows first, then columns (the same arithmetic)
        y0, y1, wy0, wy1 = _taps(m[1, 1] * y + m[1, 2], h, border)
        x0, x1, wx0, wx1 = _taps(m[0, 0] * x + m[0, 2], w, border)
        lo, hi = int(min(x0.min(), x1.min())), int(max(x0.max(), x1.max())) + 1
        part = img[..., lo:hi]  # only the columns sampled (a crop reads a fraction of its slice)
        along_y = part[..., y0, :] * wy0[:, None] + part[..., y1, :] * wy1[:, None]  # [..., rows, hi - lo]
        return along_y[..., x0 - lo] * wx0 + along_y[..., x1 - lo] * wx1
    gx, gy = x[None, :], y[:, None]
    sx = m[0, 0] * gx + m[0, 1] * gy + m[0, 2]
    sy = m[1, 0] * gx + m[1, 1] * gy + m[1, 2]
    x0, x1, wx0, wx1 = _taps(sx, w, border)
    y0, y1, wy0, wy1 = _taps(sy, h, border)
    left = img[..., y0, x0] * wy0 + img[..., y1, x0] * wy1
    right = img[..., y0, x1] * wy0 + img[..., y1, x1] * wy1
    return left * wx0 + right * wx1
