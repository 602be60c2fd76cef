"""Training: one trainer per stage, registered by name (runner.py). Importing this package registers
the built-in trainers."""
from . import ensemble, multitask, sequence, stage_one, superres  # noqa: F401
