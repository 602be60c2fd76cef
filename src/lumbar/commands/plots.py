"""Figures: where people would rather look than read."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import write_figure


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def show_study(study, vols, entry: dict, out: str | Path, predicted: dict | None = None) -> Path:
    """Per crop: the chosen slice with its crop box and the labelled points (green), then the crop with
    the points mapped into it (green) and predicted points if given (red, crop pixels)."""
    from ..data.volumes import normalise
    from ..preprocess.crops import CROP_NAMES, unmap_points

    plt = pyplot()
    by_id = {sid: v for items in vols.values() for sid, v in items}
    n = len(CROP_NAMES)
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5.2))
    for i, name in enumerate(CROP_NAMES):
        top, bottom = axes[0, i], axes[1, i]
        top.set_title(name, fontsize=8)
        for a in (top, bottom):
            a.set_xticks([])
            a.set_yticks([])
        if not entry["present"][i]:
            top.text(0.5, 0.5, "missing series", ha="center", va="center", fontsize=8, transform=top.transAxes)
            bottom.axis("off")
            continue
        sid, idx = int(entry["series_id"][i]), int(entry["slice"][i])
        img = normalise(by_id[sid].pixels[idx:idx + 1])[0]
        top.imshow(img, cmap="gray", vmin=0, vmax=1)
        x0, y0, x1, y1 = entry["boxes"][i]
        top.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", lw=1))
        crop = entry["sag_image"][i] if i < 3 else entry["axial_image"][i - 3]
        pts = entry["sag_points"][i] if i < 3 else entry["axial_points"][i - 3]
        size = crop.shape[-1]
        ok = np.isfinite(pts).all(axis=1)
        if ok.any():
            orig = unmap_points(pts[ok], entry["boxes"][i], size)
            top.scatter(orig[:, 0], orig[:, 1], s=8, c="lime")
        true_inst = int(entry["true_instance"][i])
        top.set_xlabel(f"inst {int(entry['instance'][i])}" + (f" (label {true_inst})" if true_inst >= 0 else ""), fontsize=7)
        bottom.imshow(crop[1].astype(np.float32), cmap="gray", vmin=0, vmax=1)
        if ok.any():
            bottom.scatter(pts[ok, 0], pts[ok, 1], s=10, c="lime")
        if predicted is not None and name in predicted:
            p = np.asarray(predicted[name])
            bottom.scatter(p[:, 0], p[:, 1], s=10, c="red", marker="x")
    fig.suptitle(f"study {study.study_id}: chosen slices, crop boxes (yellow), labelled points (green)", fontsize=10)
    fig.tight_layout()
    return write_figure(out, fig, 80)

