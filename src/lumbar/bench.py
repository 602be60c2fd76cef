"""`python -m lumbar bench`: ratios measured in one run, on this machine.

- DICOM decode: seconds to read a series into a Volume vs seconds to read its files' bytes (the I/O
  floor), per MB of files.
- Preprocessing per study (decode, features, slice selection, crops): cold cache vs warm cache.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path

from .data.cache import StudyCache
from .data.catalog import load_studies
from .data.dicom import read_series


def bench_decode(studies, max_series: int = 40) -> dict:
    series = [r.path for st in studies for recs in st.series.values() for r in recs][:max_series]
    mb = sum(f.stat().st_size for p in series for f in p.glob("*.dcm")) / 2 ** 20
    t = time.perf_counter()
    for p in series:
        for f in p.glob("*.dcm"):
            f.read_bytes()
    io = time.perf_counter() - t
    t = time.perf_counter()
    for p in series:
        read_series(p)
    dec = time.perf_counter() - t
    return {"series": len(series), "MB": mb, "io_s_per_MB": io / mb, "decode_s_per_MB": dec / mb, "ratio": dec / io}


def bench_preprocess(studies, run) -> dict:
    from .preprocess.pipeline import cache_version, load_stage_one, preprocess_study

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


def run_bench(data, run, n_studies: int = 10) -> list[str]:
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
    return lines
