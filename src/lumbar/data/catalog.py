"""Competition folder -> Study records, and a validator that names every problem with file and line."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import schema

TRAIN_CSV = "train.csv"
COORDS_CSV = "train_label_coordinates.csv"
TRAIN_SERIES_CSV = "train_series_descriptions.csv"
TEST_SERIES_CSV = "test_series_descriptions.csv"
SAMPLE_CSV = "sample_submission.csv"
HEADERS = {
    TRAIN_CSV: ["study_id", *schema.LABEL_COLUMNS],
    COORDS_CSV: ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"],
    TRAIN_SERIES_CSV: ["study_id", "series_id", "series_description"],
    TEST_SERIES_CSV: ["study_id", "series_id", "series_description"],
    SAMPLE_CSV: ["row_id", *schema.PROB_COLUMNS],
}


class CatalogError(ValueError):
    """The competition folder cannot be read; the message names the file."""


@dataclass
class SeriesRecord:
    series_id: int
    description: str
    path: Path


@dataclass
class Study:
    study_id: int
    series: dict[str, list[SeriesRecord]]  # series type -> series (0..n of each type)
    labels: np.ndarray | None = None  # int [25], -1 where missing; None for test studies
    coords: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HEADERS[COORDS_CSV]))
    fold: int = -1

    def series_of(self, series_type: str) -> list[SeriesRecord]:
        return self.series.get(series_type, [])

    @property
    def has_coords(self) -> bool:
        return len(self.coords) > 0

    @property
    def missing_types(self) -> list[str]:
        return [t for t in schema.SERIES_TYPES if not self.series_of(t)]


def find_root(path: str | Path) -> Path:
    """The folder holding the competition CSVs (accepts the folder itself or one level above)."""
    path = Path(path)
    if (path / TEST_SERIES_CSV).exists() or (path / TRAIN_CSV).exists():
        return path
    for child in sorted(path.glob("*/")) if path.is_dir() else []:
        if (child / TEST_SERIES_CSV).exists():
            return child
    raise CatalogError(f"{path}: not a competition folder (no {TRAIN_CSV} or {TEST_SERIES_CSV} found)")


def read_csv(path: Path, required: bool = True) -> pd.DataFrame | None:
    if not path.exists():
        if required:
            raise CatalogError(f"{path}: file not found")
        return None
    try:
        frame = pd.read_csv(path)
    except Exception as e:
        raise CatalogError(f"{path}: cannot be parsed as CSV ({e})") from None
    expected = HEADERS.get(path.name)
    if expected is not None:
        missing = [c for c in expected if c not in frame.columns]
        if missing:
            raise CatalogError(f"{path}: header lacks columns {missing}")
    return frame


def read_labels(root: str | Path) -> pd.DataFrame:
    """train.csv, checked: integer study ids, known severity names."""
    path = Path(root) / TRAIN_CSV
    frame = read_csv(path)
    bad = _label_problems(frame, path)
    if bad:
        raise CatalogError(bad[0].text())
    return frame


def load_studies(root: str | Path, split: str = "train", folds: dict[int, int] | None = None,
                 strict: bool = False) -> list[Study]:
    """Every study of a split ('train' or 'test') with its series, labels and coordinates.

    Unknown series descriptions and series missing on disk are skipped with a warning (strict=True
    raises instead); inference must go on whatever the folder holds.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = find_root(root)
    images = root / f"{split}_images"
    series_df = read_csv(root / (TRAIN_SERIES_CSV if split == "train" else TEST_SERIES_CSV))
    study_ids: list[int] = list(dict.fromkeys(int(s) for s in series_df["study_id"]))
    labels = coords = None
    if split == "train":
        labels = read_labels(root)
        study_ids = list(dict.fromkeys([*map(int, labels["study_id"]), *study_ids]))
        coords = read_csv(root / COORDS_CSV, required=False)
    else:
        sample = read_csv(root / SAMPLE_CSV, required=False)
        if sample is not None and len(sample):
            extra = [schema.parse_row_id(r)[0] for r in sample["row_id"]]
            study_ids = list(dict.fromkeys([*study_ids, *extra]))

    by_study: dict[int, dict[str, list[SeriesRecord]]] = {s: {} for s in study_ids}
    listed: set[tuple[int, int]] = set()
    for row in series_df.itertuples(index=False):
        sid, ser, desc = int(row.study_id), int(row.series_id), str(row.series_description)
        path = images / str(sid) / str(ser)
        listed.add((sid, ser))
        problem = None
        if not path.is_dir():
            problem = f"series folder {path} does not exist"
        else:
            desc, problem = _reconcile(sid, ser, desc, path)
        if problem:
            if strict:
                raise CatalogError(f"{root / (TRAIN_SERIES_CSV if split == 'train' else TEST_SERIES_CSV)}: {problem}")
            warnings.warn(f"study {sid}: {problem}; skipped", stacklevel=2)
            continue
        by_study.setdefault(sid, {}).setdefault(desc, []).append(SeriesRecord(ser, desc, path))
    for sid in study_ids:  # series folders the CSV does not list: typed from their files
        for path in sorted(p for p in (images / str(sid)).glob("*") if p.is_dir() and p.name.isdigit()):
            if (sid, int(path.name)) in listed:
                continue
            stype = series_type(file_description(path) or "")
            if stype is None:
                warnings.warn(f"study {sid}: series folder {path} is not in the CSV and its files name no known "
                              "series type; skipped", stacklevel=2)
                continue
            warnings.warn(f"study {sid}: series {path.name} is not in the CSV; its files say {stype!r}", stacklevel=2)
            by_study.setdefault(sid, {}).setdefault(stype, []).append(SeriesRecord(int(path.name), stype, path))

    label_arr = {}
    if labels is not None:
        from ..metric import labels_to_array
        arr = labels_to_array(labels)
        label_arr = {int(s): arr[i] for i, s in enumerate(labels["study_id"])}
    coord_groups = {int(k): g.reset_index(drop=True) for k, g in coords.groupby("study_id")} if coords is not None else {}
    studies = []
    for sid in study_ids:
        st = Study(study_id=sid, series=by_study.get(sid, {}), labels=label_arr.get(sid))
        if split == "train" and st.labels is None:
            st.labels = np.full(schema.N_LABELS, -1, dtype=np.int64)
        if sid in coord_groups:
            st.coords = coord_groups[sid]
        if folds is not None:
            st.fold = int(folds.get(sid, -1))
        studies.append(st)
    return studies


