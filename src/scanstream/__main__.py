"""``python -m scanstream``: the same as the ``scanstream`` command."""

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports the command line: no traceback
    raise SystemExit(130) from None

raise SystemExit(main())
