"""Which instance shows each (condition, level): per-slice scikit-image features and a soft-vote
ensemble of RandomForest, SVM, MLP and XGBoost.

One classifier per series type, the classes being what a slice can be:
- Sagittal T2/STIR: 0 = other, 1 = the spinal canal slice;
- Sagittal T1: 0 = other, 1 = left foramen slice, 2 = right foramen slice;
- Axial T2: 0 = other, k + 1 = the slice of level k (subarticular, both sides).
A series then takes, for each class, the slice where that class is most probable. Axial slices first
get their level from geometry: their height relative to the sagittal stack's field of view (the
sagittal series spans the lumbar spine), a feature no image texture can give.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import schema
from ..files import write_json, write_npz
from ..data.dicom import Volume
from ..data.volumes import normalised

FEATURE_VERSION = 3  # 2: OpenCV area resize, axial height at slice centres; 3: normalise() in float32 under numpy 1 and 2
MEMBERS = ("rf", "svm", "mlp", "xgb")
# 2: every member as arrays (preprocess/members.py), probes.npz; 1 (pickles, XGBoost JSON) is refused: re-train
SELECTOR_FORMAT = 2
PROBE_ROWS = 48  # training feature rows kept per series type as the members' probe (infer/probes.py)
N_CLASSES = {schema.SAG_T2: 2, schema.SAG_T1: 3, schema.AXIAL: 6}
# (condition, class) pairs each series type's classes stand for.
TARGETS: dict[str, list[tuple[str, int]]] = {
    schema.SAG_T2: [("spinal_canal_stenosis", 1)],
    schema.SAG_T1: [("left_neural_foraminal_narrowing", 1), ("right_neural_foraminal_narrowing", 2)],
    schema.AXIAL: [("left_subarticular_stenosis", 0), ("right_subarticular_stenosis", 0)],
}
STYPE_KEY = {schema.SAG_T2: "sag_t2", schema.SAG_T1: "sag_t1", schema.AXIAL: "axial"}


def _lateral_sign(v: Volume) -> float:
    """+1 if depth along the normal increases toward the patient's left (+x in LPS; canonical)."""
    return 1.0 if v.normal[0] >= 0 else -1.0


def sagittal_extent(v: Volume) -> tuple[float, float]:
    """(top z, bottom z) in patient mm of a sagittal series' field of view (mean over its slices)."""
    first = v.positions[:, 2]
    last = first + v.orientations[:, 5] * (v.pixels.shape[1] - 1) * float(v.pixel_spacing[0])
    return float(np.maximum(first, last).mean()), float(np.minimum(first, last).mean())


def slice_features(v: Volume, sag_extent: tuple[float, float] | None = None) -> np.ndarray:
    """Per-slice features [n, F]: HOG, LBP histogram, intensity and edge statistics of the centre,
    difference to the neighbours, and the slice's position (lateral for sagittal, craniocaudal for axial)."""
    import cv2
    from skimage.feature import hog, local_binary_pattern
    from skimage.filters import sobel

    px = normalised(v)
    n = len(px)
    small = np.stack([cv2.resize(p, (64, 64), interpolation=cv2.INTER_AREA) for p in px]).astype(np.float32)
    centre = small[:, 16:48, 16:48]
    feats = []
    for i in range(n):
        h = hog(small[i], orientations=8, pixels_per_cell=(16, 16), cells_per_block=(2, 2), feature_vector=True)
        lbp = local_binary_pattern((np.clip(centre[i], 0, 1) * 255).astype(np.uint8), P=8, R=1, method="uniform")
        lbp_hist = np.bincount(lbp.astype(int).ravel(), minlength=10)[:10] / lbp.size
        c = centre[i]
        stats = [c.mean(), c.std(), *np.percentile(c, [10, 50, 90, 99]), sobel(c).mean()]
        prev_d = np.abs(c - centre[max(i - 1, 0)]).mean()
        next_d = np.abs(c - centre[min(i + 1, n - 1)]).mean()
        feats.append(np.concatenate([h, lbp_hist, stats, [prev_d, next_d]]))
    feats = np.asarray(feats, dtype=np.float32)

    depth = v.depth
    centre_d = (depth.max() + depth.min()) / 2
    half = max((depth.max() - depth.min()) / 2, 1e-3)
    if abs(v.normal[2]) > 0.7:  # axial: height of the slice's centre within the sagittal field of view
        z = v.centres[:, 2]
        if sag_extent is not None:
            top, bottom = sag_extent
            rel = (top - z) / (top - bottom if top != bottom else 1.0)
        else:
            rel = (z.max() - z) / max(z.max() - z.min(), 1e-3)
        pos = np.stack([rel, (depth - centre_d) / half, np.full(n, n / 40.0)], 1)
    else:
        lat = (depth - centre_d) * _lateral_sign(v)
        pos = np.stack([lat / half, lat / 20.0, np.abs(lat) / 20.0], 1)
    return np.concatenate([feats, pos.astype(np.float32)], 1)


