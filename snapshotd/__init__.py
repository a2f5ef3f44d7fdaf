"""snapshotd: scheduled, policy-driven libvirt domain snapshots.

The folders are the architecture (docs/architecture.md draws it):

* ``snapshotd.core``: pure decisions (models, the state table, planning, snapshot
  XML, schedules, retention).  No libvirt, no clock, no filesystem.
* ``snapshotd.config``: policy files and snapshotd.yaml as text -> typed objects.
* ``snapshotd.adapters``: I/O, one kind each (libvirt, files, hooks, systemd, ...).
* ``snapshotd.catalog``: the durable record, behind one interface.
* ``snapshotd.actions``: what snapshotd does, composed from the above.
* ``snapshotd.daemon``: ``snapshotd run``.  ``snapshotd.cli``: the command line.
"""

__version__ = "0.1.0"
