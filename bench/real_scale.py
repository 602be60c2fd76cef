"""The real scale, run instead of projected: 1,975 training + 700 test real-profile studies (half size)
through exactly what a competitor runs, every stage measured.

    make real-scale        # = python bench/real_scale.py --root ../lumbar-real-scale: starts or resumes

Steps, each done once and recorded in ROOT/state.json (a rerun skips what is done and resumes the rest):
  checkout   ROOT/repo: a clone of this repository at the commit the run started from (pinned in state.json,
             so that moving code in the work tree cannot change what a resumed run trains)
  data       ROOT/data/real1975 (synth --profile real --size-scale 0.5, 1,975 + 700 studies, seed 21) and
             ROOT/data/rtest100 (the learning curve's 100 unseen studies, seed 11)
  train      make train DATA=ROOT/data/real1975 (its defaults: 5 folds, every stage, tiny presets) in ROOT/repo;
             `--folds 2` (kept in state.json) is the issue's fallback when 5 folds cannot finish
  score      make local-score
  kernel     make kernel
  notebook   the built notebook run offline as Kaggle runs it, on rtest100 then on the 700 test studies; its
             temporary folder (TMPDIR) polled every second for the peak disk
  fullsize   8 full-size test studies (ROOT/data/full8) and the notebook on them: the temporary disk's peak
             at the real data's pixel size
  accuracy   after each notebook: each model's own submission (predict --per-model-dir), then every model's
             score and share of the gap with intervals, ensemble - multitask paired (ROOT/accuracy.json), and
             on rtest100 the learning curve's point at this n (ROOT/curve_point.json: lumbar curve --refit-with)
Every step and every training stage gets: wall seconds, CPU seconds of its processes (sampled), peak RSS
(largest process, and all of its processes together), the machine's CPU share that was the run's (other
jobs on the 2 cores show here), and the disk of each folder after it. ROOT/measure.json holds them,
ROOT/events.log what happened (starts, kills, resumes). The steps' output goes to ROOT/log/<step>.log.

Nothing here imports lumbar: the run's own code is the pinned checkout's (PYTHONPATH=ROOT/repo/src).
`--kill STAGE:SECONDS` kills the run's processes that long into a stage, on purpose (the resume test).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
TRAIN, TEST, SEED = 1975, 700, 21
STEPS = ("data", "train", "score", "kernel", "notebook_rtest100", "accuracy_rtest100", "notebook700", "accuracy_700",
         "notebook_fullsize")
FULL_TEST = 8  # full-size test studies: the kernel's temporary disk at the real data's pixel size
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class State:
    """ROOT/state.json: the pinned commit and the steps done; written atomically."""

    def __init__(self, root: Path):
        self.path = root / "state.json"
        self.d = json.loads(self.path.read_text()) if self.path.exists() else {"steps": {}}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.d, indent=1))
        os.replace(tmp, self.path)


def event(root: Path, text: str) -> None:
    line = f"{now()} {text}"
    print(line, flush=True)
    with open(root / "events.log", "a") as f:
        f.write(line + "\n")


def du(path: Path) -> int:
    """Bytes under path (0 if absent)."""
    if not path.exists():
        return 0
    r = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True)
    return int(r.stdout.split()[0]) if r.returncode == 0 and r.stdout else 0


def proc_table(sid: int) -> list[tuple[int, str, int, float]]:
    """(pid, cmdline, rss bytes, cpu seconds) of every process in session sid, and of their descendants
    in sessions of their own (a notebook's kernel: jupyter starts it in a new session)."""
    every = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # counted from after the name: ppid 1, session 3
            every[int(d)] = (int(fields[1]), int(fields[3]), int(fields[21]) * PAGE,
                             (int(fields[11]) + int(fields[12])) / TICK)
        except (OSError, ValueError, IndexError):
            continue
    mine = {pid for pid, (_, s, _, _) in every.items() if s == sid}
    grown = True
    while grown:
        more = {pid for pid, (ppid, _, _, _) in every.items() if ppid in mine and pid not in mine}
        mine |= more
        grown = bool(more)
    out = []
    for pid in sorted(mine):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out.append((pid, cmd, every[pid][2], every[pid][3]))
    return out


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(v) - v[3] - v[4]) / TICK


