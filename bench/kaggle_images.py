"""Weights from each Kaggle image, the kernel's engine in each image: members loaded, probes, the largest
difference to the trained-with image's submission, and the score (docs/kaggle.md, bench/results/kaggle-images).

Each image is its venv (`make images`). For every image the whole stack is trained there with the tiny
presets on DATA and exported; then every weights folder predicts every test folder in every image with
`lumbar predict`'s engine (what the notebook amalgamates) and is scored against the folder's test labels.

    python bench/kaggle_images.py --data data/img60 --test data/img60 data/rtest100 --out bench/results/kaggle-images

Training reuses a run folder that already holds a stage (delete --work to start over); `--predict-only`
predicts with the weights already exported under --work (after a change to inference alone).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("kaggle-2024", "kaggle-2026")
ENV = {**os.environ, "LUMBAR_PROGRESS": "0"}
STAGES = ("prior", "slice_select", "crops", "superres", "multitask", "sequence", "ensemble")

PREDICT = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from lumbar.infer.engine import PredictConfig, predict
from lumbar.infer.weights import library_versions
from lumbar.commands.demo import test_scores
data, weights, out = sys.argv[1:4]
res = predict(data, weights, out, PredictConfig(workers=1))
sc = test_scores(data, Path(out), weights)
print("RESULT " + json.dumps({"versions": library_versions(), "dropped": res["dropped"], "loaded": res["loaded"],
                              "probed": len(res["probed"]), "predicted": res["predicted"], "studies": res["studies"],
                              "seconds": res["seconds"], "scores": sc}, default=float))
"""


def python_of(image: str) -> Path:
    py = ROOT / f".venv-{image}" / "bin" / "python"
    if not py.exists():
        sys.exit(f"kaggle_images: {py} missing; run `make images`")
    return py


def train(image: str, data: Path, work: Path) -> Path:
    """The tiny-preset stack trained and exported in the image's venv; returns the weights folder."""
    py, run, weights = python_of(image), work / image / "run", work / image / "weights"
    for stage in STAGES:
        cfg = ROOT / "configs" / "tiny" / f"{stage}.json"
        cmd = [str(py), "-m", "lumbar", "train", "--model", stage, "--data", str(data), "--run", str(run)]
        if cfg.exists():  # each image decodes into its own cache: nothing computed in one is read in the other
            cmd += ["--config", str(cfg)] + ([f"cache_dir={work / image / 'cache'}"] if "cache_dir" in cfg.read_text() else [])
        t = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
        if r.returncode != 0:
            sys.exit(f"kaggle_images: {image} {stage} failed:\n{r.stderr[-3000:]}")
        print(f"{image}: {stage} {time.time() - t:.0f}s", flush=True)
    r = subprocess.run([str(py), "-m", "lumbar", "export", "--run", str(run), "--data", str(data), "--out", str(weights)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"kaggle_images: {image} export failed:\n{r.stderr[-3000:]}")
    return weights


def predict(image: str, data: Path, weights: Path, out: Path) -> dict:
    r = subprocess.run([str(python_of(image)), "-c", PREDICT, str(data), str(weights), str(out)], capture_output=True,
                       text=True, env=ENV)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        sys.exit(f"kaggle_images: predict in {image} failed:\n{r.stderr[-3000:]}")
    return json.loads(line[7:])


def main(argv=None) -> int:
    import numpy as np
    import pandas as pd

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the training folder (synthetic: it has test labels)")
    p.add_argument("--test", nargs="+", required=True, help="folders whose test split is predicted and scored")
    p.add_argument("--work", default="runs/kaggle-images", help="runs, caches, weights and submissions")
    p.add_argument("--out", default="bench/results/kaggle-images")
    p.add_argument("--predict-only", action="store_true",
                   help="use the weights already exported under --work (an inference change: no retraining)")
    a = p.parse_args(argv)
    work, out = Path(a.work), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {img: (work / img / "weights" if a.predict_only else train(img, Path(a.data), work)) for img in IMAGES}
    missing = [str(w) for w in weights.values() if not (w / "manifest.json").exists()]
    if missing:
        sys.exit(f"kaggle_images: no exported weights in {missing}; run without --predict-only first")
    rows = []
    for src, w in weights.items():
        for test in a.test:
            subs = {}
            for img in IMAGES:
                sub = work / "subs" / f"{src}_weights__{img}__{Path(test).name}.csv"
                sub.parent.mkdir(parents=True, exist_ok=True)
                res = predict(img, Path(test), w, sub)
                subs[img] = pd.read_csv(sub).set_index("row_id").sort_index()
                sc = res["scores"]
                members = sum(int(line.split(": ")[1].split(" ")[0]) for line in res["loaded"]
                              if line.startswith("slice selector ") and "members" in line)
                rows.append({"weights from": src, "kernel in": img, "test": Path(test).name,
                             "versions": f"py {res['versions'].get('python', '?')}, numpy {res['versions']['numpy']}, "
                                         f"sklearn {res['versions']['sklearn']}, xgboost {res['versions']['xgboost']}, "
                                         f"torch {res['versions']['torch']}",
                             "selector members": members, "probes agreed": res["probed"], "dropped": len(res["dropped"]),
                             "studies": f"{res['predicted']}/{res['studies']}", "score": sc["submission"],
                             "gap closed": f"{sc['gap_closed']:.0%} [{sc['gap_closed_low']:.0%}, {sc['gap_closed_high']:.0%}]",
                             "dropped lines": res["dropped"]})
                print(json.dumps(rows[-1], default=str), flush=True)
            a_, b_ = (subs[i] for i in IMAGES)
            diff = float(np.abs(a_.to_numpy() - b_.to_numpy()).max())
            for r in rows[-len(IMAGES):]:
                r["max |diff| between images"] = diff
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    cols = ["weights from", "kernel in", "test", "selector members", "probes agreed", "dropped", "studies", "score",
            "gap closed", "max |diff| between images"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4f}" if c == "score" else (f"{r[c]:.1e}" if c.startswith("max") else str(r[c]))
                                        for c in cols) + " |")
    versions = sorted({(r["kernel in"], r["versions"]) for r in rows})
    text = "\n".join(lines) + "\n\nVersions:\n" + "\n".join(f"- {i}: {v}" for i, v in versions) + "\n"
    (out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
