"""Checkpoints: an orbax `CheckpointManager` directory, `<workdir>/checkpoints/<step>/`.

Every step directory holds up to three items:

  variables    {'params': ..., 'batch_stats': ...}            (StandardSave, sharded arrays)
  train_state  {'step', 'opt_state', 'objective_state', 'rng'} (absent in converted checkpoints)
  meta         JSON {'config': config as a plain dict, 'step': int, 'epoch': float, ...}

plus orbax's own `metrics` item ({'mAP': ..., ...}) on steps that were evaluated.

Policies:
* saves are asynchronous (the step loop continues while arrays are written); `wait()` or
  `close()` blocks until they are on disk;
* kept: the latest `keep` steps plus the best step by the validation metric (orbax
  `preservation_policy` = LatestN OR BestN(1));
* atomicity: orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames when complete (a
  commit marker on object stores), and only finalized steps are listed, so a checkpoint
  half-written by a killed process is never restored; leftovers are removed at start-up
  (`cleanup_tmp_directories`).

`write_variables` / `restore_variables` handle variables-only checkpoints for
`grl_jax.convert`, `grl_jax.inference` and `--mode=eval|extract` (no optimiser needed).

Format version: `meta.format_version` (FORMAT_VERSION at save / write_variables time; a meta
without one is version 1, what the code wrote before the field existed). Every restore reads
the meta first and refuses a version newer than FORMAT_VERSION with a one-line CheckpointError,
before orbax meets a layout it may not know. Bump FORMAT_VERSION whenever what a step directory
holds changes incompatibly (items, TrainState fields, meta keys readers rely on), and add a
fixture of the new version beside the old ones (tests/faults/make_fixture.py).

Out of space: a save that fails because the disk is full (ENOSPC / EDQUOT, however orbax or
tensorstore wrap it; an asynchronous save's error surfaces at the next save, `wait` or `close`)
becomes a one-line CheckpointError naming the step, the directory and the last complete step,
which stays restorable: the failed step never got its commit marker.
"""
from __future__ import annotations

import errno
import logging as py_logging
import math
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from grl_jax import io
from grl_jax.errors import CheckpointError

PyTree = Any
ITEMS = ('variables', 'train_state', 'meta')
SUBDIR = 'checkpoints'
FORMAT_VERSION = 1   # of what a step directory holds; see the module docstring
_UNVERSIONED = 1     # checkpoints written before meta.format_version existed


class _QuietFilter(py_logging.Filter):
  # orbax warns on every save without metrics when best-tracking is on; most of our saves are
  # periodic (unevaluated) by design.
  def filter(self, record):
    msg = record.getMessage()
    return 'did not provide metrics' not in msg and 'Given directory is read only' not in msg


py_logging.getLogger('absl').addFilter(_QuietFilter())


def resolve_dir(directory: str) -> str:
  """`directory` may be a workdir (holding `checkpoints/`) or the checkpoint directory itself."""
  directory = io.normalize(directory)
  sub = io.join(directory, SUBDIR)
  if directory.rstrip('/').rsplit('/', 1)[-1] == SUBDIR:
    return directory
  if io.isdir(sub) or not _has_steps(directory):
    return sub
  return directory


def _has_steps(path: str) -> bool:
  return io.isdir(path) and any(name.isdigit() for name in io.listdir(path))


def exists(directory: str) -> bool:
  """True if `directory` (a workdir or checkpoint directory) holds a finished step."""
  path = resolve_dir(directory)
  return io.isdir(path) and bool(complete_steps(path))


def to_jsonable(x: Any) -> Any:
  """Config dicts / numpy scalars -> plain JSON values (non-finite floats -> None)."""
  if isinstance(x, dict) or hasattr(x, 'items'):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, np.ndarray) or isinstance(x, jax.Array):
    return to_jsonable(np.asarray(x).tolist())
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(float(x)) else None
  if isinstance(x, (bool, int, str)) or x is None:
    return x
  return str(x)


def config_to_dict(config) -> dict:
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  return to_jsonable(config)


def format_version(meta: dict) -> int:
  """The format version a checkpoint's meta records (1 when it records none)."""
  version = meta.get('format_version', _UNVERSIONED)
  return version if isinstance(version, int) and not isinstance(version, bool) else -1


def check_format(meta: dict, where: str) -> dict:
  """`meta` if this code can read its checkpoint, else a CheckpointError naming `where`."""
  version = format_version(meta)
  if version < 1:
    raise CheckpointError(f'checkpoint {where}: meta.format_version='
                          f'{meta.get("format_version")!r} is not a positive integer')
  if version > FORMAT_VERSION:
    raise CheckpointError(
        f'checkpoint {where} has format version {version}, newer than this code\'s format '
        f'version {FORMAT_VERSION}; upgrade grl_jax to read it')
  return meta


