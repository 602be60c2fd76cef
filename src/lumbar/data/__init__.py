"""The data layer: a competition folder read (catalog), its series decoded into Volumes in patient space
(dicom, volumes, resample), the per-study cache, and the synthetic folder (synth/, labelmodel). It imports
the base modules (schema, config, files, ...) only."""
