"""The networks. Importing this package registers the built-in models (registry.py)."""
from . import multitask, sequence, superres  # noqa: F401
