"""Model two: whole series, slice by slice, then a transformer over every frame of the study.

Shapes for a batch of B studies (tiny config: N = 10 frames of 64², 3 series types):
  frames [B, 3, N, S, S] -> each frame through one timm feature extractor (shared weights, all frames
  of all series batched together, in_chans=1; its stride-16 map pooled to 4 x 4, so where a narrowing
  sits on the frame survives) -> flattened, linear to d_model -> [B, 3N, d_model]
  + embedding of the series type + embedding of the slice position (its place along the normal, binned)
  -> a transformer encoder over the 3N tokens and 5 level query tokens, missing series masked out of
     attention -> each level's query -> a shared head (+ a per-level bias) -> its 5 columns -> [B, 25, 3].
Loss: class-weighted cross entropy (1/2/4) over all label columns, masked where a label is missing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import schema
from ..train.loop import TrainConfig
from .registry import register_model


@dataclass
class SequenceConfig(TrainConfig):
    # Tiny CPU config (tests, demo); configs/sequence_gpu.json is the real-data one.
    epochs: int = 20
    batch_size: int = 8
    patience: int = 6
    lr: float = 1e-3
    backbone: str = "test_efficientnet"
    pretrained: bool = False
    n_frames: int = 10
    frame_size: int = 64
    pick: str = "most_levels"
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    position_bins: int = 16
    grid: int = 4  # each frame's feature map pooled to grid x grid before the projection
    tokens: str = "frame"  # "frame": one flattened token per frame; "cells": one token per grid cell (2x the time)
    readout: str = "levels"  # "levels": one query token per level feeds its 5 columns; "cls": one token for all
    dropout: float = 0.1
    augment: bool = True
    cache_dir: str = "cache"
    only_fold: int = -1


class SequenceModel(nn.Module):
    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        import timm

        self.cfg = cfg
        # Feature maps, not pooled vectors: where a narrowing sits on the frame says which level it is,
        # so each frame keeps a grid x grid layout of its features.
        probe = timm.create_model(cfg.backbone, pretrained=False, features_only=True, in_chans=1)
        reductions = probe.feature_info.reduction()
        level = reductions.index(16) if 16 in reductions else len(reductions) - 1
        del probe
        self.encoder = timm.create_model(cfg.backbone, pretrained=cfg.pretrained, features_only=True, in_chans=1,
                                         out_indices=(level,))
        ch = self.encoder.feature_info.channels()[-1]
        if cfg.tokens not in ("cells", "frame"):
            raise ValueError(f"tokens must be 'cells' or 'frame', not {cfg.tokens!r}")
        if cfg.tokens == "cells":
            self.proj = nn.Linear(ch, cfg.d_model)
            self.cell_emb = nn.Parameter(torch.randn(1, cfg.grid * cfg.grid, cfg.d_model) * 0.02)
        else:
            self.proj = nn.Sequential(nn.Flatten(), nn.Linear(ch * cfg.grid * cfg.grid, cfg.d_model), nn.GELU())
        self.type_emb = nn.Embedding(len(schema.SERIES_TYPES), cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.position_bins, cfg.d_model)
        if cfg.readout not in ("levels", "cls"):
            raise ValueError(f"readout must be 'levels' or 'cls', not {cfg.readout!r}")
        self.n_query = len(schema.LEVELS) if cfg.readout == "levels" else 1
        self.cls = nn.Parameter(torch.randn(1, self.n_query, cfg.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, dim_feedforward=2 * cfg.d_model,
                                           dropout=cfg.dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        per_query = schema.N_LABELS * schema.N_CLASSES // self.n_query
        self.head = nn.Linear(cfg.d_model, per_query)  # shared by the level queries, which differ by embedding
        self.level_bias = nn.Parameter(torch.zeros(len(schema.LEVELS), len(schema.CONDITIONS), 3))
        self.register_buffer("class_w", torch.tensor(schema.SEVERITY_WEIGHTS))

    @torch.no_grad()
    def init_prior(self, prior) -> None:
        """Start from the fold's prior: the head's bias is its log, so training learns departures from it."""
        logp = torch.log(torch.as_tensor(prior, dtype=torch.float32))  # [25, 3], condition-major
        if self.n_query > 1:
            self.level_bias.copy_(logp.view(len(schema.CONDITIONS), len(schema.LEVELS), 3).permute(1, 0, 2))
        else:
            self.head.bias.copy_(logp.flatten())
        self.head.weight.mul_(0.1)

    def forward(self, batch: dict) -> dict:
        frames = batch["frames"].float()  # [B, T, N, S, S]
        b, t, n, s, _ = frames.shape
        fmap = F.adaptive_avg_pool2d(self.encoder(frames.reshape(b * t * n, 1, s, s))[-1], self.cfg.grid)
        types = torch.arange(t, device=frames.device).repeat_interleave(n)
        bins = (batch["positions"].clamp(0, 1) * (self.cfg.position_bins - 1)).round().long().view(b, t * n)
        frame_emb = self.type_emb(types)[None] + self.pos_emb(bins)  # [B, T*N, d]
        pad = ~batch["mask"].bool().repeat_interleave(n, dim=1)  # True = ignore (missing series)
        if self.cfg.tokens == "cells":
            cells = self.cfg.grid * self.cfg.grid
            tokens = self.proj(fmap.flatten(2).transpose(1, 2)).view(b, t * n, cells, -1)
            tokens = (tokens + self.cell_emb[:, None] + frame_emb[:, :, None]).flatten(1, 2)
            pad = pad.repeat_interleave(cells, dim=1)
        else:
            tokens = self.proj(fmap).view(b, t * n, -1) + frame_emb
        q = self.n_query
        x = torch.cat([self.cls.expand(b, -1, -1), tokens], 1)
        pad = torch.cat([torch.zeros(b, q, dtype=torch.bool, device=pad.device), pad], 1)
        x = self.transformer(x, src_key_padding_mask=pad)
        out_q = self.head(self.norm(x[:, :q]))  # [B, q, 75 / q]
        if q > 1:  # [B, level, condition, 3] -> label-column order (condition-major)
            out_q = out_q.view(b, q, len(schema.CONDITIONS), 3) + self.level_bias
            logits = out_q.permute(0, 2, 1, 3).reshape(b, schema.N_LABELS, schema.N_CLASSES)
        else:
            logits = out_q.view(b, schema.N_LABELS, schema.N_CLASSES)
        out = {"logits": logits, "probs": logits.float().softmax(-1)}
        if "labels" in batch:
            y = batch["labels"]
            w = self.class_w[y.clamp(min=0)] * (y >= 0)
            ce = F.cross_entropy(logits.float().flatten(0, 1), y.clamp(min=0).flatten(), reduction="none").view(b, -1)
            out["loss"] = (ce * w).sum() / w.sum().clamp(min=1.0)
        return out


@register_model("sequence", SequenceConfig)
def build_sequence(cfg: SequenceConfig) -> SequenceModel:
    return SequenceModel(cfg)
