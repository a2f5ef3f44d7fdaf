"""Stand-ins for what snapshotd talks to, for unit tests that run in milliseconds:
hypervisor.FakeHypervisor behind snapshotd.actions.ports.HypervisorAPI (the catalog's
stand-in is snapshotd.catalog.memory.MemoryCatalog)."""
