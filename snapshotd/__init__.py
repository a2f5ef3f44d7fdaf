"""snapshotd: scheduled, policy-driven libvirt domain snapshots.

The package is split in two:

* ``snapshotd.core``: pure code (models, the state table, planning, snapshot
  XML, naming).  It never imports libvirt, never reads the clock and never
  touches the filesystem.
* ``snapshotd.edge``: the I/O edges (the libvirt connection, file checks, the
  command line).  Each edge module owns exactly one kind of I/O.
"""

__version__ = "0.1.0"
