"""The commands: one module per `python -m lumbar <command>` and what only they use (the kernel builder,
the Kaggle layout, the reports, plots, scoring tables, the learning curve, the rehearsal, benchmarks).

They sit on top: they may import every layer below (base modules, data, preprocess, models, infer,
train), and nothing below imports them (tests/test_architecture.py walks the imports)."""
