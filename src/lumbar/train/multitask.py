"""`train --model multitask`: model one on the stage-one crops, and its dataset."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .. import config as cfgmod
from .. import schema
from ..config import TrainConfig
from ..data.cache import take
from ..files import write_json, write_text
from ..metric import probs_to_submission, score, solution_frame, submission_to_probs
from ..models.multitask import MultitaskConfig, fill_missing
from ..models.registry import create_model
from ..preprocess.crops import slice_window
from ..preprocess.mirror import mirror_crops, mirror_labels
from ..preprocess.pipeline import read_preprocess_config
from ..preprocess.shift import shift_crops
from ..layout import Run
from .datasets import EpochSeeded, collate, cutout, random_affine
from .folds import cross_validate, study_inputs
from .loop import is_main
from .oof import write_oof
from .runner import RunConfig, register
from .crops import load_crop_entries
from .superres import superres_config



class CropDataset(EpochSeeded, Dataset):
    """One study per item: its 8 crops of `slices` slices, points (NaN unknown), presence, labels (-1 unknown).

    Augmentation keeps points and labels consistent: with probability `mirror` the study's left-right
    mirror with its left and right labels swapped (preprocess/mirror.py; no other flip has an
    anatomical counterpart), each crop's slices read up to `slice_shift` slices off the chosen one (the
    crops' spare slices: a slice selector's miss, labels kept; 1st place's ±2), a small rotation and
    scaling (`rotate` degrees, `scale`) and translation of each crop that move its points with it,
    `cutout` zeroed squares per crop, intensity gain/gamma. Without augmentation every crop is read at
    its centre.
    """

    def __init__(self, entries: list[dict], labels: np.ndarray | None = None, augment: bool = False, seed: int = 0,
                 max_shift: int = 6, mirror: float = 0.0, rotate: float = 0.0, scale: float = 0.0, cutout: int = 0,
                 slices: int | None = None, slice_shift: int = 0):
        self.entries = entries
        self.mirror, self.rotate, self.scale, self.cutout = mirror, rotate, scale, cutout
        self.slices = slices if slices is not None else (entries[0]["sag_image"].shape[1] if entries else 3)
        self.slice_shift = slice_shift
        self.labels = labels if labels is not None else np.full((len(entries), schema.N_LABELS), -1, np.int64)
        self.augment = augment
        self.max_shift = max_shift
        self.seed = seed

    view = None  # every item seen through this test-time view (datasets.viewed: held-out predictions)

    def __len__(self) -> int:
        return len(self.entries)

    def _shift(self, img: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = self.rng.integers(-self.max_shift, self.max_shift + 1, size=2)
        img = np.roll(img, (int(dy), int(dx)), axis=(-2, -1))
        return img, pts + np.array([dx, dy], dtype=pts.dtype)

    def _slice_offset(self) -> int:
        if not (self.augment and self.slice_shift > 0):
            return 0
        return int(self.rng.integers(-self.slice_shift, self.slice_shift + 1))

    def __getitem__(self, i: int) -> dict:
        e, labels = self.entries[i], self.labels[i]
        if self.view is not None:
            e = self.view.apply(e, mirror_crops, shift_crops)
            labels = mirror_labels(labels) if self.view.mirror else labels
        if self.augment and self.mirror > 0 and self.rng.random() < self.mirror:
            e, labels = mirror_crops(e), mirror_labels(labels)
        sag = np.stack([slice_window(c, self.slices, self._slice_offset()) for c in e["sag_image"]]).astype(np.float32)
        axial = np.stack([slice_window(c, self.slices, self._slice_offset()) for c in e["axial_image"]]).astype(np.float32)
        sag_pts = e["sag_points"].astype(np.float32).copy()
        ax_pts = e["axial_points"].astype(np.float32).copy()
        if self.augment:
            for j in range(len(sag)):
                sag[j], sag_pts[j] = random_affine(sag[j], sag_pts[j], self.rng, self.rotate, self.scale)
                sag[j], sag_pts[j] = self._shift(sag[j], sag_pts[j])
                sag[j] = cutout(sag[j], self.rng, self.cutout)
            for j in range(len(axial)):
                axial[j], ax_pts[j] = random_affine(axial[j], ax_pts[j], self.rng, self.rotate, self.scale)
                axial[j], ax_pts[j] = self._shift(axial[j], ax_pts[j])
                axial[j] = cutout(axial[j], self.rng, self.cutout)
            gain = self.rng.uniform(0.85, 1.15)
            gamma = self.rng.uniform(0.85, 1.15)
            sag = np.clip(sag, 0, None) ** gamma * gain
            axial = np.clip(axial, 0, None) ** gamma * gain
        return {"sag_image": torch.from_numpy(np.ascontiguousarray(sag)),
                "axial_image": torch.from_numpy(np.ascontiguousarray(axial)),
                "sag_points": torch.from_numpy(sag_pts), "axial_points": torch.from_numpy(ax_pts),
                "present": torch.from_numpy(e["present"].astype(bool)),
                "labels": torch.from_numpy(labels.astype(np.int64))}


def keypoint_errors(model, dataset, entries, device) -> tuple[np.ndarray, np.ndarray]:
    """Per labelled point, the distance between predicted and labelled point: (millimetres, pixels of
    the original slice)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=False, collate_fn=collate)
    errs, errs_px, i = [], [], 0
    model.eval()
    with torch.no_grad():
        for batch in loader:
            res = model({k: v.to(device) for k, v in batch.items()})
            for b in range(len(batch["labels"])):
                mm = entries[i]["mm_per_px"]
                boxes = entries[i]["boxes"]
                for key, pred, off in (("sag_points", res["sag_kp"][b], 0), ("axial_points", res["axial_kp"][b], 3)):
                    true = batch[key][b].numpy()
                    d = np.linalg.norm(pred.cpu().numpy() - true, axis=-1)
                    size = batch["sag_image" if off == 0 else "axial_image"].shape[-1]
                    for c in range(d.shape[0]):
                        ok = np.isfinite(d[c])
                        errs += (d[c][ok] * mm[off + c]).tolist()
                        errs_px += (d[c][ok] * (boxes[off + c][2] - boxes[off + c][0]) / size).tolist()
                i += 1
    return np.array(errs), np.array(errs_px)


