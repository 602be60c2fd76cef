"""What the probes cost at the real size: per torch fold of the GPU presets, the probe file's size and the
seconds its CPU fp32 forward takes at load (the kernel runs one per fold before predicting).

    python bench/probe_cost.py [--presets configs/gpu] [--repeats 3]

Random initial weights (pretrained=False): the cost is the architecture's, not the weights'.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    import torch

    from lumbar import config as cfgmod
    from lumbar.infer import probes as P
    from lumbar.models.registry import create_model, for_inference, predictors

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=str(ROOT / "configs" / "gpu"))
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    presets = Path(a.presets)
    crops = json.loads((presets / "crops.json").read_text()) if (presets / "crops.json").exists() else {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("| model | backbone | probe file (MB) | CPU forward at load (s, median of "
          f"{a.repeats}) |\n|---|---|---|---|")
    for spec in predictors():
        if spec.example is None:
            continue
        preset = json.loads((presets / f"{spec.name}.json").read_text())
        cfg = for_inference(cfgmod.from_dict(spec.config, preset, strict=False))
        net = create_model(spec.name, cfg).eval()
        inputs = spec.example(cfg, crops, 0)
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            outputs = P.run_fold(net, inputs)
            times.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            P.save_probe(Path(tmp) / "p.npz", inputs, outputs, "fold")
            size = (Path(tmp) / "p.npz").stat().st_size / 2**20
        print(f"| {spec.name} | {getattr(cfg, 'backbone', '?')} | {size:.1f} | {sorted(times)[len(times) // 2]:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
