"""Inference, what the kernel amalgamates: loading weights that prove themselves (weights, probes), a
study's inputs in workers under a deadline (inputs, workers), the time budget, the ensemble and the
submission (engine.predict). It imports the base modules, data/, preprocess/ and models/, never train/."""
