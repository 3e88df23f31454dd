"""`python -m data_pipeline.pack`: see data_pipeline/pack/cli.py."""
from __future__ import annotations

from data_pipeline.pack import cli

if __name__ == '__main__':
  cli.main()
