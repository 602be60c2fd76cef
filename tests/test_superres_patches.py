"""Super-resolution's training patches: small copies, not views that keep every crop they came from alive
(at 1,975 studies the held-out set's crops made the stage 1.9 GB, issue 42)."""
import tracemalloc

import numpy as np

from lumbar.train.superres import _patches


def _entries(n: int, rng) -> list[dict]:
    def crops(k):
        return rng.integers(0, 4000, size=(k, 3, 160, 160)).astype(np.uint16)
    return [{"sag_image": crops(3), "axial_image": crops(5), "present": np.ones(8, bool)} for _ in range(n)]


def test_patches_hold_their_pixels_only():
    rng = np.random.default_rng(0)
    entries = _entries(25, rng)  # 200 crops, each 307 kB once made float32
    tracemalloc.start()
    p = _patches(entries, 32, 2, np.random.default_rng(1))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert tuple(p.shape) == (400, 1, 32, 32)
    assert peak < 8e6  # views kept every float32 crop: ~60 MB; copies: the patches and one crop
    # the same patches as the crops hold: the first one is where the seeded draw put it
    r = np.random.default_rng(1)
    ch, (y, x) = r.integers(0, 3), r.integers(0, 160 - 32 + 1, size=2)
    np.testing.assert_array_equal(p[0, 0].numpy(), entries[0]["sag_image"][0][ch, y:y + 32, x:x + 32].astype(np.float32))
