"""``python -m soak``: see :mod:`soak.runner`."""

import sys

from .runner import main

sys.exit(main())