def slice_targets(stype: str, v: Volume, series_id: int, coords) -> np.ndarray | None:
    """Class of each slice from a study's coordinate rows, or None if this series has none."""
    rows = coords[coords["series_id"] == series_id] if len(coords) else coords
    if len(rows) == 0:
        return None
    y = np.zeros(len(v), dtype=np.int64)
    for r in rows.itertuples(index=False):
        cond = schema.condition_slug(r.condition)
        try:
            idx = v.index_of_instance(int(r.instance_number))
        except KeyError:
            continue
        if stype == schema.AXIAL:
            y[idx] = schema.LEVEL_NAMES.index(r.level) + 1
        else:
            for c, cls in TARGETS[stype]:
                if c == cond:
                    y[idx] = cls
    return y if y.any() else None


N_POSITION = 3  # the last feature columns: the slice's position


class Emphasise:
    """Scales the last n columns (after standardising) so distance-based members weigh position as
    much as the hundreds of texture columns; trees do not need it."""

    def __init__(self, n: int = N_POSITION, factor: float = 6.0):
        self.n, self.factor = n, factor

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        X = np.array(X, dtype=np.float64, copy=True)
        X[:, -self.n:] *= self.factor
        return X

    def get_params(self, deep=True):
        return {"n": self.n, "factor": self.factor}

    def set_params(self, **params):
        for k, v in params.items():
            setattr(self, k, v)
        return self


def cpu_jobs(n_jobs: int = 0) -> int:
    """Threads for a member's fit: n_jobs, or every core this process may use when it is 0."""
    from ..devices import cpu_cores

    return n_jobs if n_jobs > 0 else cpu_cores()


