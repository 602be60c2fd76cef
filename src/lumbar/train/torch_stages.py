"""Trainers of the torch models: `train --model superres` and `train --model multitask`."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .. import config as cfgmod
from ..data.cache import config_hash
from ..files import write_json
from ..metric import probs_to_submission, score, solution_frame
from ..models.multitask import MultitaskConfig, fill_missing
from ..models.prior import fit_prior
from ..models.registry import create_model
from ..models.superres import SuperResConfig, downscale, psnr
from .datasets import CropDataset, collate
from .loop import TrainConfig, atomic_torch_save, fit, is_main, pick_device, predict
from .oof import write_oof
from .preprocess_stage import load_crop_entries
from ..data.cache import take
from .runner import RunConfig, register

SR_DIR = "superres"
MT_DIR = "multitask"


def _train_config(cfg) -> TrainConfig:
    names = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: getattr(cfg, k) for k in names if hasattr(cfg, k)})


def _patches(entries, size: int, per_image: int, rng: np.random.Generator) -> torch.Tensor:
    """Random single-channel high-resolution patches [N, 1, size, size] from the crops' slices."""
    out = []
    for e in entries:
        for key in ("sag_image", "axial_image"):
            for crop, ok in zip(e[key], e["present"][:3] if key == "sag_image" else e["present"][3:]):
                if not ok:
                    continue
                c = crop.astype(np.float32)
                h = c.shape[-1]
                for _ in range(per_image):
                    ch = rng.integers(0, c.shape[0])
                    y, x = rng.integers(0, h - size + 1, size=2)
                    out.append(c[ch, y:y + size, x:x + size])
    return torch.from_numpy(np.stack(out)[:, None])


class _PatchSet(torch.utils.data.Dataset):
    def __init__(self, patches: torch.Tensor):
        self.patches = patches

    def __len__(self):
        return len(self.patches)

    def __getitem__(self, i):
        return {"hr": self.patches[i]}


