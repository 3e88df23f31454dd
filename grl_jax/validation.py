"""The start-up validator: every config check that can run before anything is compiled.

`validate(config, device_count=, process_count=, mode=)` runs once, in `grl_jax.main` (and at
the top of the trainer / offline entry points for library callers), and raises
`grl_jax.errors.ConfigError` naming the field and what was expected. It checks

* enum fields against `grl_jax.schema`, ranges of the numeric fields;
* the batch composition against the mesh and the process count (pairs / P x K groups);
* the evaluators of `config.evals` and that `config.eval.best_metric` is one of their metrics
  (grl_jax/evaluators/);
* the model's own shape constraints (`ModelSpec.check_config`: stripes vs feature height,
  clip length vs the model's temporal size, ...), which otherwise surface at trace time;
* that the data root exists (quoting what the dataset's root must contain), or that
  `config.data.packed` is a complete pack of the configured dataset (data_pipeline/pack/), and
  that a warm-start checkpoint directory exists.

It reads no pixels and compiles nothing: a bad config fails within seconds.
"""
from __future__ import annotations

from grl_jax import schema
from grl_jax.errors import ConfigError

_SECTIONS = ('seed', 'data', 'model', 'loss', 'optim', 'train', 'eval', 'init', 'mesh')
_ENUMS = (('data.dataset', schema.DATASETS), ('data.protocol', schema.PROTOCOLS),
          ('data.train_sampling', schema.TRAIN_SAMPLINGS),
          ('data.test_sampling', schema.TEST_SAMPLINGS),
          ('data.batch_sampler', schema.BATCH_SAMPLERS), ('data.pk_mode', schema.PK_MODES),
          ('data.erasing_mode', schema.ERASING_MODES), ('optim.name', schema.OPTIMIZERS),
          ('rng_impl', schema.RNG_IMPLS), ('accel', schema.ACCELS))


def _field(config, path: str):
  value = config
  for part in path.split('.'):
    value = value[part]
  return value


def _at_least(config, path: str, minimum: int):
  value = _field(config, path)
  if isinstance(value, bool) or int(value) != value or int(value) < minimum:
    raise ConfigError(f'config.{path}={value!r}: expected an int >= {minimum}')


def validate(config, *, device_count: int = 1, process_count: int = 1, mode: str = 'train',
             check_data: bool = True) -> None:
  """Raises ConfigError naming the field when `config` cannot run `mode` on this topology."""
  from grl_jax import models  # pylint: disable=g-import-not-at-top
  schema.check_choice(mode, schema.MODES, '--mode')
  for key in _SECTIONS:
    if key not in config:
      raise ConfigError(f'config has no field {key!r}; build configs from configs/base.py')
  for path, allowed in _ENUMS:
    schema.check_choice(_field(config, path), allowed, f'config.{path}')
  name = config.model.get('name')
  schema.check_choice(name, tuple(models.names()), 'config.model.name')
  if 'dtype' in config.model:
    schema.check_choice(config.model.dtype, schema.DTYPES, 'config.model.dtype')
  _check_data(config)
  _check_optim(config)
  _check_batch(config, device_count, process_count, mode)
  models.get(name).check_config(config)
  if mode in ('train', 'eval'):
    from grl_jax import evaluators  # pylint: disable=g-import-not-at-top
    if 'evals' not in config:
      raise ConfigError('config has no field \'evals\' (the evaluators, configs/base.py): '
                        'pass --config=<a config file> to choose them')
    evaluators.check_config(config)
  if check_data:
    check_data_root(config)
  if config.init.checkpoint and mode == 'train':
    from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
    if not checkpoint.exists(config.init.checkpoint):
      raise ConfigError(f'config.init.checkpoint={config.init.checkpoint!r} is not a '
                        'checkpoint directory; write one with `python -m grl_jax.convert` '
                        '(see README)')


def _check_data(config) -> None:
  d = config.data
  for field in ('height', 'width', 'seq_len', 'sample_stride'):
    _at_least(config, f'data.{field}', 1)
  for field in ('pad_crop', 'threads', 'p', 'k'):
    _at_least(config, f'data.{field}', 0)
  _at_least(config, 'data.prefetch', -1)
  if not 0.0 <= float(d.erasing_prob) <= 1.0:
    raise ConfigError(f'config.data.erasing_prob={d.erasing_prob}: expected in [0, 1]')
  if d.dataset in ('ilids', 'prid'):
    if not 0 <= int(d.split_id) <= 9:
      raise ConfigError(f'config.data.split_id={d.split_id}: {d.dataset} has splits 0..9')
  elif int(d.split_id) != 0:
    raise ConfigError(f'config.data.split_id={d.split_id}: only ilids/prid have splits; use 0')
  if d.synthetic.enabled:
    for field in ('num_train_ids', 'num_test_ids', 'height', 'width'):
      _at_least(config, f'data.synthetic.{field}', 1)


