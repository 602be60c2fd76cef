"""`train --model crops`: the crop regions fitted from the training coordinates, every study's crops
cached, and the entries the multitask and super-resolution trainers read back."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .. import config as cfgmod
from ..data.cache import CachedEntries
from ..data.volumes import normalise, study_volumes
from ..layout import Run
from ..preprocess.crops import CROP_NAMES, CropRegions, CROPS, slice_summary
from ..preprocess.pipeline import (crops_key, labels_for, preprocess_config, PreprocessConfig,
                                   read_preprocess_config, study_crops, study_features, true_selection)
from ..progress import bar
from .runner import load_train, register, RunConfig
from .selection import read_oof_selection


def region_samples(study, cache) -> list:
    """(crop name, what CropRegions.fit reads of the labelled slice, labelled points) for fitting crop
    regions: the slice's shape and spine column, not its pixels (memory stays flat in the studies)."""
    if not study.has_coords:
        return []
    vols = study_volumes(study, cache)
    truth = true_selection(study, study_features(study, cache, vols))
    by_id = {sid: v for items in vols.values() for sid, v in items}
    out = []
    for name, (sid, idx, *_) in truth.items():
        px = normalise(by_id[sid].pixels[idx:idx + 1])[0]
        out.append((name, slice_summary(name, px), labels_for(study, name, sid, by_id[sid])[0]))
    return out


@dataclass
class CropsConfig(PreprocessConfig):
    cache_dir: str = "cache"  # the per-study cache the crops are written to


def _preprocess_config(cfg: CropsConfig) -> PreprocessConfig:
    return preprocess_config(asdict(cfg))


@register("crops", order=20, config=CropsConfig)
def train_crops(data, run, rc: RunConfig, overrides: list[str]) -> dict:
    cfg = cfgmod.override(CropsConfig(), overrides)
    pcfg = _preprocess_config(cfg)
    oof_sel = read_oof_selection(run)
    studies, cache = load_train(data, run, rc, cfg.cache_dir)
    samples = {st.study_id: region_samples(st, cache) for st in bar(studies, desc="crop regions")}
    out = Run(run).stage("crops")
    keys, records = {}, []
    for k in range(rc.n_folds):
        regions = CropRegions.fit([s for st in studies if st.fold != k for s in samples[st.study_id]], cfg.margin)
        regions.save(Run(run).regions(k))
        for st in bar([s for s in studies if s.fold == k], desc=f"crops fold {k}", leave=False):
            entry = study_crops(st, oof_sel.get(st.study_id, {}), regions, pcfg, cache)
            keys[st.study_id] = k
            records += containment(st, entry, pcfg)
    CropRegions.fit([s for st in studies for s in samples[st.study_id]], cfg.margin).save(Run(run).regions())
    cfgmod.save(cfg, Run(run).config("crops"))
    rec = pd.DataFrame(records)
    rep = (rec.groupby("crop").agg(mean=("inside", "mean"), size=("inside", "size"), same_series=("same_series", "mean"))
           if len(rec) else pd.DataFrame())
    rep.to_csv(out / "containment.csv")
    overall = float(rec["inside"].mean()) if len(rec) else float("nan")
    print(f"crops: held-out labelled points inside their crop: {overall:.4f} ({int(rec['inside'].sum()) if len(rec) else 0}/{len(rec)})")
    print(f"cache: {cache.hits} hits, {cache.misses} builds")
    return {"containment": round(overall, 4), "studies": len(keys)}


def containment(study, entry: dict, cfg: PreprocessConfig) -> list[dict]:
    """Per labelled (condition, level): is its point inside the crop? A point labelled in another series
    of the crop's type counts where it was carried onto the chosen series (see labels_for); `same_series`
    says whether the chosen series is the labelled one."""
    out = []
    if not study.has_coords:
        return out
    for i, name in enumerate(CROP_NAMES):
        cols = CROPS[name][2]
        labelled = study.coords
        for j, col in enumerate(cols):
            cond = col_condition(col)
            rows = labelled[(labelled["condition"] == cond[0]) & (labelled["level"] == cond[1])]
            if not len(rows):
                continue
            pts = entry["sag_points"][i] if i < 3 else entry["axial_points"][i - 3]
            size = cfg.sag_size if i < 3 else cfg.axial_size
            p = pts[j]
            same = bool(entry["present"][i] and int(entry["series_id"][i]) in set(rows["series_id"].astype(int)))
            ok = bool(entry["present"][i] and np.isfinite(p).all() and (0 <= p).all() and (p < size).all())
            out.append({"crop": name, "study_id": study.study_id, "inside": ok, "same_series": same})
    return out


def col_condition(col: int) -> tuple[str, str]:
    from .. import schema
    name = schema.LABEL_COLUMNS[col]
    return schema.condition_name(name[:-6]), schema.LEVEL_NAMES[schema.LEVELS.index(name[-5:])]


def load_crop_entries(data, run, rc: RunConfig, cache_dir: str, cfg: PreprocessConfig | None = None):
    """(studies, crop entries) of every training study: each built from its held-out slice selection
    and its fold's crop regions, exactly as `train --model crops` cached them."""
    if cfg is None:
        cfg = read_preprocess_config(run)
    oof_sel = read_oof_selection(run)
    studies, cache = load_train(data, run, rc, cache_dir)
    regions = {k: CropRegions.load(Run(run).regions(k)) for k in range(rc.n_folds)}
    keys, kept = [], []
    for st in bar(studies, desc="load crops"):  # builds what is missing; kept in memory only without a cache
        sel = oof_sel.get(st.study_id, {})
        entry = study_crops(st, sel, regions[st.fold], cfg, cache)
        keys.append((st.study_id, crops_key(cfg, sel, regions[st.fold])))
        if cache.root is None:
            kept.append(entry)
    return studies, (CachedEntries(cache, keys) if cache.root is not None else kept)
