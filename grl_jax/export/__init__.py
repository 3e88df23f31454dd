r"""Export a checkpoint for serving: StableHLO, ONNX or a TensorFlow SavedModel.

    python -m grl_jax.export --workdir=W --format=stablehlo|onnx|savedmodel --batch=B \
        --output=PATH [--step=N] [--dynamic_batch] [--platforms=cpu,cuda,tpu] \
        [--dtype=float32] [--nocheck]

W is anything `grl_jax.inference.load` accepts (a training workdir, its `checkpoints/`, a
`grl_jax.convert` output); the latest step unless --step. Every format serves one function,

    clips uint8[B, T, H, W, 3] (RGB, 0-255)  ->  descriptors float32[B, D]

exactly `inference.Extractor.clip_features` (grl_jax/export/serving.py): T, H, W are the
checkpoint's `config.data.seq_len`, `height`, `width`; ImageNet normalisation happens inside;
the variables are baked in as constants, so the artifact is self-contained. Compare
descriptors with the model's `descriptor_distance` (GRL: dot; NVAN, STE-NVAN, IAUnet: cosine),
which `<PATH>.json` records beside the artifact together with the shapes, model, step,
versions and the check result.

Formats (one module each; the loading code is in their docstrings):
* `stablehlo` (grl_jax/export/stablehlo.py): `jax.export.export(jax.jit(f)).serialize()` to the
  file PATH; reload with `jax.export.deserialize(bytes).call(clips)` (jax + numpy only).
* `onnx` (grl_jax/export/onnx_format.py): jax2onnx -> PATH (.onnx, opset 23, weights inside);
  run with onnxruntime. Our models' stem max pool and GRL's backward (reverse) TRL scan are
  rewritten into primitives jax2onnx lowers runnably (grl_jax/export/rewrite.py).
* `savedmodel` (grl_jax/export/savedmodel.py): jax2tf -> the directory PATH, signature
  `serving_default(clips) -> {'descriptors'}`; load with `tf.saved_model.load`.

Batch: `--batch=B` fixes the batch axis (the default; every runtime can specialise its plan).
`--dynamic_batch` exports a symbolic batch 'b' (StableHLO shape polymorphism, an ONNX dim_param,
a None TF dimension) so one artifact takes any number of clips, B being only the check batch.
It works for every registered model (GRL, NVAN, STE-NVAN, IAUnet) in all three formats: no
model branches on the batch size.

Check: after writing, the artifact is loaded with its own runtime and run on B random clips
next to the JAX extractor; a relative max difference (max|a - b| / (1 + max|b|)) above 1e-4 is
an error (`--nocheck` skips it, e.g. when the ONNX runtime is not installed).

Compute dtype: the checkpoint's `config.model.dtype` unless `--dtype`. onnxruntime's CPU
kernels have no bfloat16 Einsum / Conv, so a bfloat16 checkpoint goes to ONNX with
`--dtype=float32` (its variables are float32; the reference of the check is then the float32
extractor); StableHLO and SavedModel keep bfloat16 fine.

Platforms: StableHLO and SavedModel artifacts are lowered for the platform JAX runs on at
export time unless `--platforms` lists others (lowering needs no such device; running does).

Compatibility of a serialized StableHLO artifact (also what the SavedModel embeds), as the
jax.export documentation guarantees ("Exporting and serializing staged-out computations",
section "Compatibility guarantees"): it can be deserialized, compiled and run by a JAX/jaxlib
(or TensorFlow/XLA) consumer built up to 6 months AFTER the jaxlib that exported it (backward
compatibility) and up to 3 weeks BEFORE it (forward compatibility); what counts is when the
jaxlib builds were made. Exported with the pinned jax/jaxlib 0.10.2 (requirements.txt), the
artifact uses calling convention version 10 (jaxlib 0.10.2 reads versions 9-10) and the
StableHLO portable-artifact format, whose own guarantee is the same 6-month / 3-week window.
The guarantee covers StableHLO ops and the custom calls jax.export lists as stable; our models
lower to no custom call but jax.export's own `shape_assertion` (dynamic batch only, on that
list), so it applies whole. For archives: keep the checkpoint as the source of truth and
re-export with a current jaxlib (an export takes seconds). ONNX models are versioned by opset
instead: opset 23, checked with onnxruntime 1.32.0; any runtime implementing opset 23 runs them.

Python API: `export(workdir, fmt, batch, output, step=None, dynamic_batch=False,
platforms=None, dtype=None, check=True) -> dict`; `load(workdir, step, dtype)` for the
function itself (grl_jax/export/serving.py).
"""
from __future__ import annotations

from grl_jax.export.exporter import description_path, export
from grl_jax.export.serving import ExportError, Serving, load

__all__ = ['ExportError', 'Serving', 'description_path', 'export', 'load']