def svm_sample(y: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Row indices for the SVM member: every row up to `cap`; beyond it the slices of a level or a side
    first (up to half the cap, then a sample), the "other" slices filling the rest at random. The kernel
    SVM's fit grows between n^2 and n^3 (and probability=True fits it six times): the cap keeps its
    time constant in the number of studies once the training set passes it."""
    if cap <= 0 or len(y) <= cap:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    pos, other = np.flatnonzero(y != 0), np.flatnonzero(y == 0)
    keep = max(cap // 2, cap - len(other))  # half the cap, more where the others cannot fill it
    if len(pos) > keep:
        pos = rng.choice(pos, keep, replace=False)
    other = rng.choice(other, min(len(other), cap - len(pos)), replace=False)
    return np.sort(np.concatenate([pos, other]))


def _make_member(name: str, n_classes: int, seed: int, n_jobs: int = 2):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if name == "rf":
        return RandomForestClassifier(n_estimators=150, min_samples_leaf=2, class_weight="balanced_subsample",
                                      n_jobs=n_jobs, random_state=seed)
    if name == "svm":
        return make_pipeline(StandardScaler(), Emphasise(), SVC(C=3.0, probability=True, class_weight="balanced",
                                                               random_state=seed))
    if name == "mlp":
        return make_pipeline(StandardScaler(), Emphasise(), MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2,
                                                                          max_iter=400, random_state=seed))
    if name == "xgb":
        from xgboost import XGBClassifier
        return XGBClassifier(n_estimators=120, max_depth=4, learning_rate=0.1, subsample=0.9, colsample_bytree=0.5,
                             n_jobs=n_jobs, random_state=seed, tree_method="hist",
                             objective="multi:softprob" if n_classes > 2 else "binary:logistic")
    raise ValueError(f"unknown member {name!r}")


def _proba(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    if getattr(model, "n_jobs", 1) not in (1, None):
        model.set_params(n_jobs=1)  # a series' few dozen rows: starting threads costs more than the work
    p = model.predict_proba(X)
    classes = getattr(model, "classes_", np.arange(p.shape[1]))
    out = np.zeros((len(X), n_classes), dtype=np.float64)
    out[:, np.asarray(classes, dtype=int)] = p
    return out


@dataclass
class SliceSelector:
    """Per series type, the fitted members; predict_proba averages the members' probabilities."""
    members: dict[str, dict[str, object]] = field(default_factory=dict)  # stype -> member -> model
    seed: int = 0
    dropped: list[str] = field(default_factory=list)  # members that failed to load, with the reason
    svm_rows: int = 0  # the SVM member's training rows at most (svm_sample); 0 = every row
    n_jobs: int = 0  # threads of the forest and XGBoost fits; 0 = every core of this machine
    levels: object = None  # LevelLocaliser: the five level points on the sagittal T2 (None: classifiers only)
    geometry: object = None  # placement.Geometry: offsets, method per series type
    probe_rows: dict[str, np.ndarray] = field(default_factory=dict)  # stype -> training rows (the probe's inputs)

    def fit(self, X: dict[str, np.ndarray], y: dict[str, np.ndarray], members=MEMBERS) -> "SliceSelector":
        for stype, Xs in X.items():
            ys = y[stype]
            k = N_CLASSES[stype]
            if len(np.unique(ys)) < 2:
                warnings.warn(f"slice selector: {stype} has one class only; not fitted", stacklevel=2)
                continue
            self.members[stype] = {}
            self.probe_rows[stype] = Xs[probe_sample(ys, PROBE_ROWS, self.seed)]
            for m in members:
                model = _make_member(m, k, self.seed, cpu_jobs(self.n_jobs))
                with warnings.catch_warnings():  # newer scikit-learn deprecates SVC(probability=True)
                    warnings.filterwarnings("ignore", message=".*`probability` parameter was deprecated.*")
                    if m == "xgb":
                        # xgboost wants classes 0..K-1 all present: pad with one zero-weight copy of each missing class.
                        missing = [c for c in range(k) if c not in set(ys.tolist())]
                        Xf = np.concatenate([Xs, np.repeat(Xs[:1], len(missing), 0)]) if missing else Xs
                        yf = np.concatenate([ys, missing]) if missing else ys
                        w = np.concatenate([np.ones(len(ys)), np.zeros(len(missing))])
                        model.fit(Xf, yf, sample_weight=w)
                    elif m == "svm":
                        rows = svm_sample(ys, self.svm_rows, self.seed)
                        model.fit(Xs[rows], ys[rows])
                    else:
                        model.fit(Xs, ys)
                self.members[stype][m] = model
        return self

    def predict_proba(self, stype: str, X: np.ndarray, member: str | None = None) -> np.ndarray | None:
        """[n, classes] for one member, or the soft vote of all; None if the type was never fitted."""
        models = self.members.get(stype)
        if not models:
            return None
        k = N_CLASSES[stype]
        if member is not None:
            return _proba(models[member], X, k)
        return np.mean([_proba(m, X, k) for m in models.values()], axis=0)

    # Persistence without pickles or library formats: every member as its arrays (members.py; XGBoost's
    # JSON is not read back by an older XGBoost the same); probes.npz keeps each type's probe rows and what
    # every fitted member predicted on them.
    def save(self, folder: str | Path) -> None:
        import sklearn
        import xgboost

        from .members import portable, save_member

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"format": SELECTOR_FORMAT, "sklearn": sklearn.__version__, "xgboost": xgboost.__version__,
                    "types": {}}
        probe: dict[str, np.ndarray] = {}
        for stype, models in self.members.items():
            key = STYPE_KEY[stype]
            rows = self.probe_rows.get(stype)
            if rows is not None:
                probe[f"{key}/rows"] = np.asarray(rows, np.float32)
            for m, model in models.items():
                if rows is not None:  # the fitted model's own answer, before any conversion
                    probe[f"{key}/{m}"] = self.predict_proba(stype, probe[f"{key}/rows"], member=m)
                rows_m = probe.get(f"{key}/rows")
                if rows_m is None:  # XGBoost's base margin is measured on rows: any of the type's will do
                    rows_m = np.zeros((1, getattr(model, "n_features_in_", 1)), np.float32)
                save_member(portable(m, model, rows_m), member_path(folder, stype, m))
            manifest["types"][stype] = list(models)
        if probe:
            write_npz(folder / PROBES, probe)
            manifest["probes"] = PROBES
        if self.levels is not None:
            self.levels.save(folder, asdict(self.geometry))
            manifest["levels"] = "levels.json"
        write_json(folder / "selector.json", manifest)

    @classmethod
    def load(cls, folder: str | Path, strict: bool = False, skip: dict[str, str] | None = None) -> "SliceSelector":
        """Loads every member it can, never unpickling anything. A member that fails to load (a damaged
        file, an XGBoost JSON it cannot parse, another format) is an error naming the file and the
        versions (strict), or is left out and listed in `dropped`, the other members carrying the vote;
        a type left with no member falls back to the naive rule. `skip` names member files not to open
        at all (file name -> why: a sha256 that differs)."""
        folder = Path(folder)
        manifest = json.loads((folder / "selector.json").read_text())
        sel = cls()
        fmt = manifest.get("format", 1)
        for stype, names in manifest["types"].items():
            sel.members[stype] = {}
            for m in names:
                legacy = fmt != SELECTOR_FORMAT
                path = folder / f"{STYPE_KEY[stype]}_{m}.{'json' if m == 'xgb' else 'pkl'}" if legacy \
                    else member_path(folder, stype, m)
                if skip and path.name in skip:
                    sel.dropped.append(f"selector member {m} for {stype}: {skip[path.name]}")
                    continue
                try:
                    if legacy:
                        raise ValueError(f"a member of selector format {fmt} (pickles, XGBoost JSON); this code "
                                         f"reads format {SELECTOR_FORMAT} and unpickles nothing: re-train "
                                         "slice_select and export")
                    sel.members[stype][m] = _load_member(m, path)
                except Exception as e:
                    trained = f"scikit-learn {manifest.get('sklearn')}, xgboost {manifest.get('xgboost')}"
                    msg = (f"{path}: selector member {m} for {stype} does not load ({type(e).__name__}: "
                           f"{str(e)[:200]}); trained with {trained}, installed scikit-learn {_version('scikit-learn')}, "
                           f"xgboost {_version('xgboost')}")
                    if strict:
                        raise RuntimeError(msg) from None
                    sel.dropped.append(msg)
            if not sel.members[stype]:
                del sel.members[stype]
        if manifest.get("levels"):
            from .levels import LevelLocaliser
            from .placement import Geometry

            if skip and ({"levels.pt", "levels.json"} & set(skip)):
                sel.dropped.append(f"level localiser: {skip.get('levels.pt') or skip.get('levels.json')}; slices from the classifiers")
            else:
                try:
                    sel.levels, meta = LevelLocaliser.load(folder)
                    sel.geometry = Geometry(**{k: meta[k] for k in ("offsets", "choice", "sigma_mm", "max_gap_mm")},
                                            scorers=meta.get("scorers", {}), rankers=meta.get("rankers", {}))
                    for stype in sel.geometry.scorers:  # a scorer of other features fails here, not per study
                        sel.geometry.scorer(stype)
                    for stype in sel.geometry.rankers:
                        sel.geometry.ranker(stype)
                except Exception as e:
                    msg = f"{folder / 'levels.pt'}: level localiser does not load ({type(e).__name__}: {str(e)[:200]})"
                    if strict:
                        raise RuntimeError(msg) from None
                    sel.dropped.append(msg + "; slices from the classifiers")
                    sel.levels = None
        return sel

    def drop_member(self, stype: str, member: str, why: str) -> None:
        """Leaves a loaded member out of the vote (its probe disagreed), saying why."""
        self.members.get(stype, {}).pop(member, None)
        if stype in self.members and not self.members[stype]:
            del self.members[stype]
        self.dropped.append(why)

    def member_counts(self) -> dict[str, list[str]]:
        """Series type -> the members that loaded (what the notebook prints)."""
        return {stype: list(models) for stype, models in self.members.items()}


