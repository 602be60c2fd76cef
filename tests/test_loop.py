"""The one training loop's switches, each doing what it says: EMA, gradient accumulation, DataLoader
workers (on a model small enough that the arithmetic can be checked)."""
import os

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from lumbar.config import TrainConfig
from lumbar.train.datasets import collate
from lumbar.train.loop import EMA, fit


class Points(Dataset):
    def __init__(self, n: int = 16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, batch):
        pred = self.lin(batch["x"]).squeeze(-1)
        return {"loss": ((pred - batch["y"]) ** 2).mean(), "probs": torch.zeros(len(pred), 25, 3)}


def _fit(tmp_path, name, **kw):
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 4, "lr": 0.05, "weight_decay": 0.0, "clip_grad": 1e6,
                         "device": "cpu", **kw})
    model = Linear()
    fit(model, Points(), cfg, tmp_path / name, collate, name=name)
    return model


def test_ema_is_the_bias_corrected_average_of_the_weights_after_the_warm_up():
    model = Linear()
    init = model.lin.weight.detach().clone()
    d, start = 0.75, 2
    ema = EMA(model, d, start=start)
    seen = []
    for i in range(6):
        with torch.no_grad():
            model.lin.weight.copy_(init + float(i + 1))
        seen.append(model.lin.weight.detach().clone())
        ema.update(model)
        if i < start:  # the warm-up: it follows the weights
            torch.testing.assert_close(ema.shadow["lin.weight"], seen[-1])
    after = seen[start:]
    n = len(after)
    w = torch.tensor([(1 - d) * d ** (n - 1 - i) for i in range(n)])
    expected = sum(wi * x for wi, x in zip(w, after)) / w.sum()
    torch.testing.assert_close(ema.shadow["lin.weight"], expected)
    # nothing of the untrained network or the warm-up is left in it
    assert (ema.shadow["lin.weight"] - init).min() >= start + 1 - 1e-5


def test_warm_up_then_cosine():
    from lumbar.train.loop import lr_factor

    f = [lr_factor(e, 10, 2) for e in range(10)]
    assert f[0] < f[1] < f[2] == 1.0  # rising, then the cosine starts at the full rate
    assert all(a >= b for a, b in zip(f[2:], f[3:])) and f[-1] > 0.05
    assert [lr_factor(e, 10, 0) for e in range(10)][0] == 1.0


def test_training_with_ema_keeps_the_average_not_the_last_step(tmp_path):
    plain = _fit(tmp_path, "plain")
    averaged = _fit(tmp_path, "ema", ema=0.5)
    last = torch.load(tmp_path / "ema" / "last.pt", weights_only=False)
    torch.testing.assert_close(last["model"]["lin.weight"], plain.lin.weight.detach())  # the same raw steps
    torch.testing.assert_close(averaged.lin.weight.detach(), last["ema"]["shadow"]["lin.weight"])  # final = the average
    assert (averaged.lin.weight - plain.lin.weight).abs().max() > 1e-4
    saved = torch.load(tmp_path / "ema" / "weights.pt", weights_only=True)["model"]
    torch.testing.assert_close(saved["lin.weight"], averaged.lin.weight.detach())


def test_two_accumulated_half_batches_are_one_full_batch(tmp_path):
    full = _fit(tmp_path, "full", batch_size=4)
    halves = _fit(tmp_path, "halves", batch_size=2, accum_steps=2)
    torch.testing.assert_close(halves.lin.weight, full.lin.weight, atol=1e-6, rtol=1e-5)
    steps = [torch.load(tmp_path / n / "last.pt", weights_only=False)["history"][0]["steps"] for n in ("full", "halves")]
    assert steps == [4, 4]  # 16 samples: four optimiser steps either way
    single = _fit(tmp_path, "single", batch_size=2)  # without accumulation: twice the steps, other weights
    assert (single.lin.weight - full.lin.weight).abs().max() > 1e-4


def test_dataloader_workers_train_the_same_model(tmp_path):
    inline = _fit(tmp_path, "inline", num_workers=0)
    workers = _fit(tmp_path, "workers", num_workers=2)
    torch.testing.assert_close(workers.lin.weight, inline.lin.weight)


def test_eval_every_scores_every_kth_epoch_and_the_last_and_trains_the_same(tmp_path):
    calls = []

    def evaluate(model, device):
        calls.append(float(model.lin.weight.detach().sum()))
        return float(len(calls))

    models = {}
    for k in (1, 2):
        cfg = TrainConfig(epochs=5, batch_size=4, lr=0.05, weight_decay=0.0, clip_grad=1e6, device="cpu", eval_every=k)
        models[k] = Linear()
        fit(models[k], Points(), cfg, tmp_path / f"every{k}", collate, evaluate=evaluate, name=f"every{k}")
    log = pd.read_csv(tmp_path / "every2" / "log.csv")
    assert log["val_score"].notna().tolist() == [False, True, False, True, True]  # epochs 2, 4 and the last
    assert pd.read_csv(tmp_path / "every1" / "log.csv")["val_score"].notna().all()
    assert len(calls) == 5 + 3
    torch.testing.assert_close(models[2].lin.weight, models[1].lin.weight)  # scoring changes nothing it trains


def _fold_that_fails(k):
    if k == 1:
        raise ValueError("bad crop in study 7")
    return k * 10


def _fold_that_dies(k):
    if k == 2:
        os._exit(3)
    return k


def test_folds_in_processes_return_results_and_name_a_failing_or_dead_fold(capsys):
    from lumbar.train.folds import FoldError, in_processes

    def talk(k):
        print(f"fold {k} says hello")
        return {"k": k, "sq": np.arange(3) * k}

    res = in_processes(talk, [0, 1, 2], 2, "demo")
    assert sorted(res) == [0, 1, 2] and res[2]["sq"].tolist() == [0, 2, 4]
    out = capsys.readouterr().out
    assert all(f"fold {k} says hello\n" in out for k in range(3))
    with pytest.raises(FoldError, match=r"demo fold 1 failed:(.|\n)*ValueError: bad crop in study 7"):
        in_processes(_fold_that_fails, [0, 1], 2, "demo")
    with pytest.raises(FoldError, match="demo fold 2: its process ended with exit code 3"):
        in_processes(_fold_that_dies, [0, 1, 2], 3, "demo")
