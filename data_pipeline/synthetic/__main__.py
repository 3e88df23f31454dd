"""`python -m data_pipeline.synthetic`: see data_pipeline/synthetic/cli.py for the flags."""
from __future__ import annotations

import sys

from data_pipeline.synthetic.cli import main

if __name__ == '__main__':
  sys.exit(main())