def stage_of(cmd: str) -> str | None:
    parts = cmd.split()
    if "lumbar" in parts and "train" in parts and "--model" in parts:
        return parts[parts.index("--model") + 1]
    for name in ("synth", "preset", "export", "score", "predict"):
        if "lumbar" in parts and name in parts:
            return name
    if "build_kernel.py" in cmd:
        return "build"
    if "ipykernel_launcher" in cmd:  # the notebook's kernel (jupyter gives it a session of its own; its workers are its children)
        return "notebook"
    return None


class Monitor(threading.Thread):
    """Samples a process session every second: which stage runs (from the command lines), its processes'
    RSS and CPU, the machine's busy CPU, and polls the disk of `poll` (the notebook's TMPDIR)."""

    def __init__(self, sid: int, folders: dict[str, Path], poll: Path | None = None, kill: tuple[str, float] | None = None):
        super().__init__(daemon=True)
        self.sid, self.folders, self.poll, self.kill = sid, folders, poll, kill
        self.stages: dict[str, dict] = {}
        self.current: str | None = None
        self.stop = threading.Event()
        self.killed: str | None = None
        self.peak_poll = 0
        self.cpu_seen: dict[int, tuple[str, float]] = {}  # pid -> (stage, last cpu seconds)

    def _enter(self, name: str, t: float) -> None:
        if self.current and self.current in self.stages:
            self._leave(t)
        self.current = name
        self.stages.setdefault(name, {"start": t, "peak_rss_gb": 0.0, "peak_rss_sum_gb": 0.0, "busy0": machine_busy()})
        self.stages[name]["start_wall"] = t

    def _leave(self, t: float) -> None:
        s = self.stages[self.current]
        s["end"] = t
        s["seconds"] = round(t - s["start"], 1)
        s["cpu_s"] = round(sum(c for st, c in self.cpu_seen.values() if st == self.current), 1)
        busy = machine_busy() - s.pop("busy0", machine_busy())
        s["run_share_of_busy_cpu"] = round(s["cpu_s"] / busy, 3) if busy > 0 else None
        s["disk_after"] = {k: du(p) for k, p in self.folders.items()}

    def snapshot(self) -> dict[str, dict]:
        """The stages so far, the one running with its seconds and CPU up to now (its record is cut there)."""
        out = {k: dict(v) for k, v in self.stages.items()}
        if self.current in out and "seconds" not in out[self.current]:
            s = out[self.current]
            s["seconds"] = round(time.time() - s["start"], 1)
            s["cpu_s"] = round(sum(c for st, c in list(self.cpu_seen.values()) if st == self.current), 1)
            s.pop("busy0", None)
        return out

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            procs = proc_table(self.sid)
            names = [n for _, c, _, _ in procs if (n := stage_of(c))]
            if names and names[-1] != self.current:
                self._enter(names[-1], t)
            if self.current:
                s = self.stages[self.current]
                if procs:
                    s["peak_rss_gb"] = max(s["peak_rss_gb"], round(max(r for _, _, r, _ in procs) / 2 ** 30, 3))
                    s["peak_rss_sum_gb"] = max(s["peak_rss_sum_gb"], round(sum(r for _, _, r, _ in procs) / 2 ** 30, 3))
                for pid, _, _, cpu in procs:
                    self.cpu_seen[pid] = (self.current, cpu)
                if self.kill and self.current == self.kill[0] and t - s["start_wall"] >= self.kill[1] and not self.killed:
                    self.killed = f"{self.current} after {t - s['start_wall']:.0f}s"
                    os.killpg(self.sid, signal.SIGKILL)
                    for pid, _, _, _ in procs:  # descendants in sessions of their own
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
            if self.poll is not None:
                self.peak_poll = max(self.peak_poll, du(self.poll))
            self.stop.wait(1.0)
        if self.current:
            self._leave(time.time())


