"""weights/: every artefact inference needs, listed in manifest.json with its sha256.

`Weights(folder)` opens a folder that train/export.py wrote, refusing any file whose sha256 differs
from the manifest: a half-uploaded or stale file would otherwise give a silently wrong submission,
and Kaggle's hidden run shows nothing but the score.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import platform
from pathlib import Path

from ..layout import WeightsLayout

MANIFEST = WeightsLayout.MANIFEST
MANIFEST_VERSION = 1


class WeightsError(ValueError):
    """A weights folder that cannot be used: the message names the file and what is wrong."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Weights:
    """An exported weights folder: its manifest, and its files checked against their sha256."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.exists():
            raise WeightsError(f"{path}: no manifest; this is not a weights folder written by `make train` "
                               "(run `make train` or `make demo` first)")
        try:
            self.manifest = json.loads(path.read_text())
            self.artefacts = {a["path"]: a for a in self.manifest["artefacts"]}
        except (ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{path}: unreadable manifest ({e})") from None
        self._checked: set[str] = set()

    def has(self, rel: str) -> bool:
        return rel in self.artefacts

    def file(self, rel: str) -> Path:
        """The path of an artefact after checking its sha256 against the manifest."""
        if rel not in self.artefacts:
            raise WeightsError(f"{self.folder / MANIFEST}: lists no artefact {rel!r}")
        path = self.folder / rel
        if rel not in self._checked:
            if not path.exists():
                raise WeightsError(f"{path}: listed in {MANIFEST} but missing")
            got, want = sha256(path), self.artefacts[rel]["sha256"]
            if got != want:
                raise WeightsError(f"{path}: sha256 {got[:12]}… differs from {MANIFEST}'s {want[:12]}…; the file "
                                   "changed after export (re-run `make train`, or re-download the weights dataset)")
            self._checked.add(rel)
        return path

    def folds(self, model: str) -> list[tuple[int, Path]]:
        """(fold, checked path) of every fold of a torch model, in fold order."""
        items = sorted((a["fold"], p) for p, a in self.artefacts.items() if a["kind"] == model)
        return [(k, self.file(p)) for k, p in items]

    def config(self, model: str) -> dict:
        return self.manifest.get("models", {}).get(model, {}).get("config", {})

    def check_all(self) -> None:
        for rel in self.artefacts:
            self.file(rel)


# Libraries whose version is recorded at export, by import name. How much of a difference is worth
# saying: "minor" where a serialised format, an estimator's arithmetic or a model definition can change
# between minor releases, "" for information. Saying is all it does: each artefact's probe decides
# whether it is used (infer/probes.py); nothing in a weights folder is a pickle.
LIBRARIES = {"numpy": "minor", "sklearn": "minor", "xgboost": "minor", "torch": "minor", "timm": "minor",
             "scipy": "", "pandas": "", "pydicom": "", "skimage": "", "cv2": "", "PIL": ""}


def library_versions() -> dict[str, str]:
    """The installed version of every library inference depends on ("missing" where absent)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except Exception:  # a missing library is worth recording, not failing over
            out[name] = "missing"
    return out


ARTEFACT_LIBRARIES = ("python", "numpy", "sklearn", "xgboost", "torch", "timm")
PREPROCESSING_LIBRARIES = ("python", "numpy", "cv2", "skimage", "scipy", "pydicom")


def versions_said(recorded: dict[str, str], installed: dict[str, str] | None = None,
                  names: tuple[str, ...] = ARTEFACT_LIBRARIES) -> str:
    """'exported with python 3.11.7, numpy 1.26.4, ...; here python 3.12.1, numpy 2.0.2, ...' over the
    libraries a model artefact's arithmetic depends on (or `names`: the preprocessing's)."""
    installed = installed if installed is not None else library_versions()

    def said(v: dict) -> str:
        return ", ".join(f"{n} {v.get(n, '?')}" for n in names)

    return f"exported with {said(recorded)}; here {said(installed)}"


def _release(version: str, parts: int) -> tuple:
    nums = []
    for piece in version.split("+")[0].split(".")[:parts]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        nums.append(int(digits) if digits else 0)
    return tuple(nums)


def version_report(recorded: dict[str, str], installed: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """(a table of every library: trained with, installed here; the differences that matter, in words)."""
    installed = installed if installed is not None else library_versions()
    rows, problems = [f"{'library':<10} {'trained':<16} {'installed':<16}"], []
    for name in ["python", *LIBRARIES]:
        want, have = recorded.get(name, "?"), installed.get(name, "?")
        rule = LIBRARIES.get(name, "")
        mark = ""
        if want not in ("?", "missing") and want != have:
            if have == "missing":
                mark = "MISSING"
            elif rule == "minor" and _release(want, 2) != _release(have, 2):
                mark = "DIFFERS"
        if mark:
            what = {"sklearn": "the selector members' probes decide", "numpy": "every artefact's probe decides",
                    "xgboost": "the XGBoost members' probes decide", "torch": "each fold's probe decides",
                    "timm": "each fold's probe decides (a changed backbone definition fails it)"}
            problems.append(f"{name}: trained with {want}, installed {have}: "
                            f"{what.get(name, 'inference needs it') if mark == 'DIFFERS' else 'not installed'}")
        rows.append(f"{name:<10} {want:<16} {have:<16} {mark}".rstrip())
    return "\n".join(rows), problems
