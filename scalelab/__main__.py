"""`python -m scalelab`: the same as the `scalelab` console script."""

import sys

from scalelab.cli import main

sys.exit(main())
