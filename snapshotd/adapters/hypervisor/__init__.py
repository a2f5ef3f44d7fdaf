"""The libvirt adapter: the only package in snapshotd that imports libvirt.

Everything above it sees typed values (DomainInfo, XML text, SnapshotRecord) and
snapshotd's own errors; nothing above it sees a libvirt object or a libvirtError.

* connection.py: Hypervisor, one connection to a libvirtd, and SnapshotRecord;
* errors.py: every libvirt.libvirtError becomes NotFoundError (no such domain or
  snapshot) or LibvirtError, which says whether retrying may help; see classify().
"""

from snapshotd.adapters.hypervisor.connection import Hypervisor, SnapshotRecord
from snapshotd.adapters.hypervisor.errors import agent_unavailable, classify
from snapshotd.config.settings import DEFAULT_URI

__all__ = [
    "DEFAULT_URI",
    "Hypervisor",
    "SnapshotRecord",
    "agent_unavailable",
    "classify",
]
