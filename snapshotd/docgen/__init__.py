"""Documents made from the code, so they cannot drift from it.

* ``examples``   the worked example of every state-table row in docs/state-table.md
                 (made by the planner);
* ``policies``   the option reference of docs/policies.md (from the config schemas);
* ``manpages``   snapshotd(8) from the command line's parser, snapshotd.policy(5) from
                 the schemas;
* ``completion`` bash completion from the parser.

docgen reads only ``snapshotd.config`` and ``snapshotd.core``: what needs the command
line's grammar takes its ``argparse`` parser as an argument.  ``scripts/gen-docs.py``
writes the files; a unit test checks the committed files equal what this package
makes now.
"""
