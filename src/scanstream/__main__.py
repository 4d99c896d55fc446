"""``python -m scanstream``: the same as the ``scanstream`` command."""

from .cli import main

raise SystemExit(main())
