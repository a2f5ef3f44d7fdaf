"""Policy files and snapshotd.yaml: YAML text in, typed values (or located errors) out.

Pure: no file is read here (that is ``snapshotd.adapters.configfiles``), no clock,
no subprocess.  The modules, in the order a file goes through them:

* ``settings``   ``Settings`` (the daemon's and the CLI's settings), ``Overrides``
                 (the command line's) and every ``DEFAULT_*``;
* ``schema``     every option described once, as data (``POLICY_SCHEMA``,
                 ``CONFIG_SCHEMA``); validation, defaults and the reference
                 documentation are all made from it;
* ``yamlreader`` step 1, syntax: the strict YAML reader (one document, no anchors,
                 aliases or tags, bounded size and depth) and step 2, keys: every key
                 a string, given once; ``LocatedError``;
* ``reader``     step 3, structure: unknown options (with "did you mean"), wrong
                 types, missing options; and the typed values read from the nodes;
* ``values``     step 4: each option's own rules (cron, time zone, durations, paths);
* ``crossfield`` step 5: options that only make sense together, the snapshot section
                 against the seed's state table for every domain state accepted;
* ``load``       the entry points: ``parse_policy``, ``parse_config``, ``check_set``.
"""