_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ('No space left on device', 'Disk quota exceeded',
                  f"os_error_code='{errno.ENOSPC}'", f"os_error_code='{errno.EDQUOT}'")


def out_of_space(error: BaseException) -> bool:
  """Whether `error` (or anything in its cause / context chain) says the disk is full.

  orbax reports tensorstore's write failures as ValueError('RESOURCE_EXHAUSTED: ... No space
  left on device [os_error_code='28']') and Python writes as OSError(ENOSPC): the text is the
  only thing the two have in common.
  """
  seen, depth = error, 0
  while seen is not None and depth < 16:
    if isinstance(seen, OSError) and seen.errno in _NO_SPACE_ERRNOS:
      return True
    if any(t in str(seen) for t in _NO_SPACE_TEXT):
      return True
    seen, depth = seen.__cause__ or seen.__context__, depth + 1
  return False


def replicated_sharding() -> NamedSharding:
  """Every device of every process holds the whole array."""
  return NamedSharding(Mesh(np.asarray(jax.devices()), ('data',)), P())


def abstract_tree(tree: PyTree, sharding=None) -> PyTree:
  """ShapeDtypeStructs (with `sharding`, or each leaf's own) for a restore target."""
  def leaf(x):
    s = sharding if sharding is not None else getattr(x, 'sharding', None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  return jax.tree.map(leaf, tree)


_READ_ONLY = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)


class Checkpointer:
  """The training checkpoints of one workdir (see the module docstring for the policies)."""

  def __init__(self, directory: str, *, keep: int = 2, best_metric: str = 'mAP',
               async_save: bool = True, read_only: bool = False):
    self.workdir = io.normalize(directory)
    self.directory = resolve_dir(directory)
    self.best_metric = best_metric
    self._saving = None        # the step of the last save started (its error may come later)
    self._failed = None        # the CheckpointError already raised for a failed save
    metric = lambda m: float(m[best_metric])  # noqa: E731
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=int(keep)),
        ocp.checkpoint_managers.BestN(get_metric_fn=metric, n=1,
                                      keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=0 if read_only else 1,  # the trainer decides when to save
        preservation_policy=None if read_only else policy,
        best_fn=metric, best_mode='max',
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save)
    if not read_only:
      if jax.process_index() == 0:
        _set_aside_incomplete(self.directory)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices('grl_jax.checkpoint.set_aside_incomplete')
    self.manager = _manager(self.directory, options)

  # -- queries
  def latest_step(self) -> Optional[int]:
    """The newest *complete* step (see `complete_steps`), or None."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> Optional[int]:
    """The step with the best validation metric (None if no step was evaluated)."""
    steps_with_metrics = [s for s in self.all_steps() if self.metrics(s) is not None]
    return self.manager.best_step() if steps_with_metrics else None

  def all_steps(self) -> list[int]:
    """Complete steps, ascending."""
    return complete_steps(self.directory, self.manager.all_steps())

  def metrics(self, step: int) -> Optional[dict]:
    for info in self.manager._checkpoints:  # pylint: disable=protected-access
      if info.step == step:
        return info.metrics
    return None

  def has_train_state(self, step: int) -> bool:
    return _item_exists(self.directory, step, 'train_state')

  # -- save / restore
  def save(self, state, *, meta: dict, metrics: Optional[dict] = None) -> int:
    """Saves `state` (a grl_jax.state.TrainState) at its step; returns the step.

    Asynchronous: returns once the arrays are copied off the device. `metrics` (eval results of
    this very state) make the step a candidate for the best-checkpoint slot.
    """
    step = int(jax.device_get(state.step))
    variables, rest = state.checkpoint_items()
    meta = dict(meta, step=step, format_version=FORMAT_VERSION)
    args = ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                              train_state=ocp.args.StandardSave(rest),
                              meta=ocp.args.JsonSave(to_jsonable(meta)))
    if metrics is not None:
      metrics = {k: v for k, v in to_jsonable(metrics).items()
                 if isinstance(v, (int, float))}
    # orbax first waits for the previous asynchronous save: its failure surfaces here.
    self._guard(lambda: self.manager.wait_until_finished())
    self._saving = step
    self._guard(lambda: self.manager.save(step, args=args, metrics=metrics, force=True))
    return step

  def restore(self, abstract_state, step: Optional[int] = None):
    """(TrainState, meta) of `step` (latest if None), arrays placed as in `abstract_state`.

    `abstract_state`: a TrainState of ShapeDtypeStructs carrying shardings (see
    `abstract_tree`); optax tuples / namedtuples come back as such only with this target.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {self.directory}')
    # The meta alone first: a newer format is refused before orbax reads its arrays.
    check_format(dict(self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']), f'{self.directory}/{step}')
    variables, rest = abstract_state.checkpoint_items()
    out = self.manager.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(variables),
        train_state=ocp.args.StandardRestore(rest),
        meta=ocp.args.JsonRestore()))
    return type(abstract_state).from_checkpoint_items(out['variables'], out['train_state']), \
        dict(out['meta'])

  def wait(self):
    self._guard(self.manager.wait_until_finished)

  def close(self):
    """Waits for the last save and releases the manager. A save failure not yet reported
    raises here; one already raised (by `save` / `wait`) is not raised twice."""
    try:
      self._guard(self.manager.wait_until_finished)
    except CheckpointError:
      if self._failed is None:
        raise
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        if self._failed is None:
          raise

  def space_error(self, doing: str) -> CheckpointError:
    """The one-line error for a full disk met while `doing` (a save, or any other write into
    the workdir: the loop reports a failed metrics or TensorBoard write with it too). Once
    made, later failures of the same save are not raised again by `close`."""
    last = complete_steps(self.directory)
    self._failed = CheckpointError(
        f'no space left on the device of {self.workdir} while {doing}; the last complete '
        f'checkpoint is {f"{self.directory}/{last[-1]}" if last else "none"}. Free space there '
        '(or move the workdir) and rerun the same command to resume from it')
    return self._failed

  def _guard(self, fn):
    """Runs a save / wait; an out-of-space failure becomes `space_error`."""
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      if not out_of_space(e):
        raise
      if self._failed is not None:
        raise self._failed from e   # the same failure, surfacing again
      raise self.space_error(f'saving checkpoint step {self._saving} (left incomplete and '
                             'ignored)') from e