def run_step(root: Path, name: str, cmd: list[str], env: dict, folders: dict[str, Path], cwd: Path,
             kill: tuple[str, float] | None = None, poll: Path | None = None) -> dict:
    """One step's command in its own session, measured; raises SystemExit if it failed or was killed."""
    log = root / "log" / f"{name}.log"
    event(root, f"{name}: start: {' '.join(cmd)} (log {log})")
    t0, busy0 = time.time(), machine_busy()
    with open(log, "a") as f:
        f.write(f"\n===== {now()} {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
        mon = Monitor(p.pid, folders, poll, kill)
        mon.start()
        measure = root / "measure.json"
        before = json.loads(measure.read_text()) if measure.exists() else {}

        def save(rc, disk: bool) -> dict:
            # written every minute while the step runs (rc None): a step cut off with its session (hours of
            # train) keeps the stages it measured
            rec = {"command": " ".join(cmd), "rc": rc, "seconds": round(time.time() - t0, 1),
                   "machine_busy_cpu_s": round(machine_busy() - busy0, 1), "stages": mon.snapshot(),
                   "disk_after": {k: du(p) for k, p in folders.items()} if disk else {}, "finished": now()}
            if poll is not None:
                rec["peak_tmp_bytes"] = mon.peak_poll
            m = dict(before)
            m[name] = [*before.get(name, []), rec]
            tmp = measure.with_suffix(".tmp")
            tmp.write_text(json.dumps(m, indent=1))
            os.replace(tmp, measure)
            return rec
        while True:
            try:
                rc = p.wait(timeout=60)
                break
            except subprocess.TimeoutExpired:
                save(None, disk=False)
        mon.stop.set()
        mon.join()
    rec = save(rc, disk=True)
    if mon.killed:
        event(root, f"{name}: killed on purpose ({mon.killed}); run the same command again to resume")
        raise SystemExit(3)
    if rc != 0:
        event(root, f"{name}: failed (exit {rc}); see {log}")
        raise SystemExit(rc)
    event(root, f"{name}: done in {rec['seconds']:.0f}s")
    return rec


# What was projected for 1,975 studies before this run (docs/rehearsal.md: `make rehearsal` at 40 and 160
# full-size studies, tiny presets; bench/results/learning-curve: the curve's stage times, 2 folds, fitted
# a n^c from 25-400 studies). Peak RSS: the largest process, linear in n from 40 to 160 studies.
# (superres's curve times are erratic, 136 s at 200 studies and 23 s at 400, its patches capped: its fit is loose.)
PROJECTED = {
    "prior": {"rehearsal_h": 0.05, "curve_2fold_s": 0.1, "rss_gb": 0.75},
    "slice_select": {"rehearsal_h": 0.44, "curve_2fold_s": 1822, "rss_gb": 3.9},
    "crops": {"rehearsal_h": 0.23, "curve_2fold_s": 142, "rss_gb": 4.3},
    "superres": {"rehearsal_h": 0.92, "curve_2fold_s": 63, "rss_gb": 1.0},
    "multitask": {"rehearsal_h": 3.13, "curve_2fold_s": 1498, "rss_gb": 2.1},
    "sequence": {"rehearsal_h": 2.39, "curve_2fold_s": 1159, "rss_gb": 1.6},
    "ensemble": {"rehearsal_h": 0.10, "curve_2fold_s": 4.4, "rss_gb": 0.8},
}


def projected_seconds(stage: str, folds: int) -> float | None:
    """What was projected for a stage at 1,975 studies with these folds: the learning curve's 2-fold fit for
    2 folds, the rehearsal's (5 folds, `make train`'s default) otherwise."""
    p = PROJECTED.get(stage, {})
    if folds == 2:
        return p.get("curve_2fold_s")
    return p["rehearsal_h"] * 3600 if "rehearsal_h" in p else None


def report(root: Path) -> str:
    """measure.json as a table: every attempt of every stage, beside what was projected."""
    m = json.loads((root / "measure.json").read_text()) if (root / "measure.json").exists() else {}
    folds = State(root).d.get("folds", 5)
    basis = "the curve's 2-fold fit" if folds == 2 else "the rehearsal"
    rows = [f"The run's folds: {folds}; measured ÷ projected takes {basis}'s time.", "",
            "| step | stage | attempt | wall s | CPU s | the run's share of the machine's busy CPU | peak RSS GB "
            "(largest process / all) | projected: rehearsal h, curve 2-fold s, RSS GB | measured ÷ projected (time, RSS) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for step, attempts in m.items():
        for i, rec in enumerate(attempts, 1):
            ended = ("running, or cut off" if rec["rc"] is None else "killed" if rec["rc"] == -9
                     else "ok" if rec["rc"] == 0 else f"exit {rec['rc']}")
            tmp = f"; TMPDIR peak {rec['peak_tmp_bytes'] / 1e6:.2f} MB" if rec.get("peak_tmp_bytes") is not None else ""
            last = list(rec["stages"])[-1] if rec["stages"] else None
            for name, st in rec["stages"].items():
                ended_here = ended if name == last else "ok"  # the stages before the last one finished
                p = PROJECTED.get(name, {})
                proj = ", ".join(str(p[k]) if k in p else "-" for k in ("rehearsal_h", "curve_2fold_s", "rss_gb"))
                t = projected_seconds(name, folds)
                ratio = (f"{st['seconds'] / t:.2f}, {st['peak_rss_gb'] / p['rss_gb']:.2f}"
                         if p and t and ended_here == "ok" else "-")
                rows.append(f"| {step} | {name} | {i} ({ended_here}{tmp}) | {st['seconds']:.0f} | {st.get('cpu_s', 0):.0f} | "
                            f"{st.get('run_share_of_busy_cpu') or '-'} | {st['peak_rss_gb']:.2f} / {st['peak_rss_sum_gb']:.2f} | "
                            f"{proj} | {ratio} |")
            if not rec["stages"]:
                rows.append(f"| {step} | | {i} ({ended}{tmp}) | {rec['seconds']:.0f} | | | | | |")
    last = next((rec["disk_after"] for attempts in reversed(list(m.values())) for rec in reversed(attempts)), {})
    disk = ", ".join(f"{k} {v / 2 ** 30:.2f} GB" for k, v in last.items())
    return "\n".join(rows) + (f"\n\nDisk after the last step: {disk}\n" if disk else "\n")


NOTEBOOK = """
import sys, time
from pathlib import Path
try:
    from lumbar.commands.kaggle import kaggle_layout, run_notebook
except ImportError:  # the pinned checkout may be from before the commands/ folder
    from lumbar.kaggle import kaggle_layout, run_notebook
data, weights, where, kernel = map(Path, sys.argv[1:5])
inp, working = kaggle_layout(data, weights, where)
t = time.time()
res = run_notebook(kernel / "lumbar-inference.ipynb", inp, working, timeout=9 * 3600)
print(f"notebook: exit {res.returncode} in {time.time() - t:.0f}s"); print(res.stderr[-3000:])
sys.exit(res.returncode)
"""
SCORE = """
import json, sys
try:
    from lumbar.commands.demo import test_scores, format_test_scores
except ImportError:
    from lumbar.demo import test_scores, format_test_scores
s = test_scores(sys.argv[1], sys.argv[2], sys.argv[3]); print(format_test_scores(s)); print(json.dumps(s))
"""

ACCURACY = """
import json, sys
from pathlib import Path
import numpy as np, pandas as pd
from lumbar.commands.scoring import test_accuracy
from lumbar.infer.submission import submission_frame
from lumbar.layout import WeightsLayout
from lumbar.models.prior import load_prior
root, weights, n, folds, name, folder = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:7]
where = root / "accuracy" / name
nb = pd.read_csv(root / "notebook" / f"notebook{name}" / "working" / "submission.csv")
mine = pd.read_csv(where / "submission.csv")
frames = {"ensemble": nb, **{p.stem: pd.read_csv(p) for p in sorted((where / "per_model").glob("*.csv"))}}
prior = submission_frame(list(nb["row_id"]), {}, load_prior(weights / WeightsLayout.PRIOR))
r = test_accuracy(folder, frames, prior)
cols = ["normal_mild", "moderate", "severe"]
both = nb.merge(mine, on="row_id", suffixes=("", "_predict"))
r["notebook_vs_predict_max_abs_dp"] = float(np.abs(both[cols].to_numpy() - both[[c + "_predict" for c in cols]].to_numpy()).max())
for m, v in r["models"].items():
    d = f", minus multitask {v['minus_multitask']:+.4f} {v['minus_multitask_interval']}" if "minus_multitask" in v else ""
    print(f"{name} {m}: {v['score']:.4f} {v['interval']} gap {v['gap_closed']:.3f} {v['gap_closed_interval']}{d}")
path = root / "accuracy.json"
out = json.loads(path.read_text()) if path.exists() else {}
out[name] = r
path.write_text(json.dumps(out, indent=1))
if name == "_rtest100":  # the learning curve's own test studies: its point at this n
    pt = {"n": n, "folds": folds, "oracle": r["oracle"], "prior": r["prior"],
          "models": {m: {"score": v["score"], "interval": v["interval"]} for m, v in r["models"].items()}}
    (root / "curve_point.json").write_text(json.dumps(pt, indent=1))
"""


def redo_steps(st: State, root: Path, redo: str) -> None:
    """--redo STEP[,STEP]: those steps count as not done (said in events.log); the others keep their state."""
    names = [s for s in redo.split(",") if s]
    unknown = [s for s in names if s not in STEPS]
    if unknown:
        raise SystemExit(f"--redo {redo}: no step {', '.join(unknown)} (the steps: {', '.join(STEPS)})")
    if names:
        done = [s for s in names if st.d["steps"].get(s) == "done"]
        event(root, f"redo: {', '.join(names)} (done before: {', '.join(done) or 'none'})")
        for s in names:
            st.d["steps"].pop(s, None)
        st.save()


def train_args(state: dict) -> list[str]:
    """make train's arguments beyond the data: the folds the run was told (the fallback), else its defaults."""
    return [f"FOLDS={state['folds']}"] if state.get("folds") else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(HERE.parent / "lumbar-real-scale"),
                    help="the run's folder, outside the work tree (found again by the next session)")
    ap.add_argument("--venv", default=str(HERE / ".venv"), help="the venv whose Python runs every step")
    ap.add_argument("--commit", default="HEAD", help="the commit a new run pins (a resumed run keeps its own)")
    ap.add_argument("--repin", default="", help="COMMIT: move a run's code to this commit (data, cache and the "
                    "run folder kept; make train retrains a stage whose request changed, resumes the rest)")
    ap.add_argument("--kill", default="", help="STAGE:SECONDS: kill the run that long into STAGE, on purpose")
    ap.add_argument("--studies", type=int, nargs=2, default=(TRAIN, TEST), metavar=("TRAIN", "TEST"),
                    help="the folder's training and test studies (a smaller run: tests)")
    ap.add_argument("--folds", type=int, default=0, help="N: make train FOLDS=N from now on (kept in state.json; "
                    "the issue's fallback is 2 when 5 folds cannot finish in the sessions there are)")
    ap.add_argument("--redo", default="", help="STEP[,STEP]: run these finished steps again (with --repin: a scoring "
                    "fix; what they wrote is replaced, the steps before them kept)")
    ap.add_argument("--until", default="", help="stop after this step (data, train, score, kernel, notebook)")
    ap.add_argument("--report", action="store_true", help="print measure.json as a table (measured beside projected)")
    a = ap.parse_args(argv)
    root = Path(a.root)
    if a.report:
        print(report(root))
        return 0
    (root / "log").mkdir(parents=True, exist_ok=True)
    st = State(root)
    repo, py = root / "repo", Path(a.venv) / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py}: no venv there (make setup first)")
    kill = (a.kill.split(":")[0], float(a.kill.split(":")[1])) if a.kill else None
    if "commit" not in st.d:
        if repo.exists():
            raise SystemExit(f"{repo} exists but {st.path} names no commit: move it away or pass a fresh --root")
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", a.commit], capture_output=True, text=True,
                                check=True).stdout.strip()
        subprocess.run(["git", "clone", "-q", str(HERE), str(repo)], check=True)
        subprocess.run(["git", "-C", str(repo), "checkout", "-q", commit], check=True)
        st.d["commit"], st.d["started"] = commit, now()
        st.save()
        event(root, f"new run at {commit} in {root} (no earlier run found there)")
    else:
        if a.repin:  # a fix the run needs to get through (say why in events.log): the clone moves, nothing else
            new = subprocess.run(["git", "-C", str(HERE), "rev-parse", a.repin], capture_output=True, text=True,
                                 check=True).stdout.strip()
            subprocess.run(["git", "-C", str(repo), "fetch", "-q", str(HERE)], check=True)
            subprocess.run(["git", "-C", str(repo), "checkout", "-q", new], check=True)
            st.d.setdefault("pins", []).append({"from": st.d["commit"], "to": new, "at": now()})
            event(root, f"re-pinned from {st.d['commit'][:10]} to {new[:10]}: data, cache and run folder kept")
            st.d["commit"] = new
            st.save()
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        if head != st.d["commit"]:
            raise SystemExit(f"{repo} is at {head}, the run is pinned to {st.d['commit']}")
        done = [k for k, v in st.d["steps"].items() if v == "done"]
        event(root, f"resuming the run pinned at {st.d['commit'][:10]}; done: {', '.join(done) or 'nothing yet'}")
    if a.folds and a.folds != st.d.get("folds"):
        # every stage of a run shares its split (runs/default/folds.csv): another split is another run folder
        runs = repo / "runs"
        event(root, f"folds: {st.d.get('folds', 'the default')} -> {a.folds} (make train FOLDS={a.folds}); "
                    f"{'the run folder trained with the others removed, ' if runs.exists() else ''}data and cache kept")
        subprocess.run(["rm", "-rf", str(runs)], check=True)
        st.d["folds"] = a.folds
        st.d["steps"] = {k: v for k, v in st.d["steps"].items() if k in ("checkout", "data")}
        st.save()
    redo_steps(st, root, a.redo)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"PYTHONPATH": str(repo / "src"), "PYTHONUNBUFFERED": "1", "LUMBAR_PROGRESS": "0"})
    data, rtest = root / "data" / "real1975", root / "data" / "rtest100"
    folders = {"data": data, "rtest100": rtest, "cache": repo / "cache", "run": repo / "runs", "weights": repo / "weights",
               "kernel": repo / "kernel", "reports": repo / "reports", "notebook": root / "notebook"}
    make = ["make", "-o", f"{a.venv}/.installed", f"VENV={a.venv}", f"DATA={data}"]

    def step(name: str, fn) -> None:
        if st.d["steps"].get(name) == "done":
            return
        fn()
        st.d["steps"][name] = "done"
        st.save()
        if a.until == name:
            raise SystemExit(0)

    def synth(out: Path, train: int, test: int, seed: int, name: str, scale: float = 0.5) -> None:
        if out.exists():  # renamed into place only when complete
            event(root, f"{name}: {out} exists (complete); kept")
            return
        part = out.with_name(out.name + ".partial")
        subprocess.run(["rm", "-rf", str(part)], check=True)
        run_step(root, name, [str(py), "-m", "lumbar", "synth", "--out", str(part), "--studies", str(train),
                              "--test-studies", str(test), "--profile", "real", "--size-scale", str(scale),
                              "--seed", str(seed)], env, folders, repo)
        part.rename(out)

    step("data", lambda: (synth(data, *a.studies, SEED, "data"), synth(rtest, 8, 100, 11, "rtest100")))
    step("train", lambda: run_step(root, "train", make + ["train", *train_args(st.d)], env, folders, repo, kill))
    step("score", lambda: run_step(root, "score", make + ["local-score"], env, folders, repo))
    step("kernel", lambda: run_step(root, "kernel", make + ["kernel"], env, folders, repo))

    def notebook(name: str, folder: Path) -> None:
        where, tmp = root / "notebook" / name, root / "notebook" / f"{name}.tmp"
        subprocess.run(["rm", "-rf", str(where), str(tmp)], check=True)
        tmp.mkdir(parents=True)
        e = dict(env, TMPDIR=str(tmp))
        run_step(root, name, [str(py), "-c", NOTEBOOK, str(folder), str(repo / "weights"), str(where),
                              str(repo / "kernel")], e, folders, repo, poll=tmp)
        run_step(root, f"{name}_score", [str(py), "-c", SCORE, str(folder), str(where / "working" / "submission.csv"),
                                         str(repo / "weights")], env, folders, repo)

    def accuracy(name: str, folder: Path) -> None:  # each model's own submission (predict --per-model-dir), scored
        where = root / "accuracy" / name
        run_step(root, f"per_model{name}", [str(py), "-m", "lumbar", "predict", "--data", str(folder), "--weights",
                                             str(repo / "weights"), "--out", str(where / "submission.csv"),
                                             "--per-model-dir", str(where / "per_model"), "--workers", "2"],
                 env, folders, repo)
        run_step(root, f"accuracy{name}", [str(py), "-c", ACCURACY, str(root), str(repo / "weights"), str(a.studies[0]),
                                           str(st.d.get("folds", 5)), name, str(folder)], env, folders, repo)
    # the curve's 100 studies first (its point at this n, the paired difference: minutes), then the 700
    step("notebook_rtest100", lambda: notebook("notebook_rtest100", rtest))
    step("accuracy_rtest100", lambda: accuracy("_rtest100", rtest))
    step("notebook700", lambda: notebook("notebook700", data))
    step("accuracy_700", lambda: accuracy("700", data))
    # the temporary disk at full size, measured rather than scaled from half size (item 4)
    full = root / "data" / f"full{FULL_TEST}"
    step("notebook_fullsize", lambda: (synth(full, 2, FULL_TEST, 13, "fullsize", 1.0), notebook("notebook_fullsize", full)))
    event(root, "the run is complete: measure.json, log/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
