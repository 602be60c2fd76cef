"""Run the built kernel the way Kaggle does, here: inputs mounted read-only-ish under input/, outputs in
working/, no network (a network namespace with only loopback, which the Jupyter kernel needs)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

COMPETITION = "rsna-2024-lumbar-spine-degenerative-classification"
_RUNNER = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=int(sys.argv[3]), kernel_name="python3",
               resources={"metadata": {"path": sys.argv[4]}}).execute()
nbformat.write(nb, sys.argv[2])
"""


def kaggle_layout(data: str | Path, weights: str | Path, root: str | Path) -> tuple[Path, Path]:
    """root/input/<competition>/ (the test split of `data`, linked) and root/input/lumbar-weights/ (a copy),
    plus an empty root/working/. Returns (input, working)."""
    from ..data.catalog import find_root

    data, root = find_root(data), Path(root)
    comp = root / "input" / COMPETITION
    comp.mkdir(parents=True, exist_ok=True)
    for name in ("test_images", "test_series_descriptions.csv", "sample_submission.csv"):
        if (data / name).exists() and not (comp / name).exists():
            (comp / name).symlink_to((data / name).resolve())
    dst = root / "input" / "lumbar-weights"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(weights, dst)
    working = root / "working"
    working.mkdir(parents=True, exist_ok=True)
    return root / "input", working


def offline_prefix() -> list[str]:
    """The command prefix that cuts the network (unshare -rn, loopback up), or [] where it is unavailable."""
    if shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    return []


def run_notebook(notebook: str | Path, input_dir: str | Path, working: str | Path, timeout: int = 1800,
                 offline: bool = True, env: dict | None = None, python: str | Path | None = None
                 ) -> subprocess.CompletedProcess:
    """Execute the notebook headlessly (nbclient) with the LUMBAR_KAGGLE_* roots pointing at input_dir and
    working, without src/ on the path; the executed copy is written next to the submission. `python`: the
    interpreter of another environment (an image's venv: its nbclient starts its own kernel), else this one."""
    working, notebook = Path(working).resolve(), Path(notebook).resolve()  # it runs with working as cwd
    prefix = offline_prefix() if offline else []
    if offline and not prefix:
        raise RuntimeError("cannot cut the network here (no `unshare -rn`); run with offline=False")
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.update({"LUMBAR_KAGGLE_INPUT": str(Path(input_dir).resolve()), "LUMBAR_KAGGLE_WORKING": str(working.resolve()),
              "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    e.update(env or {})
    cmd = prefix + [str(python or sys.executable), "-c", _RUNNER, str(notebook), str(working / "executed.ipynb"), str(timeout),
                    str(working)]
    return subprocess.run(cmd, env=e, capture_output=True, text=True, cwd=str(working))
