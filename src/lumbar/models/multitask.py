"""Model one: keypoints on the stage-one crops, patches around them, super-resolved, per-column heads.

Shapes for a batch of B studies (tiny config: S = 128 sagittal, Sa = 96 axial crops):
  sag_image [B, 3, C, S, S] (T2; T1 left; T1 right — each C = `slices` neighbouring slices as channels;
  crops built with spare slices are read at their centre C)
  axial_image [B, 5, C, Sa, Sa] (one crop per level)
  -> all 8 crops resized to kp_input, one timm backbone (features_only, stride 8) -> heatmaps:
     5 per sagittal crop (one per level), 2 per axial crop (left, right) -> soft-argmax points
  -> 25 patches, one per label column, cut around its point from the crop at native resolution
     (grid_sample), super-resolved x2 by the frozen ESPCN, resized to patch_input
  -> a second timm backbone (pooled features) -> per-(condition, level) linear heads -> [B, 25, 3].
Loss: class-weighted cross entropy (1/2/4, the metric's weights) over present, labelled columns +
kp_weight x L1 of the normalised points where labelled. Training feeds the true points to the patch
cutter with probability teacher_forcing (per study); evaluation uses predicted points only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import schema
from .backbones import create_backbone
from .losses import class_weighted_ce
from ..preprocess.crops import slice_window
from ..preprocess.mirror import mirror_crops
from ..preprocess.shift import shift_crops
from .registry import register_model
from .superres import ESPCN

# For each label column: (crop group, crop index within the group, point index within the crop).
COLUMN_SOURCE: list[tuple[str, int, int]] = []
for _c in schema.CONDITIONS:
    for _k in range(5):
        if _c == "spinal_canal_stenosis":
            COLUMN_SOURCE.append(("sag", 0, _k))
        elif _c == "left_neural_foraminal_narrowing":
            COLUMN_SOURCE.append(("sag", 1, _k))
        elif _c == "right_neural_foraminal_narrowing":
            COLUMN_SOURCE.append(("sag", 2, _k))
        elif _c == "left_subarticular_stenosis":
            COLUMN_SOURCE.append(("axial", _k, 0))
        else:
            COLUMN_SOURCE.append(("axial", _k, 1))
# Index of each column's crop in CROP_NAMES order (3 sagittal, then 5 axial), for the presence mask.
COLUMN_CROP = [i if g == "sag" else 3 + i for g, i, _ in COLUMN_SOURCE]


def fill_missing(probs: np.ndarray, present: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Columns whose crop is missing (no series of that type) take the prior."""
    out = probs.copy()
    missing = ~present[:, COLUMN_CROP]  # [n, 25]
    out[missing] = np.broadcast_to(prior, out.shape)[missing]
    return out


@dataclass
class MultitaskConfig:
    """The network (its training settings: train/multitask.py's MultitaskTraining). Defaults are the
    tiny CPU model of the tests and the demo; configs/gpu/multitask.json is the real-data one."""
    backbone: str = "test_efficientnet"  # timm model name of the keypoint and classifier CNNs
    pretrained: bool = False  # True downloads timm's weights (needs internet)
    backbone_checkpoint: str = ""  # or a local file / folder of them (models/backbones.py), offline
    kp_input: int = 96  # side the crops are resized to for the keypoint CNN
    kp_level: int = 2  # features_only level of the heatmaps (stride 8 for most timm CNNs)
    patch_sag: int = 24  # patch side around a point, sagittal crop pixels
    patch_axial: int = 32  # axial crop pixels
    patch_input: int = 48  # classifier input side after super-resolution
    sr_scale: int = 2  # the frozen super-resolution net's factor (set from the run's superres)
    sr_channels: int = 16  # its channels (set from the run's superres)
    slices: int = 3  # neighbouring slices per crop, the CNNs' input channels (set from the run's crops)
    teacher_forcing: float = 0.5  # share of training studies whose patches are cut at the labelled points
    kp_weight: float = 2.0  # weight of the keypoints' loss against the labels'
    dropout: float = 0.2  # before the classifier head
    tta_shift: int = 3  # test-time: the crops' centres also moved ±this many pixels (4 views, each mirrored
    # too where the mirror is on; 0: none); within training's ±6 px roll (models/views.py)


def soft_argmax(heat: torch.Tensor) -> torch.Tensor:
    """[N, K, h, w] logits -> [N, K, 2] (x, y) normalised to [0, 1] (pixel centres at (i + 0.5) / size)."""
    n, k, h, w = heat.shape
    p = heat.reshape(n, k, h * w).softmax(-1).reshape(n, k, h, w)
    xs = (torch.arange(w, device=heat.device, dtype=p.dtype) + 0.5) / w
    ys = (torch.arange(h, device=heat.device, dtype=p.dtype) + 0.5) / h
    return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], -1)