@dataclass
class MultitaskTraining(MultitaskConfig, TrainConfig):
    """`train --model multitask`'s settings: the network's config composed with the training loop's."""
    epochs: int = 14  # the fixed schedule's length (chosen from the curves; the last epoch's weights predict)
    eval_every: int = 2  # the curves' held-out score every other epoch (and the last): ~10% of a CPU epoch
    batch_size: int = 8  # studies per step
    augment: bool = True  # shift, gain and gamma on every crop (and the switches below)
    mirror: float = 0.0  # with augment: the share of examples seen mirrored left-right, labels swapped
    rotate: float = 0.0  # with augment: each crop turned by up to this many degrees (its points with it)
    scale: float = 0.0  # with augment: each crop scaled by up to this fraction either way
    cutout: int = 0  # with augment: squares (a fifth of the side) zeroed per crop
    slice_shift: int = 0  # with augment: each crop's slices read up to this many off the chosen one (needs the
    # crops built with spare >= it: `train --model crops spare=2`; 1st place's ±2)
    cache_dir: str = "cache"  # the per-study cache of crops
    only_fold: int = -1  # >= 0: train that fold alone (a quick look; no OOF file is written)
    # > 0: a second pass that trains without each label whose probability in the run's first-pass multitask
    # OOF is below this (noisy or unlearnable labels; 2nd place's filter); validation keeps every label. 0: off
    oof_floor: float = 0.0


def first_pass_oof(run) -> Path:
    """Where the first pass's multitask OOF is kept once a filtered pass starts (its own OOF replaces
    the run's, and a resumed second pass must filter by the same first pass)."""
    return Run(run).stage("multitask") / "first_pass_oof.csv"


def filter_labels(run, ids: np.ndarray, y: np.ndarray, floor: float) -> np.ndarray:
    """y with -1 (no label) wherever the first pass's OOF gave the label less than `floor`."""
    keep = first_pass_oof(run)
    if not keep.exists():
        if not Run(run).oof("multitask").exists():
            raise FileNotFoundError(f"{Run(run).oof('multitask')}: oof_floor needs a first pass; train multitask "
                                    "with oof_floor=0 first")
        write_text(keep, Run(run).oof("multitask").read_text())
    probs = submission_to_probs(pd.read_csv(keep), list(ids))
    labelled = y >= 0
    p_label = np.take_along_axis(probs, np.clip(y, 0, 2)[..., None], -1)[..., 0]
    drop = labelled & (p_label < floor)
    if is_main():
        print(f"multitask: oof_floor={floor}: {int(drop.sum())} of {int(labelled.sum())} training labels left out "
              f"(by severity {[int((drop & (y == k)).sum()) for k in range(3)]}; first pass {keep})")
    return np.where(drop, -1, y)


