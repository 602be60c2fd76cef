"""Training: one trainer per stage, registered by name (runner.py), the one training loop, folds, the
ensemble's fitting and the export into weights/. Importing this package registers the built-in trainers.
It imports every layer below it (base, data, preprocess, models, infer); only commands/ import it."""
from . import crops, ensemble, multitask, selector, sequence, superres  # noqa: F401
