"""Allow ``python -m snapshotd``."""

from snapshotd.edge.cli import main

raise SystemExit(main())
