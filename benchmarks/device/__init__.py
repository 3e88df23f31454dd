"""Pieces of the device benchmark suite (`benchmarks/device_suite.py`).

* `common.py`: JSON rows, timing, XLA cost / memory analysis, the bf16 matmul peak and the
  largest-batch search (a pure function of a `fits(batch)` probe).
* `jax_rows.py`: the grl_jax measurements (train steps, eval extraction, evaluation).
* `torch_grl.py`: the official PyTorch GRL train step (a script of its own: no JAX in it).

Nothing here imports TensorFlow, `data_pipeline.pipeline` or `grl_jax.reporting`.
"""
