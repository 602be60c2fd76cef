"""`python -m lumbar bench`: ratios measured in one run, on this machine.

- DICOM decode: seconds to read a series into a Volume vs seconds to read its files' bytes (the I/O
  floor), per MB of files.
- Preprocessing per study (decode, features, slice selection, crops): cold cache vs warm cache.
- Inference per study by stage (decode, each model's preprocessing, each model's folds), through the
  engine itself, and the hours 1000 test studies would take; on CUDA, fp32 against fp16 autocast.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path

from ..data.cache import StudyCache
from ..data.catalog import load_studies
from ..data.dicom import DicomError, read_series


def bench_decode(studies, max_series: int = 40) -> dict:
    series = [r.path for st in studies for recs in st.series.values() for r in recs][:max_series]
    mb = sum(f.stat().st_size for p in series for f in p.glob("*.dcm")) / 2 ** 20
    t = time.perf_counter()
    for p in series:
        for f in p.glob("*.dcm"):
            f.read_bytes()
    io = time.perf_counter() - t
    t = time.perf_counter()
    unreadable = 0
    for p in series:
        try:
            read_series(p)
        except DicomError:  # an empty series folder (the hidden test has them): nothing to time
            unreadable += 1
    dec = time.perf_counter() - t
    return {"series": len(series) - unreadable, "MB": mb, "io_s_per_MB": io / mb, "decode_s_per_MB": dec / mb,
            "ratio": dec / io}


def bench_preprocess(studies, run) -> dict:
    from ..preprocess.pipeline import cache_version, load_stage_one, preprocess_study

    selector, sel_id, regions, cfg = load_stage_one(run)
    root = Path(tempfile.mkdtemp(prefix="lumbar-bench-"))
    try:
        times = []
        for _ in range(2):
            cache = StudyCache(root, cache_version())
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for st in studies:
                    preprocess_study(st, selector, sel_id, regions, cfg, cache)
            times.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cold, warm = times
    return {"studies": len(studies), "cold_s_per_study": cold / len(studies), "warm_s_per_study": warm / len(studies),
            "speedup": cold / warm}


def stages() -> tuple[str, ...]:
    """The engine's timing names: decode, then each registered predictor's input preparation and folds."""
    from ..models.registry import predictors

    names = [s.name for s in predictors()]
    return ("decode", *(f"preprocess {m}" for m in names), *(f"model {m}" for m in names))


def bench_inference(data, weights, device: str = "cpu", amp: bool = False, batch_size: int = 8) -> dict:
    """Seconds per study of each inference stage, serially (workers=0, so stages do not overlap), cold
    cache; a first pass warms up the device and is not counted."""
    from ..infer.engine import PredictConfig, predict

    root = Path(tempfile.mkdtemp(prefix="lumbar-bench-"))
    try:
        res = None
        for i in range(2):
            cfg = PredictConfig(batch_size=batch_size, workers=0, device=device, amp=amp,
                                cache_dir=str(root / f"cache{i}"), write_every=1e9)
            t = time.perf_counter()
            res = predict(data, weights, root / "submission.csv", cfg)
            wall = time.perf_counter() - t
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n = max(res["studies"], 1)
    per = {k: res["timings"].get(k, 0.0) / n for k in stages()}
    return {"studies": res["studies"], "per_study": per, "wall_per_study": wall / n,
            "hours_per_1000": 1000 * wall / n / 3600, "device": res["device"]}


def inference_lines(data, weights, device: str = "cpu") -> list[str]:
    modes = [False] if not device.startswith("cuda") else [False, True]
    runs = {amp: bench_inference(data, weights, device, amp) for amp in modes}
    name = {False: "fp32", True: "fp16"}
    first = runs[modes[0]]
    lines = [f"| inference ({first['studies']} test studies, {first['device']}) | stage, s/study | "
             + " | ".join(name[a] for a in modes) + " |"]
    for stage in stages():
        lines.append(f"| | {stage} | " + " | ".join(f"{runs[a]['per_study'][stage]:.4f}" for a in modes) + " |")
    lines.append("| | wall, s/study (workers=0) | " + " | ".join(f"{runs[a]['wall_per_study']:.4f}" for a in modes) + " |")
    lines.append("| | projected hours, 1000 studies | " + " | ".join(f"{runs[a]['hours_per_1000']:.2f}" for a in modes) + " |")
    if len(modes) == 2:
        models = sum(runs[False]["per_study"][s] for s in stages() if s.startswith("model"))
        models16 = sum(runs[True]["per_study"][s] for s in stages() if s.startswith("model"))
        lines.append(f"| | models fp32 / fp16 | {models / max(models16, 1e-9):.2f}x |")
    return lines


def run_bench(data, run, n_studies: int = 10, weights=None, device: str = "cpu") -> list[str]:
    studies = load_studies(data, "test") or load_studies(data, "train")
    studies = studies[:n_studies]
    lines = ["| benchmark | measure | value |", "|---|---|---|"]
    d = bench_decode(studies)
    lines += [f"| DICOM decode ({d['series']} series, {d['MB']:.1f} MB) | read bytes (I/O floor), s/MB | {d['io_s_per_MB']:.4f} |",
              f"| | decode into Volume, s/MB | {d['decode_s_per_MB']:.4f} |",
              f"| | decode / I/O floor | {d['ratio']:.2f}x |"]
    try:
        p = bench_preprocess(studies, run)
        lines += [f"| preprocessing ({p['studies']} studies) | cold cache, s/study | {p['cold_s_per_study']:.3f} |",
                  f"| | warm cache, s/study | {p['warm_s_per_study']:.4f} |",
                  f"| | cold / warm | {p['speedup']:.1f}x |"]
    except FileNotFoundError as e:
        lines.append(f"| preprocessing | skipped | {e} |")
    if weights is not None and (Path(weights) / "manifest.json").exists():
        lines += inference_lines(data, weights, device)
    else:
        lines.append(f"| inference | skipped | no {weights}/manifest.json (run `make train` or `make demo`) |")
    return lines
