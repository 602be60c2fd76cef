"""`predict`'s settings (torch-free: the command line builds its options from them without loading torch)."""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_BUDGET_S = 8.0 * 3600  # Kaggle allows 9 hours for the whole notebook: an hour of margin


@dataclass
class PredictConfig:
    batch_size: int = 8  # studies per model call
    workers: int = 2  # processes preparing inputs; 0 = in this process, in order, with no deadline
    device: str = "auto"  # every GPU that passes a smoke test, else the CPU; or "cpu", "cuda:1"
    amp: bool = True  # fp16 autocast where the device is CUDA (CPU always runs fp32)
    tta: bool = True  # also predict each study through the models' test-time views (mirrored left-right; crops shifted by the model's tta_shift px) and average; the first thing dropped when time runs short
    time_budget: float = DEFAULT_BUDGET_S  # seconds for the whole predict call
    study_timeout: float = 600.0  # seconds one study's input preparation may take in a worker
    cache_dir: str = ""  # per-study cache folder; "" = a temporary one removed at the end
    write_every: float = 20.0  # seconds between rewrites of the submission while predicting
    per_model_dir: str = ""  # also write each model's own submission there (<model>.csv: its folds and views, no ensemble; priors where it did not predict): the learning curve scores each model from one pass
    fallback_prior: list | None = None  # [25][3], when the weights' prior.json cannot be read
    # Fault injection for the kernel's tests: "batch:N" raises in the N-th batch, "die:STUDY" kills the
    # worker preparing STUDY, "hang:STUDY" makes it hang. Empty in real runs.
    fault: str = ""
    log: list = field(default_factory=list)
