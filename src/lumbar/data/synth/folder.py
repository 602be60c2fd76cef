"""A synthetic competition folder: the real layout and formats, a phantom lumbar spine, an exact oracle.

`generate` draws every study's spec (counts, series, the real profile's irregularities), writes the
studies in parallel, then the CSVs Kaggle ships, the test labels and `oracle.csv` (p(label | latent),
exact: each label depends on its own latent and independent rater noise)."""
from __future__ import annotations

import shutil
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from ... import schema
from ...files import write_json
from ...progress import bar
from ..labelmodel import LabelModel, real_stats
from .dicom import unique_ids
from .spec import SYNTH_VERSION, StudySpec, SynthConfig
from .studies import AXIAL_KINDS, make_real_study, make_study


def _study_specs(cfg: SynthConfig, n: int, rng: np.random.Generator, test: bool = False) -> list[StudySpec]:
    comp = real_stats()["series_composition_counts"]
    keys = list(comp)
    p = np.array([comp[k] for k in keys], dtype=float)
    p /= p.sum()
    specs = []
    for i in range(n):
        t1, t2, ax = (int(part.split("x")[0]) for part in keys[rng.choice(len(keys), p=p)].split("+"))
        n_series = t1 + t2 + ax
        spec = StudySpec(n_t1=t1, n_t2=t2, n_axial=ax,
                         reversed={j: bool(rng.random() < cfg.reversed_rate) for j in range(n_series)},
                         gaps={j: bool(rng.random() < cfg.gap_rate) for j in range(n_series)},
                         mixed={j: bool(rng.random() < cfg.mixed_shape_rate) for j in range(n_series)},
                         rescale={j: bool(rng.random() < cfg.rescale_rate) for j in range(n_series)},
                         coordinates=bool(rng.random() < cfg.coord_fraction))
        specs.append(spec)
    if cfg.ensure_irregularities and n >= 8:
        # The first studies get one irregularity each (series index 0 = first sagittal T1 / T2).
        specs[0].n_axial = 2
        specs[1].n_t1 = 0
        specs[2].n_t2 = 0
        specs[3].reversed[0] = True
        specs[4].gaps[0] = True
        specs[5].mixed[0] = True
        specs[6].n_axial = 3
        specs[7].n_t1 = 2
        specs[3].coordinates = specs[4].coordinates = specs[5].coordinates = True
    if cfg.profile == "real":
        _real_irregularities(specs, rng, test, cfg.ensure_irregularities)
    return specs


# Rates of the real profile's irregularities (REAL_DATA.md; per series unless said).
REAL_RATES = {"flip": 0.04, "mono1": 0.03, "mixed": 0.03, "rescale": 0.18, "thoracic": 0.25,  # per study
              "drop_thickness": 0.5, "drop_spacing": 0.05, "drop_orientation": 0.05, "empty_series": 0.05, "mismatch": 0.03}


def _real_irregularities(specs: list[StudySpec], rng: np.random.Generator, test: bool, ensure: bool) -> None:
    r = REAL_RATES
    for spec in specs:
        n_series = spec.n_t1 + spec.n_t2 + spec.n_axial
        spec.axial_kinds = {a: str(rng.choice([k for k, _ in AXIAL_KINDS], p=[p for _, p in AXIAL_KINDS]))
                            for a in range(spec.n_axial)}
        spec.flip = {j: bool(rng.random() < r["flip"]) for j in range(n_series)}
        spec.mono1 = {j: bool(rng.random() < r["mono1"]) for j in range(n_series)}
        spec.mixed = {j: bool(rng.random() < r["mixed"]) for j in range(n_series)}
        spec.rescale = {j: bool(rng.random() < r["rescale"]) for j in range(n_series)}
        spec.thoracic = bool(rng.random() < r["thoracic"])
        if test:
            for j in range(n_series):
                drop = []
                if rng.random() < r["drop_thickness"]:
                    drop += ["SliceThickness", "SpacingBetweenSlices"]
                if rng.random() < r["drop_spacing"]:
                    drop.append("PixelSpacing")
                if rng.random() < r["drop_orientation"]:
                    drop.append("ImageOrientationPatient")
                spec.drop[j] = tuple(drop)
            spec.empty_series = bool(rng.random() < r["empty_series"])
            spec.mismatch = bool(rng.random() < r["mismatch"]) and spec.n_t1 > 0 and spec.n_t2 > 0
    if not ensure or len(specs) < 4:
        return
    # Every folder of 4+ studies shows each irregularity at least once.
    a = specs[0]
    a.n_axial, a.axial_kinds = 2, {0: "blocks", 1: "thin"}
    specs[1].axial_kinds = {0: "blocks"}
    specs[1].flip[0] = True
    specs[2].mono1[0] = specs[2].mixed[0] = True
    specs[3].thoracic = True
    if specs[3].n_axial:
        specs[3].axial_kinds[0] = "stack"
    if test:
        specs[0].drop[0] = ("SliceThickness", "SpacingBetweenSlices")
        specs[1].drop[1] = ("PixelSpacing",)
        specs[2].drop[0] = ("ImageOrientationPatient",)
        specs[3].empty_series = True
        if specs[3].n_t1 and specs[3].n_t2:
            specs[3].mismatch = True


