"""A toy training run in a child process, slowed where a signal should land (test_signals.py).

    python -m tests.faults.toy_child WORKDIR ROOT MODE

MODE:
  slow_eval   every evaluation batch prints `EVAL-BATCH` and takes 0.2 s more (the first
              evaluation is the one after step 4);
  slow_save   the first file orbax writes through etils.epath into the step-4 save comes
              1.5 s late (a slow disk), so that save is in flight for a while; `SAVING <step>` is printed when the loop asks for a save.
The run is the toy config of `RUN` (12 steps, saves at 4 and 8 (and 12), evaluations at 4,
8 and 12) and prints `RESULT <json>` with train_and_evaluate's result at the end.
"""
from __future__ import annotations

import json
import os
import sys
import time

from tests import helpers as c

RUN = dict(train__log_every_steps=1, train__eval_every_epochs=1)


def main(workdir: str, root: str, mode: str) -> None:
  from etils import epath  # pylint: disable=g-import-not-at-top
  from grl_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from grl_jax.trainer import loop  # pylint: disable=g-import-not-at-top
  config = c.toy_config(root, **RUN)
  data = c.toy_data(config)
  if mode == 'slow_eval':
    inner_eval = data.eval_batches

    def eval_batches(index, test_sampling=None):
      for batch in inner_eval(index, test_sampling):
        print('EVAL-BATCH', flush=True)
        time.sleep(0.2)
        yield batch
    data.eval_batches = eval_batches
  elif mode == 'slow_save':
    path_type = type(epath.Path('/'))
    real_write = path_type.write_text

    delayed = []

    def write_text(self, text, *args, **kwargs):
      if not delayed and f'{os.sep}checkpoints{os.sep}4.orbax-checkpoint-tmp' in str(self):
        delayed.append(str(self))
        time.sleep(1.5)
      return real_write(self, text, *args, **kwargs)
    path_type.write_text = write_text
    real_save = checkpoint.Checkpointer.save

    def save(self, state, **kwargs):
      print(f'SAVING {int(state.step)}', flush=True)
      return real_save(self, state, **kwargs)
    checkpoint.Checkpointer.save = save
  else:
    raise SystemExit(f'unknown mode {mode!r}')
  out = loop.train_and_evaluate(config, workdir, data=data)
  print('RESULT ' + json.dumps({k: out[k] for k in ('step', 'stopped', 'final')}), flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:4])