def series_type(text: str) -> str | None:
    """The series type a free-text description names ("Sagittal T1", "SAG T2 STIR", "AX T2"), or None."""
    t = " ".join(str(text).lower().replace("_", " ").replace("/", " ").split())
    for known in schema.SERIES_TYPES:
        if t == " ".join(known.lower().replace("/", " ").split()):
            return known
    words = set(t.replace("-", " ").split())
    sag = any(w.startswith("sag") for w in words)
    axial = any(w.startswith(("ax", "tra")) for w in words)
    if sag and not axial and "t1" in words:
        return schema.SAG_T1
    if sag and not axial and ("t2" in words or "stir" in words):
        return schema.SAG_T2
    if axial and not sag and "t2" in words:
        return schema.AXIAL
    return None


def file_description(folder: Path) -> str | None:
    """SeriesDescription (0008,103E) of a series folder's first file, or None (no file, no tag, unreadable)."""
    import pydicom

    # Regular files only: this runs in the main process, before the workers and their deadlines, and a
    # FIFO named .dcm (or any special file) would block it forever.
    files = sorted((p for p in folder.glob("*.dcm") if p.is_file()), key=lambda p: (len(p.stem), p.stem))
    for path in files[:3]:  # a damaged first file should not hide the tag of the next
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SeriesDescription"])
            value = getattr(ds, "SeriesDescription", None)
            return str(value) if value else None
        except Exception:
            continue
    return None


