"""A real-profile synthetic folder whose test split keeps every tag: the same studies, pixels and labels as
`python -m lumbar synth` with the same options, without the hidden test's missing tags, empty series
folders or swapped descriptions (drawn as usual, so every random stream stays the same, then cleared).

    python bench/clean_test_tags.py --out rtest100clean --studies 8 --test-studies 100 --seed 11 --size-scale 0.5

Scored with the same weights next to the folder as generated (bench/test_tags.py), the difference is what
the missing tags cost the submission.
"""
from __future__ import annotations

import argparse

import lumbar.data.synth.folder as synth  # generate() reads _real_irregularities from here


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--test-studies", type=int, default=100)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--size-scale", type=float, default=0.5)
    a = ap.parse_args()
    drawn = synth._real_irregularities

    def without_tag_problems(specs, rng, test, ensure):
        drawn(specs, rng, test, ensure)
        for s in specs:
            s.drop, s.empty_series, s.mismatch = {}, False, False

    synth._real_irregularities = without_tag_problems
    synth.generate(synth.SynthConfig(out=a.out, studies=a.studies, test_studies=a.test_studies, seed=a.seed,
                                     profile="real", size_scale=a.size_scale))


if __name__ == "__main__":
    main()
