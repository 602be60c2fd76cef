"""lumbar: RSNA 2024 lumbar spine degenerative classification, from DICOM to one offline Kaggle kernel.

The layers, each importing only those above it in this list (tests/test_architecture.py walks the imports):
  base        the modules at this root: schema, config, metric, cv, files, layout, devices, progress
  data/       the competition folder, DICOM into patient-space volumes, the cache, the synthetic folder
  preprocess/ stage one per study (slice selection, levels, crops) and the sequence model's frames
  models/     the networks, one registered plug-in each
  infer/      weights that prove themselves, the engine, the ensemble, the submission (the kernel's closure)
  train/      one trainer per stage, the training loop, folds, export
  commands/   one module per `python -m lumbar <command>`, the kernel builder, reports, benchmarks
"""
__version__ = "0.1.0"
