"""Training: one trainer per stage, registered by name (runner.py). Importing this package registers
the built-in trainers."""
from . import ensemble, preprocess_stage, sequence_stage, torch_stages  # noqa: F401
