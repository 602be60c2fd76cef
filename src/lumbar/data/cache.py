"""Per-study cache: `cache/<version>/<study_id>/<name>.npz`, written atomically, never trusted blindly.

The version is a hash of the preprocessing config, so changing how something is computed starts a
fresh cache instead of mixing old and new entries. An entry that fails to load (truncated by a kill,
corrupted on disk) is deleted and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..files import write_npz


def config_hash(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (configs, version numbers)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


# A study's decoded volumes are as large as its DICOM (uint16, uncompressed): kept on disk they double what
# a training run needs (18 GB more at 1,975 half-size studies, 57 GB at full size), to save a decode of a
# fraction of a second each time a stage reads a series. So "vol_" entries are made in memory and not
# written, unless LUMBAR_CACHE_VOLUMES=1 (an entry already on disk is still read: it is the same arrays).
VOLUME_PREFIX = "vol_"
KEEP_VOLUMES_ENV = "LUMBAR_CACHE_VOLUMES"


def volumes_kept() -> bool:
    """Whether caches opened now write decoded volumes (LUMBAR_CACHE_VOLUMES=1), else not (the default)."""
    value = os.environ.get(KEEP_VOLUMES_ENV, "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{KEEP_VOLUMES_ENV}={value!r}: expected 0 (decoded volumes stay in memory) or 1 (cached)")
    return value == "1"


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz file, fully read (so a truncated member fails here, not later)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class StudyCache:
    def __init__(self, root: str | Path | None, version: str, keep_volumes: bool | None = None):
        self.root = Path(root) / version if root is not None else None
        self.version = version
        self.keep_volumes = volumes_kept() if keep_volumes is None else keep_volumes
        self.hits = 0
        self.misses = 0

    def path(self, study_id: int, name: str) -> Path:
        if self.root is None:
            raise ValueError("cache is disabled")
        return self.root / str(study_id) / f"{name}.npz"

    def load(self, study_id: int, name: str) -> dict[str, np.ndarray] | None:
        if self.root is None:
            return None
        path = self.path(study_id, name)
        if not path.exists():
            return None
        try:
            return load_npz(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            warnings.warn(f"{path}: corrupt cache entry ({type(e).__name__}); rebuilding", stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def writes(self, name: str) -> bool:
        """Whether an entry of this name is written to disk when built (decoded volumes only if kept)."""
        return self.root is not None and (self.keep_volumes or not name.startswith(VOLUME_PREFIX))

    def save(self, study_id: int, name: str, arrays: dict[str, np.ndarray]) -> None:
        if self.writes(name):
            write_npz(self.path(study_id, name), arrays)

    def drop(self, study_id: int) -> None:
        """Every entry of one study removed (inference: once its inputs are made, nothing reads them)."""
        if self.root is not None:
            shutil.rmtree(self.root / str(study_id), ignore_errors=True)

    def get(self, study_id: int, name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The cached entry, or build() saved as the entry."""
        hit = self.load(study_id, name)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        arrays = build()
        self.save(study_id, name, arrays)
        return arrays


class CachedEntries:
    """A list of per-study cache entries that reads each back from disk when it is accessed: a training
    set over it holds (study, name) keys, not pixels, so memory does not grow with the number of
    studies. `take(idx)` is a subset, still lazy."""

    def __init__(self, cache: StudyCache, keys: list[tuple[int, str]]):
        if cache.root is None:
            raise ValueError("CachedEntries needs a cache folder")
        self.cache, self.keys = cache, list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        study_id, name = self.keys[i]
        hit = self.cache.load(study_id, name)
        if hit is None:
            raise FileNotFoundError(f"{self.cache.path(study_id, name)}: cache entry missing or unreadable (it was "
                                    "written earlier in this stage; was the cache folder removed?)")
        return hit

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def take(self, idx) -> "CachedEntries":
        return CachedEntries(self.cache, [self.keys[int(i)] for i in idx])


def take(entries, idx):
    """A subset of entries: lazy for CachedEntries, a list otherwise."""
    return entries.take(idx) if isinstance(entries, CachedEntries) else [entries[int(i)] for i in idx]
