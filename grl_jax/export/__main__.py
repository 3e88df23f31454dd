"""`python -m grl_jax.export`: see grl_jax/export/cli.py."""
from __future__ import annotations

import os

if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from grl_jax.export import cli  # pylint: disable=g-import-not-at-top
  cli.main()
