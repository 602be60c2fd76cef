"""The one training loop for every torch model.

A model takes a batch dict and returns a dict holding `loss` (and, in eval mode, `probs` [B, 25, 3]).
The loop does the rest: AMP (fp16 autocast + GradScaler on CUDA, fp32 on CPU) with gradients unscaled
before clipping, gradient accumulation, optional EMA of the weights, a checkpoint per epoch written
atomically (a killed run resumes from it), DDP when launched by torchrun (gloo on CPU, nccl on CUDA),
tqdm bars, a CSV log and a PNG of the curves.

No selection on the scored fold: the schedule is fixed (the config's epochs, chosen once by
cross-validation and frozen in the config), and the weights that predict the validation fold are the
last epoch's (or their EMA). The validation fold is scored each epoch for the curves only: nothing
the loop does depends on it, so the OOF predictions are what a fresh test set would get.
"""
from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import TrainConfig  # noqa: F401  (the stages' import point)
from ..data.cache import config_hash
from ..files import atomic_path, write_figure
from ..progress import bar
from ..devices import dist_info, pick_device  # noqa: F401




# --- distributed ---------------------------------------------------------------------------------

def setup_distributed() -> bool:
    rank, world, local = dist_info()
    if world <= 1:
        return False
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return True


def is_main() -> bool:
    return dist_info()[0] == 0


# --- checkpoints ---------------------------------------------------------------------------------

def atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class EMA:
    """Exponential moving average of a model's floating-point state, bias-corrected and started
    late: for the first `start` updates it follows the weights (warm-up weights are not worth
    averaging); after that, update n moves it by (1 - d) / (1 - d^n) toward the weights, which makes
    it exactly the normalised average sum_i (1 - d) d^(n-i) w_i / (1 - d^n) of the weights it has
    seen since, with no share left to the untrained network (an EMA started from the initial weights
    keeps d^n of them: a third after 1,100 steps at 0.999)."""

    def __init__(self, model: torch.nn.Module, decay: float, start: int = 0):
        self.decay, self.start = decay, start
        self.seen = 0  # updates so far (the warm-up ones included)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.seen += 1
        n = self.seen - self.start
        rate = 1.0 if n <= 0 else (1 - self.decay) / (1 - self.decay ** n)
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].add_(v.detach() - self.shadow[k], alpha=rate)
            else:
                self.shadow[k].copy_(v)

    def state(self) -> dict:
        return {"shadow": self.shadow, "seen": self.seen}

    def load(self, state) -> None:
        if isinstance(state, dict) and "shadow" in state and "seen" in state:
            self.shadow, self.seen = state["shadow"], int(state["seen"])
        else:  # a checkpoint from before the correction: its average is taken as it is, long run
            self.shadow, self.seen = state, 10 ** 9


def lr_factor(epoch: int, epochs: int, warmup: int) -> float:
    """The learning rate's factor at an epoch: linear warm-up over `warmup` epochs, then a cosine
    from 1 down to 0.05 over the rest."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(epochs - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(epoch - warmup, span) / span)) * 0.95 + 0.05


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


@dataclass
class FitResult:
    final_score: float  # the validation score of the final weights (reported, never used to choose)
    epochs_run: int
    resumed_from: int  # epoch the run resumed after, -1 if it started fresh


def predict(model: torch.nn.Module, dataset, collate, batch_size: int, device: torch.device, amp: bool,
            desc: str = "predict") -> np.ndarray:
    """Probabilities [n, 25, 3] in dataset order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    model.eval()
    out = []
    with torch.no_grad():
        for batch in bar(loader, desc=desc, leave=False, quiet=not is_main()):
            batch = _to(batch, device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                res = model(batch)
            out.append(res["probs"].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 25, 3), np.float32)


