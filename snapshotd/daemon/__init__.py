"""The daemon, ``snapshotd run``: loop.py (the main loop and its scheduling state),
runs.py (what it schedules and dispatches: runs of keys, and their due times),
events.py (what wakes it), link.py (one libvirt connection per URI), jobs.py (a run on
a worker thread, with its run log, metrics and journal lines), recovery.py (runs left
unfinished, settled with libvirt), catalogs.py (the catalog factory and pool), and
status.py (the status line and status.json's content)."""
