"""Seconds per training step of the tiny CPU presets' two CNNs and of their parts, on random inputs
(batch of 8, forward + backward, best of `--repeat`): where a CPU epoch goes, and what a preset change
buys. `python bench/step_costs.py [--threads N] [key=value ...]` (overrides apply to both models' configs
where they have the field, e.g. n_frames=10 or sr_channels=48)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from lumbar.models.multitask import MultitaskConfig
from lumbar.models.registry import create_model
from lumbar.models.sequence import SequenceConfig

ROOT = Path(__file__).resolve().parents[1]


def config(cls, overrides: dict):
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    base = json.loads((ROOT / "configs" / "tiny" / f"{'multitask' if cls is MultitaskConfig else 'sequence'}.json").read_text())
    base.update({k: type(base[k])(v) for k, v in overrides.items() if k in base})
    return cls(**{k: v for k, v in base.items() if k in fields})


def best(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the machine's cores)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats of each measurement")
    ap.add_argument("overrides", nargs="*", help="key=value on the tiny presets")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    over = dict(kv.split("=", 1) for kv in a.overrides)
    b = 8

    cfg = config(MultitaskConfig, over)
    m = create_model("multitask", cfg).train()
    batch = {"sag_image": torch.rand(b, 3, 3, 128, 128), "axial_image": torch.rand(b, 5, 3, 96, 96),
             "sag_points": torch.rand(b, 3, 5, 2) * 100, "axial_points": torch.rand(b, 5, 2, 2) * 80,
             "labels": torch.randint(0, 3, (b, 25)), "present": torch.ones(b, 10, dtype=torch.bool)}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad])

    def step(model, data, optimiser):
        model(data)["loss"].backward()
        optimiser.step()
        optimiser.zero_grad()

    rows = [("multitask step", best(lambda: step(m, batch, opt), a.repeat))]
    sag, ax = batch["sag_image"], batch["axial_image"]
    rows.append(("  keypoint CNN", best(lambda: sum(t.sum() for t in m.keypoints(sag, ax)).backward(), a.repeat)))
    x, y = torch.rand(b * 45, 1, cfg.patch_sag, cfg.patch_sag), torch.rand(b * 30, 1, cfg.patch_axial, cfg.patch_axial)
    with torch.no_grad():
        rows.append((f"  super-resolution ({cfg.sr_channels} channels, frozen)", best(lambda: (m.sr(x), m.sr(y)), a.repeat)))
    p = torch.rand(b * 25, 3, cfg.patch_input, cfg.patch_input)
    rows.append(("  classifier CNN", best(lambda: m.cls_backbone(p).sum().backward(), a.repeat)))

    scfg = config(SequenceConfig, over)
    s = create_model("sequence", scfg).train()
    n, size = scfg.n_frames, scfg.frame_size
    sbatch = {"frames": torch.rand(b, 3, n, size, size), "mask": torch.ones(b, 3, dtype=torch.bool),
              "positions": torch.rand(b, 3, n), "points": torch.rand(b, 3, n, 5, 2) * size,
              "labels": torch.randint(0, 3, (b, 25))}
    sopt = torch.optim.AdamW(s.parameters())
    rows.append((f"sequence step ({n} frames)", best(lambda: step(s, sbatch, sopt), a.repeat)))
    f = torch.rand(b * 3 * n, 1, scfg.kp_size, scfg.kp_size)
    rows.append(("  frame CNN", best(lambda: s.encoder(f)[-1].sum().backward(), a.repeat)))
    q = torch.rand(b * 3 * n * 4, 1, scfg.patch_input, scfg.patch_input)
    rows.append(("  patch CNN", best(lambda: s.patch_encoder(q).sum().backward(), a.repeat)))

    print(f"| part ({a.threads} threads, batch {b}) | s |\n|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.3f} |")


if __name__ == "__main__":
    main()