def _check_optim(config) -> None:
  o = config.optim
  if float(o.lr) <= 0:
    raise ConfigError(f'config.optim.lr={o.lr}: expected > 0')
  if float(o.weight_decay) < 0:
    raise ConfigError(f'config.optim.weight_decay={o.weight_decay}: expected >= 0')
  if list(o.decay_epochs) != sorted(o.decay_epochs):
    raise ConfigError(f'config.optim.decay_epochs={tuple(o.decay_epochs)}: expected ascending')
  for item in o.lr_mult:
    if len(item) != 2 or not isinstance(item[0], str):
      raise ConfigError(f'config.optim.lr_mult entry {item!r}: expected (regex, multiplier)')
  if int(o.epochs) < 1 and int(config.train.num_steps) < 1:
    raise ConfigError('config.optim.epochs and config.train.num_steps are both < 1: '
                      'nothing to train')


def _check_batch(config, device_count: int, process_count: int, mode: str) -> None:
  d, t = config.data, config.train
  n_mesh = schema.mesh_devices(config, device_count)
  if n_mesh < 1 or n_mesh > device_count:
    raise ConfigError(f'config.mesh.data={config.mesh.data}: this host sees {device_count} '
                      'devices; use -1 (all) or a number between 1 and that')
  if n_mesh % process_count:
    raise ConfigError(f'config.mesh.data={n_mesh} devices do not split over {process_count} '
                      'processes')
  if int(config.eval.batch_size) < 1 or int(config.eval.batch_size) % n_mesh:
    raise ConfigError(f'config.eval.batch_size={config.eval.batch_size}: expected a positive '
                      f'multiple of the {n_mesh} mesh devices')
  _at_least(config, 'eval.max_rank', 1)
  _at_least(config, 'eval.subset_ids', 0)
  if mode != 'train':
    return  # evaluation needs no training batch (nor training tracklets)
  batch = schema.global_batch_size(config, n_mesh)
  if batch < 1:
    raise ConfigError(f'config.train.global_batch_size={batch}: expected >= 1')
  if batch % n_mesh:
    raise ConfigError(
        f'config.train.global_batch_size={batch} is not divisible by the {n_mesh} devices of '
        f'the mesh; use a multiple of {n_mesh} (or set config.train.per_device_batch_size)')
  if d.batch_sampler == 'pair':
    group = 2
    if batch % 2:
      raise ConfigError(f'config.train.global_batch_size={batch}: the pair sampler needs an '
                        'even batch (B/2 anchor-partner pairs)')
  else:
    p, k = int(d.p), int(d.k)
    if p > 0 and k > 0 and p * k != batch:
      raise ConfigError(
          f'config.data.p={p} x config.data.k={k} = {p * k} clips, but the global batch is '
          f'{batch}; set train.global_batch_size (or p, k) so that P x K = global batch')
    if k <= 0:
      k = batch // p if p > 0 else 4
    if batch % k:
      raise ConfigError(f'global batch {batch} is not a multiple of config.data.k={k} '
                        '(tracklets per identity)')
    group = k
  if (batch // group) % process_count:
    raise ConfigError(f'global batch {batch} = {batch // group} groups of {group}; they must '
                      f'split evenly over {process_count} processes')
  for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    _at_least(config, f'train.{field}', 1)
  _at_least(config, 'train.eval_every_epochs', 0)


def check_data_root(config) -> None:
  """The data root must exist unless the synthetic generator will create it."""
  from data_pipeline import datasets  # pylint: disable=g-import-not-at-top
  from grl_jax import io  # pylint: disable=g-import-not-at-top
  d = config.data
  if str(d.get('packed', '')):
    io.check_remote(str(d.packed), 'config.data.packed')   # gs://: bucket and credentials
    check_packed(config)
    return
  if d.synthetic.enabled:
    return
  root = str(d.root)
  help_text = datasets.root_help(d.dataset)
  if not root:
    raise ConfigError(f'config.data.root is empty; expected the {d.dataset} directory. '
                      f'{help_text}')
  # gs://: a missing bucket or absent credentials is named here, before anything is compiled
  # (one request per bucket); the dataset reader checks the layout below the root.
  io.check_remote(root, 'config.data.root')
  if not io.exists(root):
    raise ConfigError(
        f'config.data.root={root!r} does not exist (dataset {d.dataset!r}). Expected '
        f'{help_text}. Put the data there or pass --config.data.root=/path '
        '(or set GRL_JAX_DATA to the folder holding it). For a dataset-free try, run '
        '--config=configs/demo.py.')


def check_packed(config) -> None:
  """config.data.packed must be a complete pack of config.data.dataset / split_id / protocol in
  the current pack format (one line naming the path and what was expected)."""
  from data_pipeline import pack  # pylint: disable=g-import-not-at-top
  from grl_jax.errors import DatasetError  # pylint: disable=g-import-not-at-top
  d = config.data
  try:
    meta = pack.check(str(d.packed), dataset=d.dataset, split_id=int(d.split_id))
  except DatasetError as e:
    raise ConfigError(f'config.data.packed={str(d.packed)!r}: {e}') from e
  if d.protocol not in meta['gallery_rows']:
    raise ConfigError(f'config.data.packed={str(d.packed)!r} holds the protocols '
                      f'{sorted(meta["gallery_rows"])}; expected config.data.protocol='
                      f'{d.protocol!r} among them')
