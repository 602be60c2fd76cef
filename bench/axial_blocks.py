"""How often the held-out slice selection puts a level's axial slice in that level's block, over the
axial series made of five angled blocks (one per disc) of a trained run:

    python bench/axial_blocks.py --data data/real200 --run runs/real200/run --cache runs/real200/cache
"""
from __future__ import annotations

import argparse
import json
import warnings

from lumbar import schema
from lumbar.data.cache import StudyCache
from lumbar.data.catalog import load_studies
from lumbar.data.volumes import study_volumes
from lumbar.layout import Run
from lumbar.preprocess.pipeline import cache_version


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--cache", default="cache")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    selection = json.loads(Run(a.run).oof_selection.read_text())
    cache = StudyCache(a.cache, cache_version())
    hit = total = series = 0
    for st in load_studies(a.data, "train"):
        axial = dict(study_volumes(st, cache).get(schema.AXIAL, []))
        five = {sid for sid, v in axial.items() if v.n_blocks == 5}
        series += len(five)
        chosen = selection.get(str(st.study_id), {})
        for k, level in enumerate(schema.LEVELS):
            got = chosen.get(f"axial_{level}")
            if got and got[0] in five:
                total += 1
                hit += int(axial[got[0]].blocks[got[1]] == k)
    print(f"axial series of 5 blocks: {series}; the level's slice in its own block: {hit}/{total} "
          f"= {hit / max(total, 1):.3f}")


if __name__ == "__main__":
    main()
