"""A timm-style factory over model specs: a model registers once, with everything the engine, export,
demo, bench and reports need to know about it, and nothing else names it.

A spec says how to build the network from its config, which prepared input it reads (`inputs`: "crops",
the multitask model's stage-one crops, or "frames", the sequence model's per-series frames; None for a
network that is part of another model, like super-resolution), which fields of that input make a batch,
and what to do with its probabilities afterwards. Its trainer registers under the same name in
`train/` (training settings and datasets live there).

Built-in models register when `lumbar.models` is imported (its `__init__` imports them); this module
imports none of them, so the registry and its members form no import circle.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: type  # the config dataclass (architecture and training settings)
    build: Callable[[Any], Any]  # config -> torch module whose forward(batch) returns a dict
    inputs: str | None = None  # "crops" | "frames": what it predicts from; None: not a predictor
    batch_keys: tuple[str, ...] = ()  # fields of its input stacked into a batch
    input_config: Callable[[Any], Any] | None = None  # config -> the input's settings (FramesConfig, ...)
    usable: Callable[[dict], bool] | None = None  # whether a study's input can be predicted at all
    # (probs [B, 25, 3], the batch's input entries, prior [25, 3]) -> probs: after the fold average
    postprocess: Callable[[np.ndarray, list, np.ndarray], np.ndarray] | None = None
    # (network, one input entry) -> {crop name: points [K, 2]}: predicted points for the example figures
    points: Callable[[Any, dict], dict] | None = None
    # one input entry -> the entry of the patient mirrored left-right (preprocess/mirror.py): the
    # test-time mirror, and the training augmentation's, when the model declares one
    mirror: Callable[[dict], dict] | None = None
    # (input entry, dx, dy) -> the entry with its crops' centres moved (dx, dy) pixels: the test-time
    # shifts (models/views.py), as far as the model config's `tta_shift` says
    shift: Callable[[dict, int, int], dict] | None = None
    # (model config, the weights' crops config dict, seed) -> one study's random input batch of the shapes
    # the network reads, values representable in float16: each fold's probe at export (infer/probes.py)
    example: Callable[[Any, dict, int], dict] | None = None


_SPECS: dict[str, ModelSpec] = {}


def register_model(name: str, config_cls: type, **spec: Any):
    """Decorator on a builder: registers ModelSpec(name, config_cls, builder, **spec)."""
    def deco(fn):
        register_spec(ModelSpec(name, config_cls, fn, **spec))
        return fn
    return deco


def register_spec(spec: ModelSpec) -> ModelSpec:
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _SPECS.pop(name, None)


def get_spec(name: str) -> ModelSpec:
    if name not in _SPECS:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(_SPECS)}")
    return _SPECS[name]


def list_models() -> list[str]:
    return sorted(_SPECS)


def predictors() -> list[ModelSpec]:
    """The specs that predict test studies (in registration order: the order of the ensemble's models)."""
    return [s for s in _SPECS.values() if s.inputs is not None]


def model_config(name: str):
    """The default config of a registered model."""
    return get_spec(name).config()


def create_model(name: str, cfg=None):
    spec = get_spec(name)
    return spec.build(cfg if cfg is not None else spec.config())


def for_inference(cfg):
    """A trained model's config with its initial-weights source switched off: the saved weights replace
    them, and an offline machine (Kaggle) must not try to download or read a checkpoint."""
    off = {k: v for k, v in (("pretrained", False), ("backbone_checkpoint", "")) if hasattr(cfg, k)}
    return dataclasses.replace(cfg, **off)


def model_inputs(configs: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """model -> (its input kind, the input's settings from its config): what infer/inputs.StudyInputs
    prepares for each model (the engine's workers, the input probe at export and at load)."""
    out = {}
    for name, cfg in configs.items():
        spec = get_spec(name)
        out[name] = (spec.inputs, spec.input_config(cfg) if spec.input_config else None)
    return out
