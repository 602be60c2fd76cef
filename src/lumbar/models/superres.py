"""A small ESPCN-style super-resolution network, trained self-supervised on the data's own crops:
downscale, then learn to restore. It predicts a residual over bicubic upsampling, so it starts as
bicubic and can only learn to do better."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


@dataclass
class SuperResConfig:
    """The network (its training settings: train/superres.py's SuperResTraining)."""
    scale: int = 2  # upscaling factor (the multitask model's sr_scale)
    channels: int = 16  # feature channels of the ESPCN's convolutions


class ESPCN(nn.Module):
    """Single-channel x`scale` super-resolution; multi-channel inputs are processed channel by channel."""

    def __init__(self, scale: int = 2, channels: int = 48):
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 5, padding=2), nn.Tanh(),
            nn.Conv2d(channels, channels // 2, 3, padding=1), nn.Tanh(),
            nn.Conv2d(channels // 2, scale * scale, 3, padding=1),
        )
        self.shuffle = nn.PixelShuffle(scale)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b * c, 1, h, w)
        up = F.interpolate(flat, scale_factor=self.scale, mode="bicubic", align_corners=False)
        out = up + self.shuffle(self.body(flat))
        return out.reshape(b, c, h * self.scale, w * self.scale)


class SuperResTask(nn.Module):
    """Training wrapper: a batch of high-resolution patches `hr` [B, 1, P, P] is downscaled and restored."""

    def __init__(self, cfg: SuperResConfig):
        super().__init__()
        self.net = ESPCN(cfg.scale, cfg.channels)

    def forward(self, batch: dict) -> dict:
        hr = batch["hr"]
        sr = self.net(downscale(hr, self.net.scale))
        return {"loss": F.mse_loss(sr, hr), "sr": sr}  # PSNR is an MSE measure


@register_model("superres", SuperResConfig)
def build_superres(cfg: SuperResConfig) -> SuperResTask:
    return SuperResTask(cfg)


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    return F.avg_pool2d(hr, scale)


def psnr(pred: torch.Tensor, target: torch.Tensor, peak: float = 1.0) -> float:
    mse = F.mse_loss(pred.clamp(0, peak), target).item()
    return float(10 * torch.log10(torch.tensor(peak ** 2 / max(mse, 1e-12))))