def fit(model: torch.nn.Module, train_set, cfg: TrainConfig, out_dir: str | Path, collate: Callable,
        evaluate: Callable[[torch.nn.Module, torch.device], float] | None = None, name: str = "model",
        run_key: str | dict = "", val_name: str = "validation score (competition metric)") -> FitResult:
    """Train for cfg.epochs and keep the final weights (EMA if on). evaluate(model, device), when given,
    scores the validation fold after each epoch for the log and the curves; it decides nothing.
    out_dir gets last.pt (resume state), weights.pt (the final weights), log.csv and curves.png; on
    return the model holds the final weights. A checkpoint written under another run_key (another
    config or data) is not resumed from: training starts afresh."""
    out_dir = Path(out_dir)
    distributed = setup_distributed()
    rank, world, _ = dist_info()
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed + rank)
    model = model.to(device)
    use_amp = cfg.amp and device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(e, cfg.epochs, cfg.warmup_epochs))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = None  # made once the loader's length (optimiser steps per epoch) is known
    start, history, resumed = 0, [], -1

    last = out_dir / "last.pt"
    state = torch.load(last, map_location=device, weights_only=False) if last.exists() else None
    parts = run_key if isinstance(run_key, dict) else {"run": run_key}
    run_key = config_hash(parts)  # what the run was trained on: config, studies, labels, inputs
    if state is not None and state.get("run_key", "") != run_key:
        if is_main():
            old = state.get("run_parts", {})
            changed = [k for k in parts if old.get(k) != parts[k]] or ["config"]
            print(f"{name}: {last} was trained on another {', '.join(changed)}; training afresh")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        scaler.load_state_dict(state["scaler"])
        start, history = state["epoch"] + 1, state["history"]
        resumed = state["epoch"]
        if "rng" in state:  # the data order and augmentations continue as if never interrupted
            torch.set_rng_state(state["rng"])
        if is_main():
            print(f"{name}: resumed from {last} after epoch {resumed}")

    train_model = model
    sampler = None
    if distributed:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data.distributed import DistributedSampler
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        collate_fn=collate, num_workers=cfg.num_workers, drop_last=len(train_set) > cfg.batch_size,
                        generator=generator)

    if cfg.ema > 0:  # the average starts after the warm-up's optimiser steps
        per_epoch = -(-len(loader) // cfg.accum_steps)
        ema = EMA(model, cfg.ema, start=cfg.warmup_epochs * per_epoch)
        if state is not None and state.get("ema") is not None:
            ema.load(state["ema"])

    def final_model() -> torch.nn.Module:
        if ema is None:
            return model
        m = copy.deepcopy(model)
        m.load_state_dict(ema.shadow)
        return m

    epoch = start - 1
    for epoch in range(start, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        # Each epoch's order and augmentation seeds from (seed, epoch): a resumed run draws what the
        # uninterrupted one would have, and DataLoader workers get a fresh base seed every epoch.
        generator.manual_seed(cfg.seed * 1000 + epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        train_model.train()
        t0, losses, steps = time.time(), [], 0
        opt.zero_grad(set_to_none=True)
        pbar = bar(loader, desc=f"{name} epoch {epoch}", leave=False, quiet=not is_main())
        for step, batch in enumerate(pbar):
            batch = _to(batch, device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = train_model(batch)["loss"] / cfg.accum_steps
            scaler.scale(loss).backward()
            if (step + 1) % cfg.accum_steps == 0 or step + 1 == len(loader):
                scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                steps += 1
                if ema is not None:
                    ema.update(model)
            losses.append(float(loss.detach()) * cfg.accum_steps)
            pbar.set_postfix(loss=f"{np.mean(losses):.4f}")
        sched.step()
        if distributed:  # every process says how far it got: a rank that takes no step trains nothing
            print(f"{name}: rank {rank}: epoch {epoch}: {steps} optimiser steps", flush=True)

        if is_main():  # bookkeeping on the main process; the others go on to the next epoch
            score = float("nan")  # not scored this epoch (eval_every): a gap in the curve
            if evaluate is not None and ((epoch + 1) % max(cfg.eval_every, 1) == 0 or epoch + 1 == cfg.epochs):
                eval_model = final_model()
                eval_model.eval()
                score = float(evaluate(eval_model, device))
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                            "val_score": score, "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0,
                            "steps": steps, "val_name": val_name, "device": str(device), "amp": use_amp})
            # The log first, then the checkpoint: whoever sees last.pt finds the epoch's log line (a
            # resume rewrites the log from the checkpoint's history, so a log one epoch ahead is harmless).
            write_log(history, out_dir, name)
            atomic_torch_save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                               "scaler": scaler.state_dict(), "ema": ema.state() if ema else None, "epoch": epoch,
                               "history": history, "run_key": run_key, "run_parts": parts,
                               "rng": torch.get_rng_state()}, last)
            h = history[-1]  # one line per epoch: what a log file gets instead of the bar's redraws
            val = f"val score {h['val_score']:.4f}, " if np.isfinite(h["val_score"]) else ""
            print(f"{name} epoch {epoch + 1}/{cfg.epochs}: train loss {h['train_loss']:.4f}, {val}{h['seconds']:.0f}s",
                  flush=True)

    if distributed:
        import torch.distributed as dist
        dist.barrier()
    final = final_model()
    if is_main():
        atomic_torch_save({"model": final.state_dict(), "epoch": epoch}, out_dir / "weights.pt")
    model.load_state_dict(final.state_dict())
    model.eval()
    score = history[-1]["val_score"] if history else float("nan")
    return FitResult(score, epoch + 1, resumed)


def write_log(history: list[dict], out_dir: Path, name: str) -> None:
    if not history:
        return
    with atomic_path(out_dir / "log.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for h in history for k in h)), restval="")
        w.writeheader()
        w.writerows(history)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        ep = [h["epoch"] for h in history]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        ax[0].plot(ep, [h["train_loss"] for h in history], marker="o")
        ax[0].set_title(f"{name}: train loss")
        ax[1].plot(ep, [h["val_score"] for h in history], marker="o", color="C1")
        ax[1].set_title(history[-1].get("val_name", "validation score"))
        for a in ax:
            a.set_xlabel("epoch")
        fig.tight_layout()
        write_figure(out_dir / "curves.png", fig, 80)
    except Exception as e:  # a figure must never stop training
        print(f"{name}: could not draw curves ({e})")
