"""A preset folder (configs/tiny, configs/gpu, one of your own): read, checked, and matched to the machine
before `make train` starts its first stage, so a typo or a broken CUDA costs seconds, not the hour
stage one takes."""
from __future__ import annotations

from pathlib import Path

from .. import config as cfgmod
from ..devices import DeviceError, pick_device, working_cuda
from .runner import CONFIGS


def read_preset(folder: str | Path) -> dict[str, object]:
    """Stage -> its config from `folder/<stage>.json` (every file checked against the stage's dataclass)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such preset folder (configs/tiny, configs/gpu, or a folder of <stage>.json)")
    out = {}
    for path in sorted(folder.glob("*.json")):
        if path.stem not in CONFIGS:
            raise ValueError(f"{path}: no stage named {path.stem!r}; stages: {', '.join(sorted(CONFIGS))}")
        try:
            out[path.stem] = cfgmod.override(CONFIGS[path.stem](), cfgmod.file_overrides(str(path)))
        except cfgmod.ConfigError as e:
            raise ValueError(f"{path}: {e}") from None
    return out


def check_preset(folder: str | Path, device: str = "") -> list[str]:
    """Lines saying which preset trains on which device; a ValueError/DeviceError when it cannot run here.

    A stage whose config asks for CUDA (the GPU presets: device=cuda) needs a GPU that passes the smoke
    test, unless `device` (make train DEVICE=cpu) overrides it on purpose."""
    folder = Path(folder)
    configs = read_preset(folder)
    devices = {s: (device or getattr(c, "device")) for s, c in configs.items() if hasattr(c, "device")}
    lines = [f"preset {folder.name} ({folder}/: {', '.join(configs) or 'no files: every stage at its defaults'})"]
    cuda = [s for s, d in devices.items() if d.startswith("cuda")]
    if cuda:
        try:
            d = pick_device("cuda")
        except DeviceError as e:
            raise DeviceError(f"{e} With make: make train PRESET={folder.name} DEVICE=cpu") from None
        return lines + [f"{d} passed its smoke test: {', '.join(cuda)} train on it"]
    good, bad = working_cuda()
    if good and folder.name != "gpu":
        lines.append(f"this machine has a working GPU ({good[0]}), and this preset trains the small CPU models of the "
                     "tests and demo; the real-data configs: make train PRESET=gpu")
    elif devices and all(d == "cpu" for d in devices.values()):
        lines.append("device=cpu: the torch stages train on the CPU on purpose")
    elif not good:
        lines.append("no working GPU" + (f" ({'; '.join(bad)})" if bad else "") + ": the torch stages train on the CPU")
    return lines
