"""A traced serving function re-expressed in primitives every converter of ours handles.

The ONNX converter (jax2onnx) lowers JAX primitives one by one, and two that our models emit
do not come out runnable:

* `reduce_window_max` (the ResNet stem's 3x3/2 max pool, grl_jax/models/resnet.py `stem`)
  becomes an ONNX MaxPool over all four NHWC axes, which onnxruntime refuses ("Unsupported
  pooling size": it pools over at most 3 spatial axes);
* a reverse `scan` (GRL's backward TRL, grl_jax/models/trl.py; also `lax.map` bodies are scans)
  is not supported at all ("Reverse scan is not supported").

Rather than change the models, `rewritten(closed)` evaluates the traced jaxpr equation by
equation and replaces those primitives with equivalents: the max pool with the elementwise
maximum of its strided window slices, after -inf borders (exactly what `reduce_window_max`
computes; the borders are concatenated, not `lax.pad`-ded, because jax2onnx cannot type a pad
whose batch axis is a symbolic B*T), and a reverse scan with a forward `lax.scan` over
time-reversed inputs whose stacked outputs are reversed back. Calls (`jit`, `custom_jvp_call`,
`custom_vjp_call`, `remat2`) are inlined so that the rewrite reaches inside them; inference
needs none of their differentiation rules. Everything else is re-bound unchanged, so the
result is the same function (the tests compare it with the jitted original).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import jax
import jax.extend as jex
import jax.numpy as jnp

# Call-like primitives whose body is inlined, and the parameter that holds the body.
_INLINED = {'jit': 'jaxpr', 'pjit': 'jaxpr', 'closed_call': 'call_jaxpr',
            'core_call': 'call_jaxpr', 'custom_jvp_call': 'call_jaxpr',
            'custom_vjp_call': 'call_jaxpr', 'custom_vjp_call_jaxpr': 'fun_jaxpr',
            'remat2': 'jaxpr', 'checkpoint': 'jaxpr'}


def rewritten(closed) -> Callable[..., list]:
  """The function of the ClosedJaxpr `closed` (flat args -> flat list of outputs), rewritten."""
  return lambda *args: evaluate(closed.jaxpr, closed.consts, args)


def evaluate(jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list:
  """Evaluates `jaxpr` under the current trace, applying the rewrites of the module doc."""
  env: dict = {}

  def read(v):
    return v.val if isinstance(v, jex.core.Literal) else env[v]

  for var, value in itertools.chain(zip(jaxpr.constvars, consts), zip(jaxpr.invars, args)):
    env[var] = value
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in _INLINED and _INLINED[name] in eqn.params:
      body = eqn.params[_INLINED[name]]
      body_consts = getattr(body, 'consts', ())
      outs = evaluate(getattr(body, 'jaxpr', body), body_consts, invals)
    elif name == 'reduce_window_max':
      outs = [window_max(invals[0], **_window_params(eqn.params))]
    elif name == 'scan':
      outs = _scan(eqn.params, invals)
    else:
      # Older jax versions return (subfuns, params); the pinned one returns the params alone.
      bound = eqn.primitive.get_bind_params(eqn.params)
      subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
      outs = eqn.primitive.bind(*subfuns, *invals, **params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for var, value in zip(eqn.outvars, outs):
      if not isinstance(var, jex.core.DropVar):
        env[var] = value
  return [read(v) for v in jaxpr.outvars]


def _window_params(params: dict) -> dict:
  for key in ('base_dilation', 'window_dilation'):
    if any(int(d) != 1 for d in params.get(key, ())):
      raise NotImplementedError(f'reduce_window_max with {key}={params[key]} (our models use '
                                'plain strided max pools)')
  return {'window': tuple(params['window_dimensions']),
          'strides': tuple(params['window_strides']),
          'padding': tuple(tuple(p) for p in params['padding'])}


def window_max(x, window: tuple, strides: tuple, padding: tuple):
  """`lax.reduce_window_max(x, ...)` as a max over the window's strided slices.

  x: any rank (e.g. [N, H, W, C]); window, strides: one int per axis; padding: (lo, hi) per
  axis, padded with -inf (the identity of max), as reduce_window_max does.
  """
  low = jnp.array(-jnp.inf if jnp.issubdtype(x.dtype, jnp.floating)
                  else jnp.iinfo(x.dtype).min, x.dtype)
  for axis, (lo, hi) in enumerate(padding):
    x = _pad_axis(x, axis, lo, hi, low)
  out_shape = [(n - k) // s + 1 for n, k, s in zip(x.shape, window, strides)]
  result = None
  for offset in itertools.product(*(range(k) for k in window)):
    limit = [o + (m - 1) * s + 1 for o, m, s in zip(offset, out_shape, strides)]
    part = jax.lax.slice(x, offset, limit, strides)
    result = part if result is None else jnp.maximum(result, part)
  return result


def _pad_axis(x, axis: int, lo: int, hi: int, value):
  # Concatenation with constant slabs cut from x itself, not `lax.pad`: jax2onnx's pad cannot
  # type an output whose batch axis is a symbolic expression such as 4*B (the B*T frames of B
  # clips), and a slab taken from x keeps x's (symbolic) sizes on the other axes.
  if not lo and not hi:
    return x
  parts = []
  for n in (lo, hi):
    slab = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    slab = jnp.where(jnp.zeros((), bool), slab, value)
    parts.append(jnp.concatenate([slab] * n, axis=axis) if n else None)
  return jnp.concatenate([p for p in (parts[0], x, parts[1]) if p is not None], axis=axis)


def _scan(params: dict, invals: list) -> list:
  """A `scan` equation as a forward `lax.scan` (reverse: over flipped inputs and outputs)."""
  nc, ncarry = int(params['num_consts']), int(params['num_carry'])
  consts, init, xs = invals[:nc], invals[nc:nc + ncarry], invals[nc + ncarry:]
  body, reverse = params['jaxpr'], bool(params['reverse'])

  def step(carry, x):
    outs = evaluate(body.jaxpr, body.consts, [*consts, *carry, *x])
    return outs[:ncarry], outs[ncarry:]

  if reverse:
    xs = [jnp.flip(x, 0) for x in xs]
  carry, ys = jax.lax.scan(step, list(init), list(xs), length=int(params['length']),
                           unroll=params.get('unroll', 1))
  if reverse:
    ys = [jnp.flip(y, 0) for y in ys]
  return [*carry, *ys]


def primitive_names(closed) -> set[str]:
  """Every primitive in `closed`, nested bodies included (what a converter must lower)."""
  names: set[str] = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      names.add(eqn.primitive.name)
      for sub in jex.core.jaxprs_in_params(eqn.params):
        walk(getattr(sub, 'jaxpr', sub))

  walk(closed.jaxpr)
  return names


__all__ = ['evaluate', 'primitive_names', 'rewritten', 'window_max']