def _manager(path: str, options) -> ocp.CheckpointManager:
  # Explicit handlers (rather than item_names) let metadata and partial restores work without
  # orbax's "item found but could not be restored" warnings.
  return ocp.CheckpointManager(path, options=options, item_handlers={
      'variables': ocp.StandardCheckpointHandler(),
      'train_state': ocp.StandardCheckpointHandler(),
      'meta': ocp.JsonCheckpointHandler()})


def complete_steps(directory: str, steps=None) -> list[int]:
  """Steps whose directory holds orbax's commit marker (written last, after every item).

  On a local disk orbax's atomic rename already hides unfinished saves
  (`<step>.orbax-checkpoint-tmp-*`); the marker check also rejects a `<step>/` directory that was
  copied or synced only in part.
  """
  if steps is None:
    steps = ([int(n) for n in io.listdir(directory) if n.isdigit()]
             if io.exists(directory) else [])
  return sorted(s for s in steps
                if io.exists(io.join(directory, str(s), 'commit_success.txt')))


def _set_aside_incomplete(directory: str):
  """Renames `<step>/` directories without a commit marker to `<step>.incomplete-<n>`.

  Orbax would otherwise count them as saved steps (a later save of that step would fail, and
  they would take a place in the keep-latest-K policy). Renaming keeps the bytes for inspection.
  """
  if not io.exists(directory):
    return
  for name in io.listdir(directory):
    step_dir = io.join(directory, name)
    if (name.isdigit() and io.isdir(step_dir)
        and not io.exists(io.join(step_dir, 'commit_success.txt'))):
      n = 0
      while io.exists(io.join(directory, f'{name}.incomplete-{n}')):
        n += 1
      py_logging.warning('checkpoint %s is incomplete (no commit marker): moved to %s',
                         step_dir, f'{name}.incomplete-{n}')
      io.rename(step_dir, io.join(directory, f'{name}.incomplete-{n}'))


def _item_exists(directory: str, step: int, item: str) -> bool:
  return io.exists(io.join(directory, str(step), item))


def write_variables(directory: str, variables: dict, config, step: int = 0,
                    extra_meta: Optional[dict] = None) -> str:
  """Writes a variables-only checkpoint (no optimiser state) at `step`; returns its directory.

  Args:
    directory: a workdir (the checkpoint goes into `<directory>/checkpoints/<step>`) or a
      `.../checkpoints` directory.
    variables: {'params': ..., 'batch_stats': ...} (numpy or jax arrays).
    config: the ConfigDict (or plain dict) the variables belong to; stored in `meta.config` so
      that `grl_jax.inference.load` can rebuild the model.
    step: the step number to store it under.
    extra_meta: merged into the meta JSON (e.g. {'source': 'torchvision resnet50'}).
  """
  path = resolve_dir(directory)
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  meta = {'config': config_to_dict(config), 'step': int(step), **(extra_meta or {}),
          'format_version': FORMAT_VERSION}
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  try:
    with _manager(path, options) as mngr:
      mngr.save(int(step), args=ocp.args.Composite(
          variables=ocp.args.StandardSave(variables),
          meta=ocp.args.JsonSave(to_jsonable(meta))), force=True)
      mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    if not out_of_space(e):
      raise
    raise CheckpointError(f'no space left on the device of {path} while writing checkpoint '
                          f'step {step}; free space there or choose another output') from e
  return io.join(path, str(step))


