"""A timm-style factory: builders register under a name; `create_model(name, cfg)` builds one."""
from __future__ import annotations

from typing import Callable

_BUILDERS: dict[str, tuple[Callable, type]] = {}


def register_model(name: str, config_cls: type):
    def deco(fn):
        _BUILDERS[name] = (fn, config_cls)
        return fn
    return deco


def list_models() -> list[str]:
    _load_all()
    return sorted(_BUILDERS)


def model_config(name: str):
    """The default config of a registered model."""
    _load_all()
    return _BUILDERS[name][1]()


def create_model(name: str, cfg=None):
    _load_all()
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(_BUILDERS)}")
    fn, cls = _BUILDERS[name]
    return fn(cfg if cfg is not None else cls())


def for_inference(cfg):
    """A trained model's config with its initial-weights source switched off: the saved weights replace
    them, and an offline machine (Kaggle) must not try to download or read a checkpoint."""
    import dataclasses

    off = {k: v for k, v in (("pretrained", False), ("backbone_checkpoint", "")) if hasattr(cfg, k)}
    return dataclasses.replace(cfg, **off)


def _load_all() -> None:
    from . import multitask, sequence, superres  # noqa: F401  (register on import)
