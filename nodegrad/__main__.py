"""``python -m nodegrad ...``: the same as the ``nodegrad`` command."""

from .cli import main

raise SystemExit(main())
