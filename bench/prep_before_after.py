"""Input preparation per test study (decode, stage one, frames) with the code of an earlier commit and
with the working tree, on the same data and weights, one after the other in one run.

    python bench/prep_before_after.py REV [--data runs/rehearsal/data] [--weights runs/rehearsal/weights]

REV's source is checked out into a temporary git worktree; each side runs `bench_inference` (cold cache,
workers=0, a warm-up pass not counted) in its own process with PYTHONPATH pointing at its `src/`.
`--repeats N` alternates the sides N times and reports each figure's median: on a machine shared with
other work (2 cores), one pass each moves by 10-20% between runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from statistics import median
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREP = ("decode", "preprocess multitask", "preprocess sequence")
_SIDE = ("import json, sys, warnings; warnings.simplefilter('ignore')\n"
         "try:\n    from lumbar.commands.bench import bench_inference\n"
         "except ImportError:  # a commit from before the commands/ folder\n    from lumbar.bench import bench_inference\n"
         "r = bench_inference(sys.argv[1], sys.argv[2]); print('RESULT', json.dumps(r['per_study']))")


def measure(src: Path, data: str, weights: str) -> dict:
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", _SIDE, data, weights], capture_output=True, text=True, env=env)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"bench with {src} failed:\n{r.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rev")
    ap.add_argument("--data", default="runs/rehearsal/data")
    ap.add_argument("--weights", default="runs/rehearsal/weights")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the sides this many times; medians")
    a = ap.parse_args()
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="lumbar-before-") as tmp:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, a.rev], check=True,
                       capture_output=True)
        try:
            for _ in range(a.repeats):
                runs["before"].append(measure(Path(tmp) / "src", a.data, a.weights))
                runs["after"].append(measure(ROOT / "src", a.data, a.weights))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp], capture_output=True)
    before, after = ({k: median(r[k] for r in runs[side]) for k in runs[side][0]} for side in ("before", "after"))
    print(f"| s per study ({a.data}, median of {a.repeats}) | {a.rev} | working tree | before / after |")
    print("|---|---|---|---|")
    for k in (*PREP, "model multitask", "model sequence"):
        print(f"| {k} | {before[k]:.3f} | {after[k]:.3f} | {before[k] / max(after[k], 1e-9):.2f}x |")
    b, t = sum(before[k] for k in PREP), sum(after[k] for k in PREP)
    print(f"| input preparation | {b:.3f} | {t:.3f} | {b / max(t, 1e-9):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
