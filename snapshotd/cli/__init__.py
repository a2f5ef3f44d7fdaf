"""The command line: parser.py is the grammar, app.py the entry point (and the one place
where errors become exit codes); one module per family of verbs (policies, snapshots,
metadata, daemon) takes the parsed arguments to the actions and shows what they did,
with common.py for what they share and output.py, reports.py, progress.py for showing.
"""

from snapshotd.cli.app import main

__all__ = ["main"]
