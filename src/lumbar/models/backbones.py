"""timm backbones for every model: one way to get their starting weights, and feature extractors cut
after the last stage they return.

Starting weights (`pretrained`, `checkpoint`), the same for every model:
- `checkpoint` a file (.pth, .bin, .safetensors): a timm state dict of that architecture;
- `checkpoint` a folder: `<folder>/<backbone>.pth` (or .safetensors), as `python -m lumbar backbones
  --out FOLDER` writes on a machine with internet, or a Hugging Face hub cache
  (`~/.cache/huggingface/hub`: `models--timm--<backbone>.<tag>/snapshots/*/model.safetensors`);
- no checkpoint: `pretrained=True` downloads timm's weights, `False` starts from random ones.
timm adapts the file to the network (one input channel: the first convolution's weights summed; a
feature extractor or a headless classifier: the unused keys left out).

Truncation: timm's EfficientNet feature extractor builds every block and returns some. The blocks
after the last returned one still hold parameters that never get a gradient, which DDP refuses (and
they cost compute for nothing), so they are removed.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class BackboneError(ValueError):
    """A checkpoint that is not there or does not fit; the message names the path."""


def checkpoint_file(backbone: str, checkpoint: str) -> Path:
    """The weights file for `backbone` that `checkpoint` (a file or a folder) points at."""
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise BackboneError(f"backbone_checkpoint {path}: no such file or folder")
    for suffix in WEIGHT_SUFFIXES:
        if (path / f"{backbone}{suffix}").is_file():
            return path / f"{backbone}{suffix}"
    base = backbone.split(".")[0]
    for pattern in (f"models--timm--{backbone}/snapshots/*/*", f"models--timm--{base}.*/snapshots/*/*",
                    f"hub/models--timm--{base}.*/snapshots/*/*"):
        hits = sorted(p for p in path.glob(pattern) if p.suffix in WEIGHT_SUFFIXES)
        if hits:
            return hits[0]
    raise BackboneError(f"backbone_checkpoint {path}: holds neither {backbone}.pth/.safetensors nor a Hugging Face "
                        f"cache entry models--timm--{base}.*; fill it with `python -m lumbar backbones --out {path}` "
                        "on a machine with internet")


def weight_args(backbone: str, pretrained: bool, checkpoint: str) -> dict:
    """timm.create_model arguments for the starting weights: a local file, the hub's, or none."""
    if checkpoint:
        return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(checkpoint_file(backbone, checkpoint))}}
    return {"pretrained": pretrained}


def truncate(extractor: nn.Module) -> nn.Module:
    """Removes the blocks after the last one whose output a timm feature extractor returns."""
    blocks = getattr(extractor, "blocks", None)
    names = extractor.feature_info.module_name()
    if isinstance(blocks, nn.Sequential) and names and names[-1].startswith("blocks."):
        keep = int(names[-1].split(".")[1]) + 1
        if keep < len(blocks):
            extractor.blocks = blocks[:keep]
    return extractor


def create_backbone(name: str, pretrained: bool = False, checkpoint: str = "",
                    out_indices: tuple[int, ...] | None = None, **kwargs) -> nn.Module:
    """A timm network: a feature extractor returning `out_indices` (truncated after the last), or with
    `out_indices=None` the network as timm builds it (e.g. num_classes=0 for pooled features)."""
    import timm

    args = weight_args(name, pretrained, checkpoint)
    if out_indices is None:
        return timm.create_model(name, **args, **kwargs)
    return truncate(timm.create_model(name, features_only=True, out_indices=tuple(out_indices), **args, **kwargs))


def save_backbones(names: list[str], out: str | Path) -> list[Path]:
    """Downloads timm's pretrained weights for each backbone (needs internet) into `out/<name>.pth`:
    the folder to carry to an offline machine and give as backbone_checkpoint."""
    import timm
    import torch

    from ..files import atomic_path

    out, written = Path(out), []
    out.mkdir(parents=True, exist_ok=True)
    for name in dict.fromkeys(names):
        net = timm.create_model(name, pretrained=True)
        with atomic_path(out / f"{name}.pth") as tmp:
            torch.save(net.state_dict(), tmp)
        written.append(out / f"{name}.pth")
    return written