@register("superres", order=30, config=SuperResConfig)
def train_superres(data, run, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(SuperResConfig(), overrides)
    studies, entries = load_crop_entries(data, run, rc, cfg.cache_dir)
    rng = np.random.default_rng(cfg.seed)
    held = take(entries, [i for i, st in enumerate(studies) if st.fold == 0][:max(1, cfg.max_patches // 16)])
    train_idx = [i for i, st in enumerate(studies) if st.fold != 0]
    per_study = cfg.patches_per_image * 8  # eight crops a study
    if len(train_idx) * per_study > cfg.max_patches:  # a sample of studies: memory does not grow with them
        train_idx = sorted(rng.choice(train_idx, max(1, cfg.max_patches // per_study), replace=False).tolist())
    train_e = take(entries, train_idx)
    train_p = _patches(train_e, cfg.patch, cfg.patches_per_image, rng)
    val_p = _patches(held, cfg.patch, 2, rng)
    model = create_model("superres", cfg)

    def evaluate(m, device) -> float:
        with torch.no_grad():
            sr = m.net(downscale(val_p.to(device), cfg.scale))
        return -psnr(sr.cpu(), val_p)  # the loop minimises

    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    out = Path(run) / SR_DIR
    fit(model, _PatchSet(train_p), tcfg, out, collate, evaluate, name="superres",
        run_key=config_hash(asdict(cfg), len(train_p)))
    with torch.no_grad():
        lr = downscale(val_p, cfg.scale)
        net_psnr = psnr(model.cpu().net(lr), val_p)
        bicubic = psnr(torch.nn.functional.interpolate(lr, scale_factor=cfg.scale, mode="bicubic", align_corners=False), val_p)
    atomic_torch_save(model.net.state_dict(), out / "net.pt")
    report = {"psnr_network": round(net_psnr, 3), "psnr_bicubic": round(bicubic, 3), "gain_db": round(net_psnr - bicubic, 3),
              "held_out_patches": len(val_p)}
    write_json(out / "report.json", report)
    cfgmod.save(cfg, out / "config.json")
    print(f"superres: held-out PSNR network {net_psnr:.2f} dB vs bicubic {bicubic:.2f} dB ({net_psnr - bicubic:+.2f} dB)")
    return report


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


def superres_config(run) -> SuperResConfig | None:
    path = Path(run) / SR_DIR / "config.json"
    return cfgmod.load(SuperResConfig, path) if path.exists() and (path.parent / "net.pt").exists() else None


def cross_validate(name: str, cfg, ids: np.ndarray, y: np.ndarray, fold: np.ndarray, n_folds: int, out: Path,
                   make_sets, make_model, postprocess, on_fold=None) -> tuple[np.ndarray, list[float]]:
    """Every fold through the one loop: OOF probabilities [n, 25, 3] (post-processed with the fold's
    prior, e.g. for missing series) and each fold's score, both from the final weights of a fixed
    schedule: the held-out fold is scored, never used to choose. Folds other than cfg.only_fold are
    skipped when it is set."""
    oof = np.zeros((len(ids), 25, 3), np.float32)
    tcfg, scores = _train_config(cfg), []
    for k in range(n_folds):
        if getattr(cfg, "only_fold", -1) >= 0 and k != cfg.only_fold:
            continue
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        prior = fit_prior(y[tr])
        sol = solution_frame(ids[va], y[va])
        train_set, val_set = make_sets(tr, va)
        torch.manual_seed(cfg.seed + k)
        model = make_model()
        if hasattr(model, "init_prior"):
            model.init_prior(prior)

        def evaluate(m, device, va=va, val_set=val_set, prior=prior, sol=sol) -> float:
            probs = predict(m, val_set, collate, cfg.batch_size, device, cfg.amp, desc="val")
            return score(sol, probs_to_submission(ids[va], postprocess(probs, va, prior)))

        res = fit(model, train_set, tcfg, out / f"fold{k}", collate, evaluate, name=f"{name} fold {k}",
                  run_key=config_hash(asdict(cfg), ids[tr].tolist()))
        if not is_main():
            continue
        device = pick_device(cfg.device)
        oof[va] = postprocess(predict(model, val_set, collate, cfg.batch_size, device, cfg.amp, desc="oof"), va, prior)
        write_oof(out / f"fold{k}", "oof", ids[va], oof[va])
        if on_fold is not None:
            on_fold(model, val_set, va, device)
        scores.append(score(sol, probs_to_submission(ids[va], oof[va])))
        print(f"{name} fold {k}: val score {scores[-1]:.4f} after {res.epochs_run} epochs (final weights)")
    return oof, scores


@register("multitask", order=40, config=MultitaskConfig)
def train_multitask(data, run, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(MultitaskConfig(), overrides)
    sr_cfg = superres_config(run)
    if sr_cfg is not None:  # the frozen super-resolution net is the one `train --model superres` made
        cfg = cfgmod.override(cfg, [f"sr_scale={sr_cfg.scale}", f"sr_channels={sr_cfg.channels}"])
    elif is_main():
        print(f"multitask: no trained super-resolution in {Path(run) / SR_DIR}; patches are upscaled bicubically")
    studies, entries = load_crop_entries(data, run, rc, cfg.cache_dir)
    ids = np.array([s.study_id for s in studies])
    y = np.stack([s.labels for s in studies])
    fold = np.array([s.fold for s in studies])
    present = np.stack([e["present"] for e in entries])
    out = Path(run) / MT_DIR
    kp_errs, kp_px = [], []

    def make_model():
        model = create_model("multitask", cfg)
        if sr_cfg is not None:
            model.sr.load_state_dict(torch.load(Path(run) / SR_DIR / "net.pt", map_location="cpu", weights_only=True))
        return model

    def make_sets(tr, va):
        return (CropDataset(take(entries, tr), y[tr], augment=cfg.augment, seed=cfg.seed),
                CropDataset(take(entries, va), y[va]))

    def on_fold(model, val_set, va, device):
        mm, px = keypoint_errors(model, val_set, take(entries, va), device)
        kp_errs.append(mm)
        kp_px.append(px)

    oof, fold_scores = cross_validate("multitask", cfg, ids, y, fold, rc.n_folds, out, make_sets, make_model,
                                      lambda probs, va, prior: fill_missing(probs, present[va], prior), on_fold)
    if not is_main():
        return {}
    if cfg.only_fold >= 0:
        return {"fold": cfg.only_fold, "val_score": round(fold_scores[0], 4),
                "median_keypoint_error_px": round(float(np.median(np.concatenate(kp_px))), 2)}
    cfgmod.save(cfg, out / "config.json")
    path = write_oof(run, "multitask", ids, oof)
    errs = np.concatenate(kp_errs) if kp_errs else np.array([np.nan])
    errs_px = np.concatenate(kp_px) if kp_px else np.array([np.nan])
    oof_score = score(solution_frame(ids, y), probs_to_submission(ids, oof))
    report = {"oof_score": round(oof_score, 4), "fold_scores": [round(s, 4) for s in fold_scores],
              "median_keypoint_error_mm": round(float(np.median(errs)), 2),
              "median_keypoint_error_px": round(float(np.median(errs_px)), 2), "keypoints": int(len(errs)),
              "config": asdict(cfg)}
    write_json(out / "report.json", report)
    print(f"multitask: OOF score {oof_score:.4f}; held-out median keypoint error {np.median(errs_px):.2f} px "
          f"({np.median(errs):.2f} mm) over {len(errs)} points")
    return {"oof": str(path), "oof_score": round(oof_score, 4),
            "median_keypoint_error_px": round(float(np.median(errs_px)), 2),
            "median_keypoint_error_mm": round(float(np.median(errs)), 2)}