def cut_patches(images: torch.Tensor, centres: torch.Tensor, side: int, out: int) -> torch.Tensor:
    """images [N, C, H, W], centres [N, K, 2] normalised -> patches [N, K, C, out, out] of `side` pixels."""
    n, c, h, w = images.shape
    k = centres.shape[1]
    theta = torch.zeros(n * k, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = side / w
    theta[:, 1, 1] = side / h
    theta[:, :, 2] = centres.reshape(n * k, 2) * 2 - 1
    grid = F.affine_grid(theta, (n * k, c, out, out), align_corners=False)
    src = images.repeat_interleave(k, dim=0)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False).reshape(n, k, c, out, out)


class MultitaskModel(nn.Module):
    def __init__(self, cfg: MultitaskConfig):
        super().__init__()
        self.cfg = cfg
        self.force_points = False  # patches at the labelled points, not the predicted ones (attribution)
        self.kp_backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.backbone_checkpoint,
                                           out_indices=(cfg.kp_level,), in_chans=cfg.slices)
        ch = self.kp_backbone.feature_info.channels()[-1]
        self.kp_heads = nn.ModuleDict({"sag_t2": nn.Conv2d(ch, 5, 1), "sag_t1": nn.Conv2d(ch, 5, 1),
                                       "axial": nn.Conv2d(ch, 2, 1)})
        self.sr = ESPCN(cfg.sr_scale, cfg.sr_channels)
        for p in self.sr.parameters():
            p.requires_grad_(False)  # its own training stage; frozen here
        self.cls_backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.backbone_checkpoint, num_classes=0,
                                            in_chans=cfg.slices)
        nf = self.cls_backbone.num_features
        self.drop = nn.Dropout(cfg.dropout)
        self.head_w = nn.Parameter(torch.randn(schema.N_LABELS, nf, 3) * 0.01)
        self.head_b = nn.Parameter(torch.zeros(schema.N_LABELS, 3))
        self.register_buffer("column_crop", torch.tensor(COLUMN_CROP))

    @torch.no_grad()
    def init_prior(self, prior) -> None:
        """Start from the fold's prior: the heads' bias is its log."""
        self.head_b.copy_(torch.log(torch.as_tensor(prior, dtype=torch.float32)))

    def keypoints(self, sag: torch.Tensor, axial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised points: sagittal [B, 3, 5, 2], axial [B, 5, 2, 2]."""
        b = sag.shape[0]
        size = self.cfg.kp_input
        x = torch.cat([F.interpolate(sag.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False),
                       F.interpolate(axial.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False)])
        fmap = self.kp_backbone(x)[-1]
        fs, fa = fmap[:b * 3].unflatten(0, (b, 3)), fmap[b * 3:]
        t2 = soft_argmax(self.kp_heads["sag_t2"](fs[:, 0]))
        t1 = soft_argmax(self.kp_heads["sag_t1"](fs[:, 1:].flatten(0, 1))).unflatten(0, (b, 2))
        ax = soft_argmax(self.kp_heads["axial"](fa)).unflatten(0, (b, 5))
        return torch.cat([t2[:, None], t1], 1), ax

    def forward(self, batch: dict) -> dict:
        cfg = self.cfg
        sag = slice_window(batch["sag_image"], cfg.slices).float()
        axial = slice_window(batch["axial_image"], cfg.slices).float()
        b, s, sa = sag.shape[0], sag.shape[-1], axial.shape[-1]
        sag_kp, ax_kp = self.keypoints(sag, axial)
        true_sag = (batch["sag_points"] + 0.5) / s
        true_ax = (batch["axial_points"] + 0.5) / sa
        # Zero, but in the graph, when the batch has no labelled point: DDP needs a gradient for every
        # parameter at every step, the keypoint heads included.
        kp_loss = 0.0 * (sag_kp.sum() + ax_kp.sum())
        m_sag, m_ax = torch.isfinite(true_sag).all(-1), torch.isfinite(true_ax).all(-1)
        n_kp = m_sag.sum() + m_ax.sum()
        if n_kp > 0:
            kp_loss = ((sag_kp - true_sag.nan_to_num()).abs().sum(-1) * m_sag).sum() \
                + ((ax_kp - true_ax.nan_to_num()).abs().sum(-1) * m_ax).sum()
            kp_loss = kp_loss / n_kp

        c_sag, c_ax = sag_kp.detach(), ax_kp.detach()
        if self.force_points or (self.training and cfg.teacher_forcing > 0):
            use = (torch.rand(b, device=sag.device) < cfg.teacher_forcing)
            if self.force_points:  # the attribution report: patches at the labelled points where known
                use = torch.ones_like(use)
            c_sag = torch.where(use[:, None, None, None] & m_sag[..., None], true_sag.nan_to_num(), c_sag)
            c_ax = torch.where(use[:, None, None, None] & m_ax[..., None], true_ax.nan_to_num(), c_ax)

        p_sag = cut_patches(sag.flatten(0, 1), c_sag.flatten(0, 1), cfg.patch_sag, cfg.patch_sag)  # [B*3, 5, 3, P, P]
        p_ax = cut_patches(axial.flatten(0, 1), c_ax.flatten(0, 1), cfg.patch_axial, cfg.patch_axial)  # [B*5, 2, ...]
        with torch.no_grad():
            p_sag = self.sr(p_sag.flatten(0, 1))
            p_ax = self.sr(p_ax.flatten(0, 1))
        size = (cfg.patch_input, cfg.patch_input)
        if p_sag.shape[-1] != cfg.patch_input:
            p_sag = F.interpolate(p_sag, size=size, mode="bilinear", align_corners=False)
        if p_ax.shape[-1] != cfg.patch_input:
            p_ax = F.interpolate(p_ax, size=size, mode="bilinear", align_corners=False)
        p_sag = p_sag.reshape(b, 3, 5, cfg.slices, *size)
        p_ax = p_ax.reshape(b, 5, 2, cfg.slices, *size)
        # Label-column order: spinal (T2), left / right foraminal (T1), left / right subarticular (axial).
        patches = torch.cat([p_sag[:, 0], p_sag[:, 1], p_sag[:, 2], p_ax[:, :, 0], p_ax[:, :, 1]], 1)
        feats = self.drop(self.cls_backbone(patches.flatten(0, 1)).unflatten(0, (b, schema.N_LABELS)))
        logits = torch.einsum("bjf,jfc->bjc", feats, self.head_w) + self.head_b
        out = {"logits": logits, "probs": logits.float().softmax(-1),
               "sag_kp": (sag_kp * s - 0.5).detach(), "axial_kp": (ax_kp * sa - 0.5).detach(), "kp_loss": kp_loss.detach()}
        if "labels" in batch:
            cls_loss = class_weighted_ce(logits, batch["labels"], batch["present"][:, self.column_crop])
            out["loss"] = cls_loss + cfg.kp_weight * kp_loss
            out["cls_loss"] = cls_loss.detach()
        return out


def _fill_missing_crops(probs: np.ndarray, entries: list, prior: np.ndarray) -> np.ndarray:
    return fill_missing(probs, np.stack([e["present"] for e in entries]), prior)


def predicted_points(net: "MultitaskModel", entry: dict) -> dict:
    """{crop name: predicted points [K, 2] in crop pixels} for one study's crops."""
    from ..preprocess.crops import CROP_NAMES

    batch = {k: torch.from_numpy(np.asarray(entry[k], np.float32))[None]
             for k in ("sag_image", "axial_image", "sag_points", "axial_points")}
    with torch.no_grad():
        res = net(batch)
    return dict(zip(CROP_NAMES, [*res["sag_kp"][0].numpy(), *res["axial_kp"][0].numpy()]))


def example_input(cfg: MultitaskConfig, crops: dict, seed: int = 0) -> dict:
    """One study's crops (sizes from the crops config), points inside them, every crop present."""
    rng = np.random.default_rng(seed)
    from ..preprocess.pipeline import preprocess_config

    geometry = preprocess_config(crops)
    s, a, c = int(geometry.sag_size), int(geometry.axial_size), geometry.channels

    def img(*shape):
        return rng.random(shape).astype(np.float16).astype(np.float32)

    return {"sag_image": img(1, 3, c, s, s), "axial_image": img(1, 5, c, a, a),
            "sag_points": np.round(rng.uniform(0, s - 1, (1, 3, 5, 2))).astype(np.float32),
            "axial_points": np.round(rng.uniform(0, a - 1, (1, 5, 2, 2))).astype(np.float32),
            "present": np.ones((1, 8), bool)}


@register_model("multitask", MultitaskConfig, inputs="crops",
                batch_keys=("sag_image", "axial_image", "sag_points", "axial_points", "present"),
                postprocess=_fill_missing_crops, points=predicted_points, mirror=mirror_crops,
                shift=shift_crops, example=example_input)
def build_multitask(cfg: MultitaskConfig) -> MultitaskModel:
    return MultitaskModel(cfg)
