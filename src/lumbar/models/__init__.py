"""The networks, architecture only: one registered plug-in per model (registry.py: ModelSpec), its
losses, the prior. Importing this package registers the built-in models. It imports the base modules,
data/ and preprocess/."""
from . import multitask, sequence, superres  # noqa: F401
