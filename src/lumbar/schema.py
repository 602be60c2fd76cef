"""The competition's vocabulary: conditions, levels, severities, label columns and row ids.

Everything else in the package names labels through this module, so the order of the 25 columns
(train.csv's order) is defined exactly once.
"""
from __future__ import annotations

CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
# As written in train_label_coordinates.csv.
CONDITION_NAMES: tuple[str, ...] = (
    "Spinal Canal Stenosis",
    "Left Neural Foraminal Narrowing",
    "Right Neural Foraminal Narrowing",
    "Left Subarticular Stenosis",
    "Right Subarticular Stenosis",
)
LEVELS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
LEVEL_NAMES: tuple[str, ...] = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")
SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
PROB_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")
# The metric's sample weight of each severity.
SEVERITY_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)

LABEL_COLUMNS: tuple[str, ...] = tuple(f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS)
N_LABELS = len(LABEL_COLUMNS)  # 25
N_CLASSES = len(SEVERITIES)  # 3

SERIES_TYPES: tuple[str, ...] = ("Sagittal T1", "Sagittal T2/STIR", "Axial T2")
SAG_T1, SAG_T2, AXIAL = SERIES_TYPES
# Where a radiologist marks each condition (the series type of its coordinates in the real data).
CONDITION_SERIES: dict[str, str] = {
    "spinal_canal_stenosis": SAG_T2,
    "left_neural_foraminal_narrowing": SAG_T1,
    "right_neural_foraminal_narrowing": SAG_T1,
    "left_subarticular_stenosis": AXIAL,
    "right_subarticular_stenosis": AXIAL,
}
# The metric scores these three groups separately (plus the any-severe-spinal term).
GROUPS: tuple[str, ...] = ("spinal", "foraminal", "subarticular")

_CONDITION_BY_NAME = dict(zip(CONDITION_NAMES, CONDITIONS))
_CONDITION_NAME = dict(zip(CONDITIONS, CONDITION_NAMES))
_LEVEL_BY_NAME = dict(zip(LEVEL_NAMES, LEVELS))
_SEVERITY_INDEX = {s: i for i, s in enumerate(SEVERITIES)}


def label_index(condition: str, level: str) -> int:
    """Position of (condition, level) in LABEL_COLUMNS; accepts slug or display names."""
    condition = _CONDITION_BY_NAME.get(condition, condition)
    level = _LEVEL_BY_NAME.get(level, level)
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
    return CONDITIONS.index(condition) * len(LEVELS) + LEVELS.index(level)


def condition_slug(name: str) -> str:
    """'Left Neural Foraminal Narrowing' -> 'left_neural_foraminal_narrowing'."""
    if name in _CONDITION_BY_NAME:
        return _CONDITION_BY_NAME[name]
    raise ValueError(f"unknown condition name {name!r}; expected one of {CONDITION_NAMES}")


def condition_name(slug: str) -> str:
    return _CONDITION_NAME[slug]


def level_slug(name: str) -> str:
    """'L4/L5' -> 'l4_l5'."""
    if name in _LEVEL_BY_NAME:
        return _LEVEL_BY_NAME[name]
    raise ValueError(f"unknown level name {name!r}; expected one of {LEVEL_NAMES}")


def severity_index(name: str) -> int:
    if name in _SEVERITY_INDEX:
        return _SEVERITY_INDEX[name]
    raise ValueError(f"unknown severity {name!r}; expected one of {SEVERITIES}")


def group_of(column: str) -> str:
    """Metric group ('spinal', 'foraminal', 'subarticular') of a label column or condition."""
    for g in GROUPS:
        if g in column:
            return g
    raise ValueError(f"{column!r} belongs to no condition group")


# Label columns of each condition group (the metric scores each group on its own).
GROUP_COLUMNS: dict[str, list[int]] = {g: [j for j, c in enumerate(LABEL_COLUMNS) if group_of(c) == g] for g in GROUPS}


def row_id(study_id: int | str, condition: str, level: str) -> str:
    condition = _CONDITION_BY_NAME.get(condition, condition)
    level = _LEVEL_BY_NAME.get(level, level)
    label_index(condition, level)  # validates both
    return f"{study_id}_{condition}_{level}"


def parse_row_id(rid: str) -> tuple[int, str, str]:
    """'4003253_spinal_canal_stenosis_l1_l2' -> (4003253, 'spinal_canal_stenosis', 'l1_l2')."""
    parts = rid.split("_")
    if len(parts) < 5:
        raise ValueError(f"malformed row_id {rid!r}")
    study, condition, level = parts[0], "_".join(parts[1:-2]), "_".join(parts[-2:])
    if not study.isdigit():
        raise ValueError(f"malformed row_id {rid!r}: study id {study!r} is not a number")
    label_index(condition, level)
    return int(study), condition, level


def row_ids(study_ids) -> list[str]:
    """All 25 row ids of each study, study-major, in LABEL_COLUMNS order."""
    return [f"{s}_{col}" for s in study_ids for col in LABEL_COLUMNS]


def _mirrored(condition: str) -> str:
    side, _, rest = condition.partition("_")
    return {"left": "right_", "right": "left_"}.get(side, side + "_") + rest


# Label column j of a patient mirrored through the midline is column MIRROR[j] of the patient: left and
# right swap, the canal stays (an involution: MIRROR[MIRROR[j]] == j).
MIRROR: tuple[int, ...] = tuple(LABEL_COLUMNS.index(f"{_mirrored(c)}_{lv}") for c in CONDITIONS for lv in LEVELS)
