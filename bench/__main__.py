"""`python -m bench` (what `make bench` runs): the whole benchmark suite; see bench/cli.py."""

import sys

from bench.cli import main

sys.exit(main())
