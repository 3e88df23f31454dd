"""Experiment configs (ml_collections): `base.py` defaults and validation, one module per
dataset holding the published recipes, `demo.py`, and per-model-family recipes in `models/`.

Use them through `python -m grl_jax.main --config=configs/<name>.py[:args]`."""
