"""classify(): which libvirt errors are worth retrying.  No libvirtd needed.

Messages are libvirt's own wording; the ones marked "seen" were produced by libvirt 9.0
with QEMU 7.2 on the test host (see tests/integration/test_hypervisor.py).
"""

from __future__ import annotations

import libvirt
import pytest

from snapshotd.adapters.hypervisor import classify

V = libvirt
CASES = [
    # --- transient: another job holds the domain, the guest agent, the connection ---------
    (V.VIR_ERR_OPERATION_TIMEOUT, V.VIR_FROM_QEMU,
     "Timed out during operation: cannot acquire state change lock "
     "(held by monitor=remoteDispatchDomainSnapshotCreateXML)", True),
    (V.VIR_ERR_AGENT_UNRESPONSIVE, V.VIR_FROM_QEMU,
     "Guest agent is not responding: QEMU guest agent is not connected", True),
    (V.VIR_ERR_AGENT_UNSYNCED, V.VIR_FROM_QEMU,
     "guest agent replied with wrong id to guest-sync command", True),
    (V.VIR_ERR_NO_CONNECT, V.VIR_FROM_NONE, "unable to open the connection", True),
    (V.VIR_ERR_INVALID_CONN, V.VIR_FROM_DOMAIN,
     "invalid connection pointer in virConnectListAllDomains", True),  # seen
    (V.VIR_ERR_RPC, V.VIR_FROM_RPC, "cannot send data: Broken pipe", True),
    (V.VIR_ERR_INTERNAL_ERROR, V.VIR_FROM_RPC, "internal error: client socket is closed", True),
    (V.VIR_ERR_SYSTEM_ERROR, V.VIR_FROM_RPC,
     "End of file while reading data: Input/output error", True),
    (V.VIR_ERR_SYSTEM_ERROR, V.VIR_FROM_RPC,
     "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory",
     True),  # seen
    (V.VIR_ERR_SYSTEM_ERROR, V.VIR_FROM_RPC,
     "unable to connect to server at '127.0.0.1:1': Connection refused", True),  # seen
    (V.VIR_ERR_SYSTEM_ERROR, V.VIR_FROM_REMOTE, "Cannot recv data: Connection reset by peer", True),
    # the lock wording counts whatever code carries it
    (V.VIR_ERR_OPERATION_FAILED, V.VIR_FROM_QEMU,
     "operation failed: cannot acquire state change lock", True),
    # --- permanent: the request itself is wrong, or the domain's state rules it out -------
    # no driver takes the URI: a typo, or libvirtd's QEMU driver failed to load
    (V.VIR_ERR_NO_CONNECT, V.VIR_FROM_NONE,
     "no connection driver available for bogus:///nowhere", False),  # seen
    (V.VIR_ERR_OPERATION_INVALID, V.VIR_FROM_DOMAIN,
     "Requested operation is not valid: domain is not running", False),  # seen
    (V.VIR_ERR_XML_ERROR, V.VIR_FROM_XML,
     "XML error: expecting root element of 'domainsnapshot', not 'notasnapshot'", False),  # seen
    (V.VIR_ERR_XML_DETAIL, V.VIR_FROM_DOMAIN_SNAPSHOT,
     "(domain_snapshot):1: Premature end of data in tag name line 1", False),  # seen
    (V.VIR_ERR_CONFIG_UNSUPPORTED, V.VIR_FROM_QEMU,
     "unsupported configuration: internal snapshot for disk vdb unsupported for storage "
     "type raw", False),  # seen
    (V.VIR_ERR_CONFIG_UNSUPPORTED, V.VIR_FROM_QEMU,
     "unsupported configuration: revert to external snapshot not supported yet", False),  # seen
    (V.VIR_ERR_OPERATION_UNSUPPORTED, V.VIR_FROM_QEMU,
     "Operation not supported: deleting external snapshot that has internal snapshot as "
     "parent not supported", False),  # seen
    (V.VIR_ERR_CONFIG_UNSUPPORTED, V.VIR_FROM_QEMU,
     "unsupported configuration: external snapshot file for disk vda already exists and is "
     "not a block device: /var/lib/x/taken.qcow2", False),  # seen
    (V.VIR_ERR_OPERATION_FAILED, V.VIR_FROM_DOMAIN,
     "operation failed: domain moment s1 already exists", False),  # seen
    (V.VIR_ERR_ARGUMENT_UNSUPPORTED, V.VIR_FROM_QEMU,
     "argument unsupported: QEMU guest agent is not configured", False),  # seen
    (V.VIR_ERR_INVALID_ARG, V.VIR_FROM_DOMAIN_SNAPSHOT,
     "Flags 'VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE' and 'VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA'"
     " are mutually exclusive", False),  # seen
    # generic codes from a driver are real failures, not a broken connection
    (V.VIR_ERR_SYSTEM_ERROR, V.VIR_FROM_QEMU,
     "failed to create image file '/nonexistent/x.qcow2': No such file or directory",
     False),  # seen
    (V.VIR_ERR_INTERNAL_ERROR, V.VIR_FROM_QEMU, "internal error: unable to execute QEMU command "
     "'savevm': Error while writing VM state: No space left on device", False),
    (V.VIR_ERR_INTERNAL_ERROR, V.VIR_FROM_QEMU, "internal error: unable to execute QEMU command "
     "'blockdev-add': Image is not in qcow2 format", False),  # seen (REUSE_EXT, bad file)
    (V.VIR_ERR_NO_DOMAIN, V.VIR_FROM_QEMU,
     "Domain not found: no domain with matching name 'nope'", False),  # seen
    (V.VIR_ERR_NO_DOMAIN_SNAPSHOT, V.VIR_FROM_QEMU,
     "Domain snapshot not found: no domain snapshot with matching name 'nosuch'", False),  # seen
]  # fmt: skip


@pytest.mark.parametrize(("code", "domain_code", "message", "transient"), CASES)
def test_classify(code: int, domain_code: int, message: str, transient: bool) -> None:
    assert classify(code, domain_code, message) is transient
