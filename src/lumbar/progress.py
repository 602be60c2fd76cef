"""Progress where someone watches it: a tqdm bar on a terminal. Redirected to a file (`make demo > log`,
a Kaggle notebook's log) a bar's redraws would fill it, so there a long loop prints one line at each
tenth of the way instead, and an inner loop (leave=False: an epoch's batches) prints nothing, the code's
own line per epoch or stage saying how far it got. LUMBAR_PROGRESS=1 forces bars, 0 hides them."""
from __future__ import annotations

import os
import sys
import time


def on_terminal() -> bool:
    forced = os.environ.get("LUMBAR_PROGRESS", "")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Tenths:
    """The part of tqdm's interface the package uses, printing a line at each tenth of `total`."""

    def __init__(self, iterable=None, desc: str = "", total: int | None = None, silent: bool = False, **_):
        self.iterable, self.desc, self.silent = iterable, desc, silent
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.said, self.start = 0, 0, time.time()
        self.disable = silent

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def __len__(self) -> int:
        return self.total or 0

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.silent or not self.total:
            return
        tenth = min(10, self.n * 10 // self.total)
        if tenth > self.said:
            self.said = tenth
            print(f"{self.desc}: {self.n}/{self.total} ({time.time() - self.start:.0f}s)", file=sys.stderr, flush=True)

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def bar(iterable=None, quiet: bool = False, **kwargs):
    """tqdm on a terminal; elsewhere `Tenths` (silent for inner loops, leave=False); nothing when `quiet`
    (ranks other than the main one)."""
    if not quiet and on_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    silent = quiet or kwargs.get("leave", True) is False
    return Tenths(iterable, kwargs.get("desc", ""), kwargs.get("total"), silent)
