"""Stage one and the models' inputs, per study: slice features and the selector's members, the level
points and placement through patient space, the crops (pipeline.py runs them per study) and the sequence
model's frames. It imports the base modules and data/ (and torch for the small level and ranker nets)."""
