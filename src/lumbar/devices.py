"""Which torch devices a process uses, proven to work before they are trusted.

`torch.cuda.is_available()` is not proof: a P100 under a torch build that dropped its architecture, or
a driver older than the build's CUDA, passes that check and then fails every kernel launch. Training
would then fail at its first batch and inference would quietly fall back to priors study after study.
So a device is used only after a smoke test: a small fp16 convolution on it, compared with the CPU.
"""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager

import torch

FAULT = "device"  # PredictConfig.fault / LUMBAR_FAULT value that makes every smoke test fail (tests)


class DeviceError(RuntimeError):
    """An explicitly requested device cannot be used; the message says why and what to do."""


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when not distributed."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def smoke_test(device: torch.device, fault: bool = False) -> str | None:
    """None when a fp16 convolution runs on `device` and agrees with the CPU; otherwise why not."""
    if fault:
        return f"{device}: smoke test failed (fault injected: LUMBAR_FAULT={FAULT})"
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 16, 16, generator=g)
        w = torch.randn(4, 3, 3, 3, generator=g)
        ref = torch.nn.functional.conv2d(x, w)
        got = torch.nn.functional.conv2d(x.to(device).half(), w.to(device).half()).float().cpu()
        if not torch.allclose(got, ref, atol=0.1, rtol=0.02):
            return f"{device}: smoke test gave wrong numbers (max error {(got - ref).abs().max():.3g})"
    except Exception as e:  # any failure of the device is a reason not to use it
        return f"{device}: smoke test failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return None


def gpu_hardware() -> bool:
    """Whether this machine looks like it has an NVIDIA GPU, whatever torch says."""
    return bool(shutil.which("nvidia-smi")) or os.path.exists("/dev/nvidia0")


@contextmanager
def one_cpu_thread(device: torch.device):
    """torch on one CPU thread while the block runs (nothing changes on a GPU). Stage one's level network
    trains and predicts this way: with torch 2.14 under today's image's libraries, two threads and one
    give different networks and different points (the convolutions' reductions split by thread), so the
    folds fitted in worker processes (one thread each) differed from the same folds fitted serially; one
    thread everywhere makes its artefacts and points independent of the machine's core count."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_cores() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cuda_count() -> int:
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def working_cuda(fault: bool = False) -> tuple[list[torch.device], list[str]]:
    """(the CUDA devices that pass the smoke test, why each other one does not). With `fault`, a
    machine without CUDA reports one failing device, so the fallback can be tested anywhere."""
    n = cuda_count()
    if fault:
        return [], [smoke_test(torch.device("cuda", i), fault=True) for i in range(max(n, 1))]
    good, bad = [], []
    for i in range(n):
        d = torch.device("cuda", i)
        why = smoke_test(d)
        (bad.append(why) if why else good.append(d))
    return good, bad


def _cpu_reason(bad: list[str]) -> str:
    if bad:
        return "; ".join(bad)
    if gpu_hardware():
        return (f"a GPU is present but torch {torch.__version__} (CUDA build {torch.version.cuda}) cannot use it "
                "(is the driver older than the build?)")
    return "no CUDA device"


def pick_device(name: str = "auto", fault: bool = False) -> torch.device:
    """The device for training (one per process: torchrun's LOCAL_RANK picks the GPU).

    "auto": the GPU when it passes its smoke test, else the CPU with a loud warning when a GPU seems
    present. "cuda"/"cuda:N": that GPU or a DeviceError saying why and how to train on the CPU
    explicitly (device=cpu). "cpu" is taken as given."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        if cuda_count() and not fault:
            d = torch.device("cuda", dist_info()[2])
            why = smoke_test(d)
            if why is None:
                return d
        else:
            why = smoke_test(torch.device("cuda", 0), fault=True) if fault else None
        if why or gpu_hardware():
            print(f"WARNING: device=auto falls back to the CPU: {why or _cpu_reason([])}. Training on the CPU "
                  "takes days with the GPU presets; fix CUDA or say device=cpu to mean it.", file=sys.stderr,
                  flush=True)
        return torch.device("cpu")
    d = torch.device(name)
    if d.type == "cuda":
        if d.index is None:
            d = torch.device("cuda", dist_info()[2])
        why = smoke_test(d, fault) if cuda_count() > (d.index or 0) or fault else _cpu_reason([])
        if why:
            raise DeviceError(f"device={name} cannot be used: {why}. Fix CUDA, or pass device=cpu to train on the "
                              "CPU on purpose (days with the GPU presets).")
    return d


def inference_devices(name: str = "auto", fault: bool = False) -> tuple[list[torch.device], str]:
    """The devices inference spreads its models' folds over, and one line saying what was chosen and
    why: every GPU that passes its smoke test (both of Kaggle's T4s), else the CPU. Never raises."""
    if name == "cpu":
        return [torch.device("cpu")], "device=cpu: predicting on the CPU"
    good, bad = working_cuda(fault)
    if name not in ("auto", "cuda"):  # one named device
        want = torch.device(name)
        good = [d for d in good if d == want]
    if good:
        line = f"predicting on {', '.join(str(d) for d in good)} (smoke test passed)"
        return good, line + (f"; not used: {'; '.join(bad)}" if bad else "")
    return [torch.device("cpu")], f"predicting on the CPU: {_cpu_reason(bad)}"
