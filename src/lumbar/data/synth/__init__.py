"""The embedded default: a synthetic competition folder, written by `python -m lumbar synth`.

spec (what is asked for, what each study is drawn to be) -> phantom (the analytic spine and its slices)
-> dicom (the files) -> studies (one study's series in either profile, its coordinates) -> folder
(`generate`: every study, the CSVs, the test labels and the exact oracle). Part of the data layer: it
imports the base modules and data/labelmodel, and nothing above.
"""
from .folder import generate
from .spec import SynthConfig

__all__ = ["SynthConfig", "generate"]