def _job(args):
    root, study_id, narrowing, spec, seed, sag, ax, profile, scale = args
    if profile == "real":
        return make_real_study(Path(root), study_id, narrowing, spec, seed, scale)
    return make_study(Path(root), study_id, narrowing, spec, seed, sag, ax)


def generate(cfg: SynthConfig, progress: bool = True) -> Path:
    """Write the whole folder; returns its path. Deterministic for cfg.seed."""
    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = LabelModel.default(cfg.rater_noise)
    rng = np.random.default_rng(cfg.seed)
    n_total = cfg.studies + cfg.test_studies
    study_ids = unique_ids(rng, n_total, 10 ** 6, 4 * 10 ** 9)
    z = model.draw_latent(n_total, rng)
    labels = model.draw_labels(z, rng)
    if cfg.ensure_irregularities and cfg.studies >= 8 and not (labels[:cfg.studies] < 0).any():
        labels[9 % cfg.studies, schema.label_index("left_subarticular_stenosis", "l1_l2")] = -1
    oracle = model.oracle(z)
    narrowing = model.narrowing(z)
    train_ids, test_ids = study_ids[:cfg.studies], study_ids[cfg.studies:]
    if cfg.profile not in ("default", "real"):
        raise ValueError(f"unknown synthetic profile {cfg.profile!r}: 'default' or 'real'")
    specs = _study_specs(cfg, cfg.studies, rng) + _study_specs(cfg, cfg.test_studies, rng, test=True)
    for spec in specs[cfg.studies:]:
        spec.coordinates = False
    seeds = rng.integers(0, 2 ** 31, size=n_total)

    jobs = []
    for i, sid in enumerate(study_ids):
        part = "train_images" if i < cfg.studies else "test_images"
        jobs.append((str(out / part), int(sid), narrowing[i], specs[i], int(seeds[i]), cfg.sag_size, cfg.axial_size,
                     cfg.profile, cfg.size_scale))
    results = []
    pbar = bar(total=len(jobs), desc="synth studies", quiet=not progress)
    if cfg.workers > 1:
        with get_context("spawn" if _torch_loaded() else "fork").Pool(cfg.workers) as pool:
            for r in pool.imap(_job, jobs):
                results.append(r)
                pbar.update()
    else:
        for j in jobs:
            results.append(_job(j))
            pbar.update()
    pbar.close()

    series = [row for r in results for row in r[0]]
    coords = [row for r in results for row in r[1]]
    series_df = pd.DataFrame(series, columns=["study_id", "series_id", "series_description"])
    series_df[series_df.study_id.isin(train_ids)].to_csv(out / "train_series_descriptions.csv", index=False)
    series_df[series_df.study_id.isin(test_ids)].to_csv(out / "test_series_descriptions.csv", index=False)
    pd.DataFrame(coords, columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]).to_csv(
        out / "train_label_coordinates.csv", index=False)
    labels_frame(train_ids, labels[:cfg.studies]).to_csv(out / "train.csv", index=False)
    labels_frame(test_ids, labels[cfg.studies:]).to_csv(out / "test_labels.csv", index=False)
    sample = pd.DataFrame({"row_id": schema.row_ids(test_ids)})
    for c in schema.PROB_COLUMNS:
        sample[c] = 1 / 3
    sample.to_csv(out / "sample_submission.csv", index=False)
    from ...metric import probs_to_submission
    probs_to_submission(study_ids, oracle).to_csv(out / "oracle.csv", index=False, float_format="%.10g")
    meta = {"synth_version": SYNTH_VERSION, "config": asdict(cfg)}
    write_json(out / "synth_meta.json", meta)
    return out


def _torch_loaded() -> bool:
    import sys
    return "torch" in sys.modules  # forking after torch's thread pools start can deadlock


def labels_frame(study_ids, y: np.ndarray) -> pd.DataFrame:
    """Integer labels [n, 25] (-1 missing) -> train.csv-format frame."""
    frame = pd.DataFrame({"study_id": np.asarray(study_ids, dtype=np.int64)})
    names = np.array(schema.SEVERITIES, dtype=object)
    for j, col in enumerate(schema.LABEL_COLUMNS):
        v = names[np.clip(y[:, j], 0, 2)]
        v[y[:, j] < 0] = None
        frame[col] = v
    return frame
