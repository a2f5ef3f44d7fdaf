"""Allow ``python -m snapshotd``."""

from snapshotd.cli import main

raise SystemExit(main())
