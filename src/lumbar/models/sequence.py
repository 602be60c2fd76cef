"""Model two: whole series, slice by slice, then a transformer over every frame of the study.

Shapes for a batch of B studies (tiny config, tokens="patches": N = 10 frames of 128², 3 series types):
  frames [B, 3, N, 128, 128] -> every frame resized to 64² through one timm feature extractor (shared,
  all frames of all series batched, in_chans=1), stride-8 map [B*3N, C, 8, 8] -> the frame's series
  type's 1x1-conv heatmap head, 5 channels (T2: the canal at each level; T1: the foramen at each level;
  axial: the left and right recess) -> soft-argmax -> 5 points per frame (L1 loss where labelled)
  -> a 24-pixel patch around each point, cut from the 128² frame (grid_sample), resized to 32² -> a
  second timm CNN -> linear to d_model -> [B, 3N x 5, d_model] (axial frames' 3 spare channels masked)
  + embeddings of the channel, the series type and the slice position (its place along the normal)
  -> a transformer encoder over those tokens and 25 query tokens, one per label column (its condition's
     embedding + its level's channel embedding), missing series masked out of attention -> a shared
     head (+ a per-column bias) -> each column's 3 logits -> [B, 25, 3]. readout="levels" (5 queries,
     each feeding its level's 5 columns) was the design before: on the real-profile 200 + 40 folder
     (tiny config, 5 folds) the columns' OOF is 0.6076 against 0.6387, paired -0.031 [-0.061, +0.000]
     (a left foramen's query can attend to the left frames alone).
Loss: class-weighted cross entropy (1/2/4) over all label columns, masked where a label is missing,
+ kp_weight x the points' L1. Training cuts half the studies' patches at the labelled points
(teacher forcing). tokens="frame" / "cells" are the earlier variants without points (one token per
frame from its pooled 4 x 4 map / per cell): on 200 synthetic studies they do not beat the prior.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import schema
from ..preprocess.frames import FramesConfig, N_CHANNELS
from .backbones import create_backbone
from .losses import class_weighted_ce
from .multitask import cut_patches, soft_argmax
from ..preprocess.mirror import mirror_frames
from .registry import register_model


@dataclass
class SequenceConfig:
    """The network and the frames it reads (its training settings: train/sequence.py's
    SequenceTraining). Defaults are the tiny CPU model; configs/gpu/sequence.json is the real-data one."""
    backbone: str = "test_efficientnet"  # timm model name of the frame and patch CNNs
    pretrained: bool = False  # True downloads timm's weights (needs internet)
    backbone_checkpoint: str = ""  # or a local file / folder of them (models/backbones.py), offline
    n_frames: int = 6  # frames per series type (axial: n_frames/5 per level)
    frame_size: int = 128  # a frame's side in pixels
    pick: str = "most_levels"  # which series of a type when a study has several: most_levels, or merge
    axial_frames: str = "levels"  # n_frames/5 per level at the stage-one axial slices; "even": one series
    sagittal_frames: str = "even"  # "placed": the T1 frames around stage one's foraminal slices, half per
    # side (T2 stays spread); "snapped": spread, the frame nearest each foraminal slice moved onto it;
    # "even": spread over the series
    d_model: int = 128  # the transformer's width
    layers: int = 2  # transformer encoder layers
    heads: int = 4  # attention heads
    position_bins: int = 16  # bins of a frame's place along its series' normal (its embedding)
    grid: int = 4  # each frame's feature map pooled to grid x grid before the projection
    tokens: str = "patches"  # per frame, 5 points from heatmaps, a patch around each through a second CNN;
    # "frame": one flattened token per frame; "cells": one token per grid cell
    kp_size: int = 64  # "patches": the heatmap CNN sees frames resized to this
    patch_side: int = 24  # "patches": patch side in frame pixels
    patch_input: int = 32  # "patches": patch CNN input side
    kp_weight: float = 2.0  # "patches": weight of the L1 loss of the points where labelled
    teacher_forcing: float = 0.5  # "patches": training studies whose patches sit on the labelled points
    readout: str = "columns"  # "levels": one query token per level feeds its 5 columns; "columns": one per label
    # column (condition x level: a left foramen's query can attend to the left frames alone); "cls": one for all
    dropout: float = 0.1


class SequenceModel(nn.Module):
    def __init__(self, cfg: SequenceConfig):
        super().__init__()
        import timm

        self.cfg = cfg
        self.force_points = False  # patches at the labelled points, not the predicted ones (attribution)
        # Feature maps, not pooled vectors: where a narrowing sits on the frame says which level it is,
        # so each frame keeps a grid x grid layout of its features.
        probe = timm.create_model(cfg.backbone, pretrained=False, features_only=True, in_chans=1)
        reductions = probe.feature_info.reduction()
        stride = 8 if cfg.tokens == "patches" else 16
        level = reductions.index(stride) if stride in reductions else len(reductions) - 1
        del probe
        self.encoder = create_backbone(cfg.backbone, cfg.pretrained, cfg.backbone_checkpoint, in_chans=1,
                                       out_indices=(level,))
        ch = self.encoder.feature_info.channels()[-1]
        if cfg.tokens not in ("cells", "frame", "patches"):
            raise ValueError(f"tokens must be 'cells', 'frame' or 'patches', not {cfg.tokens!r}")
        if cfg.tokens == "patches":
            # Severity sits in a few pixels at a known place: heatmaps (one head per series type, 5
            # channels: T2 the canal per level, T1 the foramen per level, axial the left/right recess)
            # find the places, a second CNN reads a full-resolution patch at each, one token per patch.
            self.heat = nn.ModuleList([nn.Conv2d(ch, N_CHANNELS, 1) for _ in schema.SERIES_TYPES])
            self.patch_encoder = create_backbone(cfg.backbone, cfg.pretrained, cfg.backbone_checkpoint, num_classes=0,
                                                 in_chans=1)
            self.proj = nn.Sequential(nn.Linear(self.patch_encoder.num_features, cfg.d_model), nn.GELU())
            self.chan_emb = nn.Embedding(N_CHANNELS, cfg.d_model)
        elif cfg.tokens == "cells":
            self.proj = nn.Linear(ch, cfg.d_model)
            self.cell_emb = nn.Parameter(torch.randn(1, cfg.grid * cfg.grid, cfg.d_model) * 0.02)
        else:
            self.proj = nn.Sequential(nn.Flatten(), nn.Linear(ch * cfg.grid * cfg.grid, cfg.d_model), nn.GELU())
        self.type_emb = nn.Embedding(len(schema.SERIES_TYPES), cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.position_bins, cfg.d_model)
        if cfg.readout not in ("levels", "columns", "cls"):
            raise ValueError(f"readout must be 'levels', 'columns' or 'cls', not {cfg.readout!r}")
        self.n_query = {"levels": len(schema.LEVELS), "columns": schema.N_LABELS, "cls": 1}[cfg.readout]
        self.cls = nn.Parameter(torch.randn(1, self.n_query, cfg.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, dim_feedforward=2 * cfg.d_model,
                                           dropout=cfg.dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        per_query = schema.N_LABELS * schema.N_CLASSES // self.n_query
        self.head = nn.Linear(cfg.d_model, per_query)  # shared by the level queries, which differ by embedding
        self.level_bias = nn.Parameter(torch.zeros(len(schema.LEVELS), len(schema.CONDITIONS), 3))
        if cfg.readout == "columns":  # each query knows its condition; its level through the channel embedding
            self.cond_emb = nn.Embedding(len(schema.CONDITIONS), cfg.d_model)

    @torch.no_grad()
    def init_prior(self, prior) -> None:
        """Start from the fold's prior: the head's bias is its log, so training learns departures from it."""
        logp = torch.log(torch.as_tensor(prior, dtype=torch.float32))  # [25, 3], condition-major
        if self.n_query > 1:  # the shared head's bias would add the same random offset to every query
            self.head.bias.zero_()
            self.level_bias.copy_(logp.view(len(schema.CONDITIONS), len(schema.LEVELS), 3).permute(1, 0, 2))
        else:
            self.head.bias.copy_(logp.flatten())
        self.head.weight.mul_(0.1)

    def forward(self, batch: dict) -> dict:
        frames = batch["frames"].float()  # [B, T, N, S, S]
        b, t, n, s, _ = frames.shape
        types = torch.arange(t, device=frames.device).repeat_interleave(n)
        bins = (batch["positions"].clamp(0, 1) * (self.cfg.position_bins - 1)).round().long().view(b, t * n)
        frame_emb = self.type_emb(types)[None] + self.pos_emb(bins)  # [B, T*N, d]
        pad = ~batch["mask"].bool().repeat_interleave(n, dim=1)  # True = ignore (missing series)
        kp_loss = None
        if self.cfg.tokens == "patches":
            tokens, pad, kp_loss = self._patch_tokens(frames, batch.get("points"), types, frame_emb, pad)
        elif self.cfg.tokens == "cells":
            fmap = F.adaptive_avg_pool2d(self.encoder(frames.reshape(b * t * n, 1, s, s))[-1], self.cfg.grid)
            cells = self.cfg.grid * self.cfg.grid
            tokens = self.proj(fmap.flatten(2).transpose(1, 2)).view(b, t * n, cells, -1)
            tokens = (tokens + self.cell_emb[:, None] + frame_emb[:, :, None]).flatten(1, 2)
            pad = pad.repeat_interleave(cells, dim=1)
        else:
            fmap = F.adaptive_avg_pool2d(self.encoder(frames.reshape(b * t * n, 1, s, s))[-1], self.cfg.grid)
            tokens = self.proj(fmap).view(b, t * n, -1) + frame_emb
        q = self.n_query
        queries = self.cls.expand(b, -1, -1)
        if self.cfg.tokens == "patches" and q == N_CHANNELS:  # level k's query shares channel k's embedding
            queries = queries + self.chan_emb.weight[None]
        if self.cfg.readout == "columns":  # column (condition c, level l) = c * 5 + l: condition-major
            queries = queries + self.cond_emb.weight.repeat_interleave(len(schema.LEVELS), 0)[None]
            if self.cfg.tokens == "patches":
                queries = queries + self.chan_emb.weight.repeat(len(schema.CONDITIONS), 1)[None]
        x = torch.cat([queries, tokens], 1)
        pad = torch.cat([torch.zeros(b, q, dtype=torch.bool, device=pad.device), pad], 1)
        x = self.transformer(x, src_key_padding_mask=pad)
        out_q = self.head(self.norm(x[:, :q]))  # [B, q, 75 / q]
        if self.cfg.readout == "columns":  # [B, 25, 3] already in label-column order
            logits = out_q + self.level_bias.permute(1, 0, 2).reshape(schema.N_LABELS, schema.N_CLASSES)
        elif q > 1:  # [B, level, condition, 3] -> label-column order (condition-major)
            out_q = out_q.view(b, q, len(schema.CONDITIONS), 3) + self.level_bias
            logits = out_q.permute(0, 2, 1, 3).reshape(b, schema.N_LABELS, schema.N_CLASSES)
        else:
            logits = out_q.view(b, schema.N_LABELS, schema.N_CLASSES)
        out = {"logits": logits, "probs": logits.float().softmax(-1)}
        if "labels" in batch:
            out["loss"] = class_weighted_ce(logits, batch["labels"])
            if kp_loss is not None:
                out["kp_loss"] = kp_loss.detach()
                out["loss"] = out["loss"] + self.cfg.kp_weight * kp_loss
        return out

    def _patch_tokens(self, frames, points, types, frame_emb, pad):
        """tokens [B, T*N*5, d], their padding mask, and the points' L1 loss (None without labels)."""
        cfg = self.cfg
        b, t, n, s, _ = frames.shape
        x = frames.reshape(b * t * n, 1, s, s)
        small = F.interpolate(x, size=(cfg.kp_size, cfg.kp_size), mode="bilinear", align_corners=False) \
            if s != cfg.kp_size else x
        fmap = self.encoder(small)[-1]
        heat = torch.stack([h(fmap) for h in self.heat], 1)  # [BTN, T, 5, h, w]
        heat = heat[torch.arange(b * t * n, device=x.device), types.repeat(b)]  # each frame its type's head
        pred = soft_argmax(heat.float())  # [BTN, 5, 2] normalised
        kp_loss, centres = None, pred.detach()
        if points is not None:
            true = ((points.float() + 0.5) / s).reshape(pred.shape)
            ok = torch.isfinite(true).all(-1)
            # zero but in the graph without labelled points: DDP needs a gradient for every parameter
            kp_loss = (pred - true.nan_to_num()).abs().sum(-1)[ok].mean() if ok.any() else 0.0 * pred.sum()
            if self.force_points or (self.training and cfg.teacher_forcing > 0):
                use = (torch.rand(b, device=x.device) < cfg.teacher_forcing).repeat_interleave(t * n)
                if self.force_points:  # the attribution report: patches at the labelled points where known
                    use = torch.ones_like(use)
                centres = torch.where(use[:, None, None] & ok[..., None], true.nan_to_num(), centres)
        # Axial frames have two points (left, right recess): their other three channels are neither
        # encoded nor attended to.
        used = torch.ones(t, N_CHANNELS, dtype=torch.bool, device=x.device)
        used[schema.SERIES_TYPES.index(schema.AXIAL), 2:] = False
        used = used[None, :, None].expand(b, t, n, N_CHANNELS).reshape(-1)
        patches = cut_patches(x, centres, cfg.patch_side, cfg.patch_input).flatten(0, 1)  # [BTN*5, 1, P, P]
        feats = self.proj(self.patch_encoder(patches[used]))
        tokens = feats.new_zeros(used.shape[0], feats.shape[-1])
        tokens[used] = feats
        tokens = tokens.view(b * t * n, N_CHANNELS, -1) + self.chan_emb.weight[None]
        tokens = (tokens.view(b, t * n, N_CHANNELS, -1) + frame_emb[:, :, None]).flatten(1, 2)
        pad = (pad.view(b, t * n)[..., None] | ~used.view(b, t * n, N_CHANNELS)).flatten(1)
        return tokens, pad, kp_loss


def example_input(cfg: SequenceConfig, crops: dict, seed: int = 0) -> dict:
    """One study's frames of the config's count and size, every series present."""
    rng = np.random.default_rng(seed)
    n, s = cfg.n_frames, cfg.frame_size
    return {"frames": rng.random((1, 3, n, s, s)).astype(np.float16).astype(np.float32),
            "positions": np.sort(rng.random((1, 3, n)), -1).astype(np.float16).astype(np.float32),
            "mask": np.ones((1, 3), bool)}


@register_model("sequence", SequenceConfig, inputs="frames", batch_keys=("frames", "mask", "positions"),
                input_config=FramesConfig.of_model, usable=lambda entry: bool(entry["mask"].any()),
                mirror=mirror_frames, example=example_input)
def build_sequence(cfg: SequenceConfig) -> SequenceModel:
    return SequenceModel(cfg)
