"""Per-model-family published recipes: `configs/models/<family>.py:recipe(name) -> ConfigDict`
with sections `model`, `loss`, `optim`, `data`, `train`, `eval` (fields of configs/base.py)."""
