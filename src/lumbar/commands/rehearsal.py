"""`make rehearsal`: every stage on a real-profile synthetic folder, measured, and projected to the real
competition (1,975 training studies; a ~700-study hidden test on Kaggle's 4 CPUs and one T4).

Each training stage runs as its own process under a parent that reads the process tree's peak RSS
(getrusage of its children: the largest process, the stage's own), so the numbers are what `make train`
would use. Torch stages train with the tiny CPU configs for a few epochs (REHEARSAL_EPOCHS): enough to
measure seconds per study per epoch and memory, which does not depend on the number of epochs.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..files import write_json

REAL_TRAIN = 1975
HIDDEN_TEST = 700
KAGGLE_WORKERS = 3  # the notebook's input workers on Kaggle's 4 CPUs
STAGES = ("prior", "slice_select", "crops", "superres", "multitask", "sequence", "ensemble")
REHEARSAL_EPOCHS = {"superres": 2, "multitask": 2, "sequence": 2}
SCALING_SIZES = (1000, 2000, 4000, 8000)  # selector rows timed per member (lumbar.commands.scaling)


def full_epochs() -> dict[str, int]:
    """Each rehearsed torch stage's epochs in its config (what `make train` runs)."""
    from ..train.runner import CONFIGS

    return {stage: CONFIGS[stage]().epochs for stage in REHEARSAL_EPOCHS}

_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True); "
         "sys.exit(r.returncode)")


