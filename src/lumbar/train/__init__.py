"""Training: one trainer per stage, registered by name (runner.py). Importing this package registers
the built-in trainers."""
from . import crops, ensemble, multitask, selector, sequence, superres  # noqa: F401
