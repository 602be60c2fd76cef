"""`train --model superres`: the super-resolution net the multitask model uses, on the crops' own slices."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .. import config as cfgmod
from ..data.cache import config_hash, take
from ..files import write_json
from ..layout import Run
from ..models.registry import create_model
from ..models.superres import SuperResConfig, downscale, psnr
from .datasets import collate
from .loop import TrainConfig, atomic_torch_save, fit
from .runner import RunConfig, register
from .crops import load_crop_entries



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
                    out.append(c[ch, y:y + size, x:x + size].copy())  # a view would keep the whole crop alive
    return torch.from_numpy(np.stack(out)[:, None])


class _PatchSet(torch.utils.data.Dataset):
    def __init__(self, patches: torch.Tensor):
        self.patches = patches

    def __len__(self):
        return len(self.patches)

    def __getitem__(self, i):
        return {"hr": self.patches[i]}


@dataclass
class SuperResTraining(SuperResConfig):
    """`train --model superres`'s settings: the network's config and how it is trained."""
    patch: int = 32  # high-resolution training patch side
    epochs: int = 8  # passes over the training patches
    batch_size: int = 64  # patches per optimiser step
    lr: float = 3e-3  # the training loop's (AdamW) learning rate
    patches_per_image: int = 16  # random high-resolution patches cut from each training image
    max_patches: int = 20000  # patches in memory at most: studies are sampled beyond it (bounded memory)
    seed: int = 0  # patch sampling and initialisation seed
    device: str = "auto"  # the GPU presets say "cuda": a broken CUDA stops training instead of using the CPU
    cache_dir: str = "cache"  # the per-study cache the images are read from


@register("superres", order=30, config=SuperResTraining)
def train_superres(data, run, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(SuperResTraining(), overrides)
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

    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=cfg.device)
    out = Run(run).stage("superres")
    fit(model, _PatchSet(train_p), tcfg, out, collate, evaluate, name="superres",
        run_key=config_hash(asdict(cfg), len(train_p)), val_name="-PSNR on held-out patches, dB (lower is better)")
    with torch.no_grad():
        lr = downscale(val_p, cfg.scale)
        net_psnr = psnr(model.cpu().net(lr), val_p)
        bicubic = psnr(torch.nn.functional.interpolate(lr, scale_factor=cfg.scale, mode="bicubic", align_corners=False), val_p)
    atomic_torch_save(model.net.state_dict(), Run(run).superres_net)
    report = {"psnr_network": round(net_psnr, 3), "psnr_bicubic": round(bicubic, 3), "gain_db": round(net_psnr - bicubic, 3),
              "held_out_patches": len(val_p)}
    write_json(Run(run).report("superres"), report)
    cfgmod.save(cfg, Run(run).config("superres"))
    print(f"superres: held-out PSNR network {net_psnr:.2f} dB vs bicubic {bicubic:.2f} dB ({net_psnr - bicubic:+.2f} dB)")
    return report


def superres_config(run) -> SuperResTraining | None:
    path = Run(run).config("superres")
    return cfgmod.load(SuperResTraining, path) if path.exists() and Run(run).superres_net.exists() else None