def measured(cmd: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB of the largest process) of a command; its output goes to log."""
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run([sys.executable, "-c", _PEAK, *cmd], stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(r.stdout)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}); see {log}")
    kb = next(int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("PEAK_RSS_KB"))
    return wall, kb / 2 ** 20


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def rehearse(out: str | Path, studies: int = 40, test_studies: int | None = None, seed: int = 0,
             size_scale: float = 1.0, workers: int = 2) -> dict:
    """Runs everything under `out` (data/, run/, cache/, weights/); returns the measurements."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data, run, cache, weights, log = out / "data", out / "run", out / "cache", out / "weights", out / "rehearsal.log"
    test_studies = test_studies if test_studies is not None else max(4, studies // 5)
    py = [sys.executable, "-m", "lumbar"]
    m: dict = {"studies": studies, "test_studies": test_studies, "size_scale": size_scale, "stages": {}}

    wall, _ = measured([*py, "synth", "--out", str(data), "--studies", str(studies), "--test-studies", str(test_studies),
                        "--seed", str(seed), "--profile", "real", "--size-scale", str(size_scale),
                        "--workers", str(workers)], log)
    m["synth_s"] = wall
    m["data_MB_per_study"] = folder_size(data) / 2 ** 20 / (studies + test_studies)
    for stage in STAGES:
        extra = [] if stage in ("prior", "ensemble") else [f"cache_dir={cache}"]
        if stage in REHEARSAL_EPOCHS:
            extra.append(f"epochs={REHEARSAL_EPOCHS[stage]}")
        if stage in ("multitask", "sequence"):  # one fold at a time, as on a GPU: the peak RSS is the one process's
            extra.append("fold_workers=1")
        if stage == "slice_select":
            extra.append(f"workers={workers}")
        wall, peak = measured([*py, "train", "--model", stage, "--data", str(data), "--run", str(run), *extra], log)
        m["stages"][stage] = {"seconds": wall, "s_per_study": wall / studies, "peak_rss_gb": peak}
        print(f"rehearsal: {stage:<12} {wall:7.1f}s  peak RSS {peak:.2f} GB", flush=True)
    m["cache_MB_per_study"] = folder_size(cache) / 2 ** 20 / studies
    # The selector's fits grow faster than its rows: their time at the real size comes from the measured
    # exponent of each member (lumbar.commands.scaling), not from this folder's seconds per study.
    from .scaling import report as scaling_report
    numbers, _ = scaling_report(data, cache, sizes=SCALING_SIZES, workers=workers)
    m["selector_scaling"] = numbers["projection"]
    measured([*py, "export", "--run", str(run), "--data", str(data), "--out", str(weights)], log)
    wall, peak = measured([*py, "predict", "--data", str(data), "--weights", str(weights), "--out",
                           str(out / "submission.csv"), "--workers", str(workers)], log)
    m["predict"] = {"seconds": wall, "s_per_study": wall / test_studies, "peak_rss_gb": peak}

    if _cuda():  # one epoch of one fold of each GPU config at real sizes, projected to the full training
        m["gpu_epoch"] = {}
        for stage in ("multitask", "sequence"):
            cfg_file = Path(__file__).resolve().parents[2] / "configs" / "gpu" / f"{stage}.json"
            full_epochs = json.loads(cfg_file.read_text()).get("epochs", 1)
            wall, peak = measured([*py, "train", "--model", stage, "--data", str(data), "--run", str(run),  # after export: fold 0 is retrained
                                   "--config", str(cfg_file), "epochs=1", "only_fold=0", "pretrained=false",
                                   f"cache_dir={cache}"], log)
            per_study = wall / (studies * 0.8)  # one fold trains on 4/5 of the studies
            m["gpu_epoch"][stage] = {"seconds": wall, "peak_rss_gb": peak, "epochs": full_epochs,
                                     "projected_h": per_study * REAL_TRAIN * 0.8 * 5 * full_epochs / 3600}

    from .bench import bench_inference, stages as infer_stages

    devices = ["cpu"] + (["cuda"] if _cuda() else [])
    m["inference"] = {}
    for dev in devices:
        for amp in ([False] if dev == "cpu" else [False, True]):
            r = bench_inference(data, weights, dev, amp)
            m["inference"][f"{dev} {'fp16' if amp else 'fp32'}"] = {k: r["per_study"][k] for k in infer_stages()}
    write_json(out / "rehearsal.json", m)
    return m


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def table(m: dict) -> str:
    """The rehearsal as one markdown table, with the projections and their formulas."""
    full = full_epochs()
    n = m["studies"]
    lines = [f"Real-profile synthetic folder: {n} train + {m['test_studies']} test studies "
             f"(size scale {m['size_scale']}), {m['data_MB_per_study']:.1f} MB of DICOM per study; "
             f"cache {m['cache_MB_per_study']:.1f} MB per study.", "",
             "| stage | seconds | s/study | peak RSS, GB | projected to 1,975 studies |", "|---|---|---|---|---|"]
    for stage, s in m["stages"].items():
        factor = full.get(stage, 1) / REHEARSAL_EPOCHS.get(stage, 1)
        proj = s["s_per_study"] * REAL_TRAIN * factor / 3600
        formula = (f"{s['s_per_study']:.2f} s x 1975 x {factor:.0f} (epochs {full[stage]}/"
                   f"{REHEARSAL_EPOCHS[stage]})" if stage in full else f"{s['s_per_study']:.2f} s x 1975")
        lines.append(f"| train {stage} | {s['seconds']:.0f} | {s['s_per_study']:.2f} | {s['peak_rss_gb']:.2f} | "
                     f"{proj:.2f} h = {formula} (CPU) |")
    sc = m.get("selector_scaling")
    if sc:
        lines.append(f"| slice selector fits at 1,975 studies (measured exponent per member) | | | | "
                     f"{sc['total_s'] / 3600:.2f} h = " + ", ".join(f"{k} n^{v['exponent']:.2f}"
                                                             for k, v in sc["members"].items()) + " |")
    for stage, g in m.get("gpu_epoch", {}).items():
        lines.append(f"| GPU config {stage}, 1 epoch of 1 fold | {g['seconds']:.0f} | | {g['peak_rss_gb']:.2f} | "
                     f"{g['projected_h']:.1f} h = s/study x 1975 x 0.8 x 5 folds x {g['epochs']} epochs |")
    p = m["predict"]
    lines.append(f"| predict (workers, {m['test_studies']} studies) | {p['seconds']:.0f} | {p['s_per_study']:.2f} | "
                 f"{p['peak_rss_gb']:.2f} | |")
    for mode, per in m["inference"].items():
        prep = sum(v for k, v in per.items() if not k.startswith("model "))
        models = sum(v for k, v in per.items() if k.startswith("model "))
        lines.append(f"| inference {mode}, per stage | | " + ", ".join(f"{k} {v:.3f}" for k, v in per.items())
                     + " | | |")
        if mode.startswith("cpu"):
            hi = HIDDEN_TEST * (prep / KAGGLE_WORKERS + models) / 3600
            lo = HIDDEN_TEST * prep / KAGGLE_WORKERS / 3600
            lines.append(f"| Kaggle hidden test ({HIDDEN_TEST} studies) | | | | {lo:.2f}-{hi:.2f} h = 700 x "
                         f"({prep:.2f} s prep / {KAGGLE_WORKERS} workers [+ {models:.2f} s models at CPU speed, an "
                         f"upper bound for a T4]) |")
    return "\n".join(lines)


def main(out: str, studies: int, size_scale: float = 1.0, workers: int = 2) -> int:
    t = time.time()
    m = rehearse(out, studies, size_scale=size_scale, workers=workers)
    text = table(m)
    Path(out, "rehearsal.md").write_text(text + "\n")
    print(text)
    print(f"rehearsal: done in {(time.time() - t) / 60:.1f} min; {Path(out) / 'rehearsal.md'}")
    return 0
