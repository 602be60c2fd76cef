"""Dataclass configs: JSON load/save and `key=value` overrides from the command line."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    pass


@dataclasses.dataclass
class TrainConfig:
    """The training settings every torch model's config carries (the one training loop reads them)."""
    epochs: int = 8
    batch_size: int = 16
    lr: float = 2e-3  # AdamW's peak learning rate
    weight_decay: float = 1e-4  # AdamW's weight decay
    accum_steps: int = 1  # batches whose gradients add up to one optimiser step
    clip_grad: float = 2.0  # gradient norm clipped to this
    amp: bool = True  # fp16 autocast on CUDA; CPU always trains in fp32
    ema: float = 0.0  # decay of the weights' average (bias-corrected, from the end of the warm-up); 0 = off
    warmup_epochs: int = 0  # epochs of linear learning-rate warm-up before the cosine
    eval_every: int = 1  # score the held-out fold after every k-th epoch (and the last) for the curves
    num_workers: int = 0  # DataLoader worker processes (0: in the training process)
    fold_workers: int = 0  # folds trained at once in forked one-thread processes; 0: every fold at once on a
    # CPU of two or more cores (the tiny presets' stages: multitask 1.24x, sequence 1.05x faster than one fold
    # at a time on two threads), one at a time on CUDA or under torchrun
    seed: int = 0
    device: str = "auto"  # "cuda" (the GPU presets) fails clearly without a working GPU; "cpu" on purpose
    tta: bool = True  # held-out predictions as the kernel makes them: through the model's test-time views
    # (the mirrored patient, the shifted crops: models/views.py), averaged, so the ensemble is fitted on
    # what it will be applied to


def coerce(value: str, typ: Any, key: str):
    """A command-line string as the field type `typ` (bool, int, float, str, lists, optionals); a
    ConfigError naming `key` when it is not one."""
    origin = typing.get_origin(typ)
    if typ is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={value}: expected a boolean (true/false)")
    if typ in (int, float, str):
        try:
            return typ(value)
        except ValueError:
            raise ConfigError(f"{key}={value}: expected {typ.__name__}") from None
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(typ) or (str,)
        items = [v for v in value.split(",") if v != ""]
        out = [coerce(v, inner, key) for v in items]
        return tuple(out) if origin is tuple else out
    if origin is typing.Union or origin is getattr(types, "UnionType", None):  # Optional[X], X | None
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        return coerce(value, args[0], key)
    return json.loads(value)


def override(cfg: T, items: list[str]) -> T:
    """Apply `key=value` strings to a dataclass config, with types taken from its fields."""
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cfg))
            raise ConfigError(f"unknown config key {key!r} for {type(cfg).__name__}; known: {known}")
        changes[key] = coerce(value, hints[key], key)
    return dataclasses.replace(cfg, **changes)


def file_overrides(path: str) -> list[str]:
    """A JSON config file as key=value overrides (lists joined by commas), applied before the command line's."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds one JSON object")
    out = []
    for k, v in data.items():
        if isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        elif isinstance(v, bool):
            v = "true" if v else "false"
        out.append(f"{k}={v}")
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the comment written with it in its dataclass (and the classes it derives from):
    after it on its line (continued on comment lines below), or else on the comment lines just above
    it. What `--help` says of each option, written once, next to the field."""
    import inspect
    import io
    import tokenize

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        comments = {t.start[0]: t.string.lstrip("#").strip()
                    for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}

        def comment_only(n: int) -> bool:
            return 1 <= n <= len(lines) and lines[n - 1].strip().startswith("#")

        for f in dataclasses.fields(klass):
            at = next((i for i, line in enumerate(lines, 1) if line.startswith(f"    {f.name}:")), None)
            if at is None:
                continue
            if at in comments and not comment_only(at):
                text, n = [comments[at]], at + 1
                while comment_only(n) and len(lines[n - 1]) - len(lines[n - 1].lstrip()) > 4:
                    text.append(comments[n])
                    n += 1
            else:
                text, n = [], at - 1
                while comment_only(n):
                    text.insert(0, comments[n])
                    n -= 1
            if text:
                docs[f.name] = " ".join(text)
    return docs


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# Keys configs no longer have, ignored when an older config file (an exported weights folder) holds them.
RETIRED = {"patience"}  # early stopping on the scored fold, removed for honest CV


def from_dict(cls: type[T], data: dict, strict: bool = True) -> T:
    """The dataclass from a dict. strict=False keeps only the class's fields: a network's config read
    from a file that also holds its training settings (a run's or the weights' config.json)."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if (k not in RETIRED and strict) or k in names}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)} for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    fixed = {k: tuple(v) if typing.get_origin(hints[k]) is tuple else v for k, v in data.items()}
    return cls(**fixed)


def save(cfg, path: str | Path) -> None:
    from .files import write_json

    write_json(path, to_dict(cfg))


def load(cls: type[T], path: str | Path, strict: bool = True) -> T:
    path = Path(path)
    try:
        return from_dict(cls, json.loads(path.read_text()), strict)
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from None
