"""What the synthetic folder is asked for (SynthConfig: one option per field of `lumbar synth`) and what
each study is drawn to be (StudySpec)."""
from __future__ import annotations

from dataclasses import dataclass, field


from ..labelmodel import DEFAULT_RATER_NOISE


SYNTH_VERSION = 1


@dataclass
class SynthConfig:
    out: str = "data/synthetic"  # the competition folder to write
    studies: int = 200  # training studies (labels, coordinates)
    test_studies: int = 20  # test studies (no labels; sample_submission.csv lists them)
    seed: int = 0  # everything drawn from it: the same seed writes the same folder
    sag_size: int = 192  # default profile: sagittal matrix side, px
    axial_size: int = 128  # default profile: axial matrix side, px
    rater_noise: float = DEFAULT_RATER_NOISE  # spread of the raters around the latent severity
    coord_fraction: float = 0.7  # share of training studies with labelled coordinates
    # Real rates of the irregularities (shared/rsna2024_label_stats.json and typical DICOM exports).
    reversed_rate: float = 0.3  # series whose instance numbers run against their position
    gap_rate: float = 0.05  # series with gaps in their instance numbers
    mixed_shape_rate: float = 0.01  # series mixing two matrix sizes
    rescale_rate: float = 0.2  # series with a RescaleSlope/Intercept
    # With >= 8 studies, give each irregularity to at least one study so every folder exercises them.
    ensure_irregularities: bool = True
    workers: int = 2  # processes writing studies
    # "default": the kind geometry above (one orientation per series, ~1.4 mm pixels). "real": the real
    # data's geometry (REAL_DATA.md): 384-640 px matrices at 0.35-0.9 mm, lordotic discs, axial series of
    # angled blocks or long thin stacks, flipped rows, MONOCHROME1, missing tags in the test split.
    profile: str = "default"
    size_scale: float = 1.0  # real profile: matrix sizes times this (tests use 0.25; the FOV is kept)


@dataclass
class StudySpec:
    """Which series a study has and which irregularities each one shows."""
    n_t1: int = 1
    n_t2: int = 1
    n_axial: int = 1
    reversed: dict = field(default_factory=dict)  # series index -> bool
    gaps: dict = field(default_factory=dict)
    mixed: dict = field(default_factory=dict)
    rescale: dict = field(default_factory=dict)
    coordinates: bool = True
    # real profile only
    axial_kinds: dict = field(default_factory=dict)  # axial series index -> "blocks" | "stack" | "thin"
    flip: dict = field(default_factory=dict)  # series index -> row direction reversed
    mono1: dict = field(default_factory=dict)  # series index -> MONOCHROME1
    drop: dict = field(default_factory=dict)  # series index -> DICOM keywords left out (test split)
    thoracic: bool = False  # the sagittal field of view reaches up into the lower thoracic spine
    empty_series: bool = False  # an extra axial series folder with no files (test split)
    mismatch: bool = False  # the CSV swaps the two sagittal descriptions (test split)