def _reconcile(sid: int, ser: int, desc: str, path: Path) -> tuple[str, str | None]:
    """(series type, problem or None) from the CSV's description and the files' own tag: the files win
    where they name a known type and disagree (the hidden test has descriptions that do not match)."""
    from_files = series_type(file_description(path) or "")
    if from_files is not None and from_files != desc:
        what = f"listed as {desc!r}" if desc in schema.SERIES_TYPES else f"with unknown description {desc!r}"
        warnings.warn(f"study {sid}: series {ser} is {what} in the CSV but its files say {from_files!r}; "
                      "the files win", stacklevel=3)
        return from_files, None
    if desc not in schema.SERIES_TYPES:
        return desc, f"unknown series description {desc!r} for series {ser}"
    return desc, None


@dataclass
class Problem:
    file: str
    line: int | None
    message: str

    def text(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


def _label_problems(frame: pd.DataFrame, path: Path) -> list[Problem]:
    out = []
    sid = pd.to_numeric(frame["study_id"], errors="coerce")
    for i in np.flatnonzero(sid.isna().to_numpy()):
        out.append(Problem(str(path), int(i) + 2, f"study_id {frame['study_id'].iloc[i]!r} is not an integer"))
    for i in np.flatnonzero(frame["study_id"].duplicated().to_numpy()):
        out.append(Problem(str(path), int(i) + 2, f"study_id {frame['study_id'].iloc[i]} appears twice"))
    for col in schema.LABEL_COLUMNS:
        if col not in frame.columns:
            continue
        v = frame[col]
        bad = v.notna() & ~v.isin(schema.SEVERITIES)
        for i in np.flatnonzero(bad.to_numpy()):
            out.append(Problem(str(path), int(i) + 2, f"{col}: {v.iloc[i]!r} is not one of {list(schema.SEVERITIES)}"))
    return out


def validate(root: str | Path) -> list[Problem]:
    """Every problem in a competition folder, each with its file and line (line 1 is the header)."""
    root = Path(root)
    problems: list[Problem] = []
    frames: dict[str, pd.DataFrame] = {}
    for name, header in HEADERS.items():
        path = root / name
        if not path.exists():
            problems.append(Problem(str(path), None, "file not found"))
            continue
        try:
            frame = pd.read_csv(path)
        except Exception as e:
            problems.append(Problem(str(path), None, f"cannot be parsed as CSV ({e})"))
            continue
        if list(frame.columns) != header:
            missing = [c for c in header if c not in frame.columns]
            extra = [c for c in frame.columns if c not in header]
            problems.append(Problem(str(path), 1, f"header differs from the competition's: missing {missing}, unexpected {extra}"))
            if missing:
                continue
        frames[name] = frame

    if TRAIN_CSV in frames:
        problems += _label_problems(frames[TRAIN_CSV], root / TRAIN_CSV)
    for name, split in ((TRAIN_SERIES_CSV, "train"), (TEST_SERIES_CSV, "test")):
        if name in frames:
            problems += _series_problems(frames[name], root / name, root / f"{split}_images", split)
    if COORDS_CSV in frames:
        problems += _coord_problems(frames[COORDS_CSV], root, frames)
    if SAMPLE_CSV in frames:
        problems += _sample_problems(frames[SAMPLE_CSV], root / SAMPLE_CSV, frames.get(TEST_SERIES_CSV))
    if TRAIN_CSV in frames and TRAIN_SERIES_CSV in frames:
        labelled = set(pd.to_numeric(frames[TRAIN_CSV]["study_id"], errors="coerce").dropna().astype(int))
        with_series = set(frames[TRAIN_SERIES_CSV]["study_id"].astype(int))
        for s in sorted(labelled - with_series):
            problems.append(Problem(str(root / TRAIN_SERIES_CSV), None, f"study {s} of {TRAIN_CSV} has no series"))
        for s in sorted(with_series - labelled):
            problems.append(Problem(str(root / TRAIN_CSV), None, f"study {s} has series but no labels row"))
    return problems


def _series_problems(frame: pd.DataFrame, path: Path, images: Path, split: str = "train") -> list[Problem]:
    out = []
    listed = set()
    for i, row in enumerate(frame.itertuples(index=False)):
        line = i + 2
        if row.series_description not in schema.SERIES_TYPES:
            out.append(Problem(str(path), line, f"unknown series_description {row.series_description!r}"))
        folder = images / str(row.study_id) / str(row.series_id)
        listed.add((str(row.study_id), str(row.series_id)))
        if not folder.is_dir():
            out.append(Problem(str(path), line, f"series folder {folder} does not exist"))
        elif not any(folder.glob("*.dcm")) and split == "train":  # the hidden test has empty folders: inference copes
            out.append(Problem(str(path), line, f"series folder {folder} holds no .dcm files"))
    if (frame[["study_id", "series_id"]].duplicated()).any():
        for i in np.flatnonzero(frame[["study_id", "series_id"]].duplicated().to_numpy()):
            out.append(Problem(str(path), int(i) + 2, "series listed twice"))
    if images.is_dir():
        for study_dir in sorted(p for p in images.iterdir() if p.is_dir()):
            for series_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
                if (study_dir.name, series_dir.name) not in listed:
                    out.append(Problem(str(series_dir), None, f"series on disk is not listed in {path.name}"))
    return out


def _coord_problems(frame: pd.DataFrame, root: Path, frames: dict) -> list[Problem]:
    out = []
    path = root / COORDS_CSV
    series = frames.get(TRAIN_SERIES_CSV)
    known = {}
    if series is not None:
        known = {(int(r.study_id), int(r.series_id)): r.series_description for r in series.itertuples(index=False)}
    for i, row in enumerate(frame.itertuples(index=False)):
        line = i + 2
        if row.condition not in schema.CONDITION_NAMES:
            out.append(Problem(str(path), line, f"unknown condition {row.condition!r}"))
        if row.level not in schema.LEVEL_NAMES:
            out.append(Problem(str(path), line, f"unknown level {row.level!r}"))
        try:
            x, y = float(row.x), float(row.y)
            if not (np.isfinite(x) and np.isfinite(y)) or x < 0 or y < 0:
                out.append(Problem(str(path), line, f"coordinates ({row.x}, {row.y}) are not non-negative numbers"))
        except (TypeError, ValueError):
            out.append(Problem(str(path), line, f"coordinates ({row.x}, {row.y}) are not numbers"))
        key = (int(row.study_id), int(row.series_id))
        if series is not None and key not in known:
            out.append(Problem(str(path), line, f"series {row.series_id} of study {row.study_id} is not in {TRAIN_SERIES_CSV}"))
            continue
        dcm = root / "train_images" / str(row.study_id) / str(row.series_id) / f"{row.instance_number}.dcm"
        if not dcm.exists():
            out.append(Problem(str(path), line, f"instance file {dcm} does not exist"))
    return out


def _sample_problems(frame: pd.DataFrame, path: Path, test_series: pd.DataFrame | None) -> list[Problem]:
    out = []
    studies = []
    for i, rid in enumerate(frame["row_id"]):
        try:
            studies.append(schema.parse_row_id(str(rid))[0])
        except ValueError as e:
            out.append(Problem(str(path), i + 2, str(e)))
    if test_series is not None:
        listed = set(test_series["study_id"].astype(int))
        for s in sorted(set(studies) - listed):
            out.append(Problem(str(path), None, f"study {s} has rows but no series in {TEST_SERIES_CSV}"))
        counts = pd.Series(studies).value_counts()
        for s, n in counts.items():
            if n != schema.N_LABELS:
                out.append(Problem(str(path), None, f"study {s} has {n} rows, expected {schema.N_LABELS}"))
    return out
