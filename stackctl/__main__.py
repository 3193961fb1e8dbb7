"""python -m stackctl: the operator commands (stackctl/cli.py lists them)."""

import sys

from .cli import main

sys.exit(main())
