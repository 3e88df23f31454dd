"""`python -m grl_jax.convert`: see grl_jax/convert/cli.py."""
from __future__ import annotations

from grl_jax.convert import cli

if __name__ == '__main__':
  cli.main()
