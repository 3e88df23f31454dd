"""Mixed precision, read from the lowered train step: under config.model.dtype='bfloat16' every
convolution and matmul of the model takes bf16 operands, while BatchNorm statistics, softmaxes,
sigmoids, logs and the loss stay float32; under 'float32' nothing is bf16.

The module read is the train step's StableHLO before XLA optimises it
(`jax.jit(...).lower(...).as_text(debug_info=True)`): what every backend receives. XLA:CPU's
optimised HLO cannot tell, since the CPU compiler itself widens bf16 convolutions to float32.
Each op's source location (its Python call stack) says which code emitted it, so a float32
matmul is allowed only where it is meant to be: the losses (grl_jax/losses.py,
grl_jax/objectives.py) and, for the non-local / CIAU baselines, the unscaled attention affinity
of `grl_jax.models.layers.softmax_attention` (logits of O(10^3); documented there).

Tiny configs (configs/demo.py's reduced trunk, 4 clips x 2 or 4 frames x 64 x 32); lowering
only, nothing is compiled: about 10 s.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import re

import jax
import pytest

from configs import demo
from grl_jax import checkpoint, sharding
from grl_jax.trainer import setup as setup_lib

FLOAT_TYPES = ('bf16', 'f16', 'f32', 'f64')
# Ops whose float math must stay float32 whatever the compute dtype: exp (softmax, sigmoid,
# log-sum-exp), logs (losses), rsqrt (BatchNorm's 1 / sqrt(var + eps)).
F32_OPS = ('exponential', 'log', 'log_plus_one', 'rsqrt')
LOSS_FILES = ('grl_jax/losses.py', 'grl_jax/objectives.py')


@dataclasses.dataclass
class Op:
  name: str                  # 'convolution', 'dot_general', ...
  operand_types: tuple       # element types of the operands, e.g. ('bf16', 'bf16')
  types: tuple               # every element type on the line (operands and results)
  frames: tuple              # ((function, file), ...) innermost first


def _config(model: str, dtype: str):
  config = demo.get_config(f'model={model}')
  with config.unlocked():
    config.model.dtype = dtype
    config.train.global_batch_size = 4
    config.data.seq_len = 2 if model == 'grl' else 4   # NVAN-style reductions need T % 4 == 0
    if config.data.batch_sampler == 'pk':
      config.data.p, config.data.k = 2, 2
  return config


@functools.lru_cache(maxsize=None)
def lowered_ops(model: str, dtype: str) -> tuple:
  """(ops, text) of the train step of `model` at `dtype`, lowered on the CPU."""
  config = _config(model, dtype)
  s = setup_lib.build(config, num_classes=8, steps_per_epoch=10)
  state = checkpoint.abstract_tree(s.abstract_state, sharding.replicated(s.mesh))
  d, sh = config.data, sharding.data_sharding(s.mesh)
  b = int(config.train.global_batch_size)
  spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sh)  # noqa: E731
  batch = {'frames': spec((b, int(d.seq_len), int(d.height), int(d.width), 3), 'uint8'),
           'pid': spec((b,), 'int32'), 'camid': spec((b,), 'int32'),
           'tracklet': spec((b,), 'int32')}
  lowered = s.train_step.lower(state, batch)
  text = lowered.as_text(debug_info=True)
  return tuple(parse(text)), text, lowered.out_info


def parse(text: str) -> list[Op]:
  """The single-line StableHLO ops of `text` with their element types and call stacks."""
  defs = dict(re.findall(r'^(#loc\d*) = (loc\(.*\))$', text, re.M))

  @functools.lru_cache(maxsize=None)
  def expand(ref: str) -> str:
    return re.sub(r'#loc\d*', lambda m: expand(m.group(0)), defs.get(ref, ref))

  ops = []
  for line in text.splitlines():
    m = re.search(r'stablehlo\.([a-z_]+)\b.* loc\((#loc\d*)\)\s*$', line)
    if not m:
      continue
    sig = re.search(r' : \((.*)\) -> ', line)
    operand_types = tuple(re.findall(r'x?(bf16|f16|f32|f64)>', sig.group(1))) if sig else ()
    frames = tuple(re.findall(r'loc\("([^"]+)"\(loc\("([^"]+\.py)":', expand(m.group(2))))
    ops.append(Op(m.group(1), operand_types,
                  tuple(re.findall(r'x?(bf16|f16|f32|f64)>', line)), frames))
  return ops


def _in(op: Op, *files: str) -> bool:
  return any(f.endswith(files) for _, f in op.frames)


def _called_from(op: Op, function: str) -> bool:
  return any(fn == function for fn, _ in op.frames)


def _where(op: Op) -> str:
  return ' <- '.join(f'{fn} ({f.rsplit("/", 1)[-1]})' for fn, f in op.frames[:4])


@pytest.mark.parametrize('model,f32_matmuls_allowed_in', [
    ('grl', ()),
    ('iaunet', ('softmax_attention',)),
])
def test_bf16_matmuls_and_f32_statistics(model, f32_matmuls_allowed_in):
  ops, text, out_info = lowered_ops(model, 'bfloat16')
  matmuls = [op for op in ops if op.name in ('convolution', 'dot_general')]
  # Every conv / dot of the module is seen (none hides on a line the parser skips).
  assert len(matmuls) == len(re.findall(r'stablehlo\.(?:convolution|dot_general)\b', text))
  counts = collections.Counter((op.name, op.operand_types) for op in matmuls)
  # The ResNet's 17 convs forward, 2 products each backward (the stem: 1, frames get no grad);
  # a conv over a map smaller than its kernel (this tiny model's layer4) is a matmul
  # (layers.conv_general_dilated).
  trunk = collections.Counter(op.operand_types for op in matmuls if op.name == 'convolution' or (
      op.name == 'dot_general' and _called_from(op, 'conv_general_dilated')))
  assert trunk[('bf16', 'bf16')] >= 17 * 3 - 1 and set(trunk) == {('bf16', 'bf16')}, trunk
  assert counts[('dot_general', ('bf16', 'bf16'))] > 20, counts

  wrong = []
  for op in matmuls:
    if op.operand_types == ('bf16', 'bf16'):
      continue
    if (op.name == 'dot_general' and set(op.operand_types) == {'f32'}
        and (_in(op, *LOSS_FILES) or any(_called_from(op, f) for f in f32_matmuls_allowed_in))):
      continue
    wrong.append(f'{op.name}{op.operand_types} at {_where(op)}')
  assert not wrong, f'{len(wrong)} matmuls not in bf16:\n' + '\n'.join(wrong[:20])
  # The losses' products are float32 (they are where the exceptions come from).
  assert any(op.name == 'dot_general' and set(op.operand_types) == {'f32'}
             and _in(op, *LOSS_FILES) for op in matmuls)

  # BatchNorm statistics: every float op inside flax's statistics is float32.
  stats = [op for op in ops if _called_from(op, '_compute_stats') and op.types]
  assert len(stats) > 100
  bad = [f'{op.name}{op.types} at {_where(op)}' for op in stats if set(op.types) != {'f32'}]
  assert not bad, bad[:10]
  # Softmax / sigmoid / log / BN rsqrt run in float32.
  special = [op for op in ops if op.name in F32_OPS]
  assert {op.name for op in special} >= {'exponential', 'log', 'rsqrt'}
  bad = [f'{op.name}{op.types} at {_where(op)}' for op in special if set(op.types) != {'f32'}]
  assert not bad, bad[:10]

  # The loss and metrics, the new params and BN statistics are float32.
  state_out, metrics = out_info
  assert metrics['loss'].dtype == 'float32'
  assert all(m.dtype == 'float32' for m in jax.tree.leaves(metrics) if m.dtype.kind == 'f')
  for tree in (state_out.params, state_out.batch_stats):
    assert {str(x.dtype) for x in jax.tree.leaves(tree)} == {'float32'}


def test_float32_preset_has_no_bf16():
  ops, text, _ = lowered_ops('grl', 'float32')
  assert not re.search(r'[x<]bf16>', text)            # no bf16 tensor anywhere
  matmuls = [op for op in ops if op.name in ('convolution', 'dot_general')]
  assert matmuls and all(set(op.operand_types) == {'f32'} for op in matmuls)
