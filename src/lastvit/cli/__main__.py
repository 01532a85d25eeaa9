"""``python -m lastvit.cli ...`` is the ``lastvit`` command."""

from lastvit.cli import main

raise SystemExit(main())