def _existing_dir(directory: str) -> str:
  path = resolve_dir(directory)
  if not io.isdir(path):
    raise CheckpointError(f'no checkpoint directory at {path} (looked for <dir>/{SUBDIR}/'
                          '<step>/ and <dir>/<step>/)')
  return path


def _finished_step(mngr, path: str, step: Optional[int]) -> int:
  """`step` if it is a finished step of `path`, or the latest one when None."""
  steps = complete_steps(path, mngr.all_steps())
  if step is None:
    if not steps:
      raise CheckpointError(f'no finished checkpoint step in {path}')
    return steps[-1]
  if step not in steps:
    raise CheckpointError(f'step {step} not in {path}; available: {steps}')
  return step


def restore_variables(directory: str, step: Optional[int] = None, sharding=None
                      ) -> tuple[dict, dict]:
  """Restores `variables` and `meta` of `step` (latest if None) without the optimiser.

  Args:
    directory: workdir or its `checkpoints/` directory.
    step: which step; None = latest.
    sharding: where the arrays go; default replicated over all devices.

  Returns:
    ({'params': ..., 'batch_stats': ...} of jax.Arrays, meta dict with 'config', 'step', ...).
  """
  path = _existing_dir(directory)
  with _manager(path, _READ_ONLY) as mngr:
    step = _finished_step(mngr, path, step)
    _read_checked_meta(mngr, path, step)
    sharding = sharding if sharding is not None else replicated_sharding()
    meta_tree = mngr.item_metadata(step)['variables']
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), meta_tree,
        is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))
    out = mngr.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  variables = dict(out['variables'])
  variables.setdefault('batch_stats', {})
  return variables, dict(out['meta'])


def read_meta(directory: str, step: Optional[int] = None) -> dict:
  """The meta JSON of `step` (latest if None), without touching arrays."""
  path = _existing_dir(directory)
  with _manager(path, _READ_ONLY) as mngr:
    step = _finished_step(mngr, path, step)
    return _read_checked_meta(mngr, path, step)


def _read_checked_meta(mngr, path: str, step: int) -> dict:
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  return check_format(dict(meta), f'{path}/{step}')


def dump_json(path: str, obj: Any):
  io.write_json(path, to_jsonable(obj))


def merge_variables(target: dict, loaded: dict, prefix: str = '') -> tuple[dict, int]:
  """Warm start: `target` variables with every tensor of `loaded` whose path matches copied in.

  Args:
    target: {'params': ..., 'batch_stats': ...} of the fresh model (host or device arrays).
    loaded: the same collections of a restored checkpoint (e.g. converted ImageNet weights).
    prefix: '/'-path inside the target where `loaded`'s tree is placed ('' = at the root;
      e.g. 'backbone' for a bare ResNet).

  Returns:
    (merged variables, number of tensors copied). Copied tensors take the target's dtype.

  Raises:
    CheckpointError if a matching path has another shape, or if no path matches at all.
  """
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  head = tuple(p for p in str(prefix).split('/') if p)
  copied, mismatched, merged = 0, [], {}
  for coll in ('params', 'batch_stats'):
    flat = traverse_util.flatten_dict(target.get(coll) or {})
    for path, value in traverse_util.flatten_dict(loaded.get(coll) or {}).items():
      key = head + tuple(path)
      if key not in flat:
        continue
      if tuple(flat[key].shape) != tuple(value.shape):
        mismatched.append(f'{"/".join(key)} {tuple(value.shape)} vs {tuple(flat[key].shape)}')
        continue
      flat[key] = value.astype(flat[key].dtype)
      copied += 1
    merged[coll] = traverse_util.unflatten_dict(flat) if flat else {}
  if mismatched:
    raise CheckpointError(f'shapes differ for {len(mismatched)} tensors, e.g. {mismatched[:3]}')
  if copied == 0:
    raise CheckpointError(f'no tensor path matches the model (prefix {prefix!r}); check '
                          'config.init.prefix')
  return merged, copied