@register("multitask", order=40, config=MultitaskTraining)
def train_multitask(data, run, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(MultitaskTraining(), overrides)
    sr_cfg = superres_config(run)
    if sr_cfg is not None:  # the frozen super-resolution net is the one `train --model superres` made
        cfg = cfgmod.override(cfg, [f"sr_scale={sr_cfg.scale}", f"sr_channels={sr_cfg.channels}"])
    elif is_main():
        print(f"multitask: no trained super-resolution in {Run(run).superres_net}; patches are upscaled bicubically")
    crops = read_preprocess_config(run)
    if cfg.slice_shift > crops.spare:
        raise SystemExit(f"multitask: slice_shift={cfg.slice_shift} needs crops with spare >= {cfg.slice_shift}; "
                         f"{Run(run).config('crops')} has spare={crops.spare} (train --model crops spare=N)")
    cfg = cfgmod.override(cfg, [f"slices={crops.slices}"])  # the CNNs read what the crops hold
    studies, entries = load_crop_entries(data, run, rc, cfg.cache_dir)
    ids = np.array([s.study_id for s in studies])
    y = np.stack([s.labels for s in studies])
    fold = np.array([s.fold for s in studies])
    present = np.stack([e["present"] for e in entries])

    def make_model():
        model = create_model("multitask", cfg)
        if sr_cfg is not None:
            model.sr.load_state_dict(torch.load(Run(run).superres_net, map_location="cpu", weights_only=True))
        return model

    y_fit = filter_labels(run, ids, y, cfg.oof_floor) if cfg.oof_floor > 0 else y

    def make_sets(tr, va):
        return (CropDataset(take(entries, tr), y_fit[tr], augment=cfg.augment, seed=cfg.seed, mirror=cfg.mirror,
                            rotate=cfg.rotate, scale=cfg.scale, cutout=cfg.cutout, slices=cfg.slices,
                            slice_shift=cfg.slice_shift),
                CropDataset(take(entries, va), y[va], slices=cfg.slices))

    def on_fold(model, val_set, va, device):
        return keypoint_errors(model, val_set, take(entries, va), device)

    oof, fold_scores, kp = cross_validate("multitask", cfg, ids, y, fold, rc.n_folds, run, make_sets, make_model,
                                      lambda probs, va, prior: fill_missing(probs, present[va], prior), on_fold,
                                      inputs=study_inputs(studies))
    if not is_main():
        return {}
    kp_errs, kp_px = [mm for mm, _ in kp], [px for _, px in kp]
    if cfg.only_fold >= 0:
        return {"fold": cfg.only_fold, "val_score": round(fold_scores[0], 4),
                "median_keypoint_error_px": round(float(np.median(np.concatenate(kp_px))), 2)}
    cfgmod.save(cfg, Run(run).config("multitask"))
    path = write_oof(run, "multitask", ids, oof)
    errs = np.concatenate(kp_errs) if kp_errs else np.array([np.nan])
    errs_px = np.concatenate(kp_px) if kp_px else np.array([np.nan])
    oof_score = score(solution_frame(ids, y), probs_to_submission(ids, oof))
    report = {"oof_score": round(oof_score, 4), "fold_scores": [round(s, 4) for s in fold_scores],
              "median_keypoint_error_mm": round(float(np.median(errs)), 2),
              "median_keypoint_error_px": round(float(np.median(errs_px)), 2), "keypoints": int(len(errs)),
              "config": asdict(cfg)}
    write_json(Run(run).report("multitask"), report)
    print(f"multitask: OOF score {oof_score:.4f}; held-out median keypoint error {np.median(errs_px):.2f} px "
          f"({np.median(errs):.2f} mm) over {len(errs)} points")
    return {"oof": str(path), "oof_score": round(oof_score, 4),
            "median_keypoint_error_px": round(float(np.median(errs_px)), 2),
            "median_keypoint_error_mm": round(float(np.median(errs)), 2)}
