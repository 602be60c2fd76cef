"""Progress bars where someone watches them: on a terminal. Redirected to a file (`make demo > log`, a
Kaggle notebook's log) a bar's redraws would fill it, so there it draws nothing and the code's own lines
(one per stage, epoch or decision) say how far it got. LUMBAR_PROGRESS=1 forces bars, 0 hides them."""
from __future__ import annotations

import os
import sys


def on_terminal() -> bool:
    forced = os.environ.get("LUMBAR_PROGRESS", "")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def bar(iterable=None, quiet: bool = False, **kwargs):
    """tqdm on a terminal; a silent pass-through elsewhere or when `quiet` (ranks other than the main one)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=quiet or not on_terminal(), **kwargs)