PROBES = "probes.npz"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "missing"


def member_path(folder: str | Path, stype: str, member: str) -> Path:
    """Where a member of a series type lives in a selector folder (its arrays, members.py)."""
    return Path(folder) / f"{STYPE_KEY[stype]}_{member}.npz"


def probe_sample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices of a probe: every class that occurs, the slices of a level or a side first (up to half),
    the rest "other" slices, so that each member's probe covers the decisions it is used for."""
    rng = np.random.default_rng(seed)
    pos, other = np.flatnonzero(y != 0), np.flatnonzero(y == 0)
    pos = rng.choice(pos, min(len(pos), n // 2), replace=False)
    other = rng.choice(other, min(len(other), n - len(pos)), replace=False)
    return np.sort(np.concatenate([pos, other]))


def _load_member(name: str, path: Path):
    from .members import load_member

    return load_member(name, path)


def naive_choice(stype: str, v: Volume, sag_extent: tuple[float, float] | None = None) -> dict[int, int]:
    """The rule a newcomer would write: middle slice for the canal, the typical lateral offset for the
    foramina (+-18 mm), evenly spread levels for axial."""
    n = len(v)
    if stype == schema.SAG_T2:
        return {1: n // 2}
    if stype == schema.SAG_T1:
        depth = v.depth
        lat = (depth - (depth.max() + depth.min()) / 2) * _lateral_sign(v)
        return {1: int(np.argmin(np.abs(lat - 18))), 2: int(np.argmin(np.abs(lat + 18)))}
    if v.n_blocks == 5:  # one angled block per disc: each level its block's middle slice
        return {k + 1: int(np.flatnonzero(v.blocks == k)[(v.blocks == k).sum() // 2]) for k in range(5)}
    order = np.argsort(-v.centres[:, 2])  # superior first
    return {k + 1: int(order[min(n - 1, int((k + 0.5) * n / 5))]) for k in range(5)}
