"""Fault cases 13, 14, 15 and 18 (issue 7): hostile policy files, names and paths that
try to leave their directory, broken snapshot hierarchies on import, and secrets.

Real libvirtd and real QEMU domains throughout; the daemon is the real `snapshotd run`
(the harness of test_daemon.py).  tests/unit/test_faults_input.py holds the parts of
case 14 that need no libvirt (the command line refusing before it connects).
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.integration.cli import REPO, files_under, snapshotd
from tests.integration.domains import DomainFactory, ScratchDomain
from tests.integration.target import connect_line
from tests.integration.test_daemon import Daemon, free_port, metrics_text, policy, write_policy

INVALID = REPO / "tests" / "policies" / "invalid"
QUICKLY = 10.0  # seconds: generous; a hang or an exponential blow-up goes far past it
NAME = "{policy}-{time:%Y%m%dT%H%M%S%fZ}"


def config_file(root: Path, text: str = connect_line()) -> Path:
    config = root / "snapshotd.yaml"
    config.write_text(text)
    config.chmod(0o644)
    return config


def libvirt_state(dom: ScratchDomain) -> dict[str, Any]:
    """Everything libvirt holds about the domain's snapshots, byte for byte."""
    snaps = dom.dom.listAllSnapshots(0)
    return {
        "names": sorted(s.getName() for s in snaps),
        "xml": {s.getName(): s.getXMLDesc(0) for s in snaps},
        "secure": {
            s.getName(): s.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE) for s in snaps
        },
        "current": dom.dom.snapshotCurrent(0).getName() if dom.dom.hasCurrentSnapshot(0) else None,
    }


def catalog_rows(state: Path) -> set[tuple[str, str, int]]:
    db = state / "catalog.sqlite"
    if not db.exists():
        return set()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        rows = conn.execute("SELECT domain_uuid, name, created_at FROM snapshots").fetchall()
    conn.close()
    return {(str(u), str(n), int(c)) for u, n, c in rows}


# --- 13: hostile YAML ------------------------------------------------------------------


def hostile_documents(marker: Path) -> dict[str, tuple[str, str]]:
    """name -> (document, a part of the located message)."""
    corpus = {
        name: (INVALID / f"{name}.yaml").read_text()
        for name in ("alias-bomb", "deeply-nested", "wrong-type-string", "unknown-key-did-you-mean")
    }
    levels = [f"l0: &l0 [{','.join(['lol'] * 10)}]"]
    levels += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 30)]
    return {
        "python-object-apply": (
            f"schedule: !!python/object/apply:os.system ['touch {marker}']\n",
            ":1:11: YAML tags ('!!python/object/apply:os.system') are not allowed",
        ),
        "python-object-new-as-key": (
            f"? !!python/object/new:os.system ['touch {marker}']\n: 1\n",
            ":1:3: YAML tags ('!!python/object/new:os.system') are not allowed",
        ),
        "python-name-in-list": (
            f"schedule:\n  every: 1h\nhooks:\n  before: [!!python/name:os.system ['{marker}']]\n",
            ":4:12: YAML tags ('!!python/name:os.system') are not allowed",
        ),
        "alias-bomb": (corpus["alias-bomb"], ":1:4: YAML anchors (&a) are not allowed"),
        "alias-bomb-10^30": ("\n".join(levels) + "\n", ":1:5: YAML anchors (&l0) are not allowed"),
        "deeply-nested": (corpus["deeply-nested"], ":3:20: the document is nested more than 10"),
        "nested-100000": (
            "schedule: " + "[" * 100_000 + "]" * 100_000 + "\n",
            ":1:20: the document is nested more than 10",
        ),
        "huge-50MB": (
            "schedule:\n  every: 1h\n# " + "x" * (50 << 20) + "\n",
            ": is larger than 256 KiB; not read",
        ),
        "huge-flow-50MB": (
            "schedule: {every: 1h}\nsnapshot: {description: '" + "y" * (50 << 20) + "'}\n",
            ": is larger than 256 KiB; not read",
        ),
        "wrong-type": (
            corpus["wrong-type-string"],
            ":4:16: snapshot.description: expected a string, got the number 2024",
        ),
        "unknown-key": (
            corpus["unknown-key-did-you-mean"],
            ":4:3: schedule.jiter: unknown option 'jiter'; did you mean 'jitter'?",
        ),
    }


HOSTILE = sorted(hostile_documents(Path("/x")))


@pytest.mark.parametrize("case", HOSTILE)
def test_fault_13_hostile_yaml_is_refused_quickly_by_check(tmp_path: Path, case: str) -> None:
    """13. Hostile YAML: `!!python/object/apply`, huge or deeply nested documents, wrong
    types, unknown keys, a billion-laughs alias bomb: rejected quickly with exit 2, no
    code run."""
    marker = tmp_path / "marker"
    text, message = hostile_documents(marker)[case]
    policies = tmp_path / "policies"
    policies.mkdir(mode=0o755)
    target = policies / f"{case}.yaml"
    target.write_text(text)
    target.chmod(0o644)
    config = config_file(tmp_path, "{}\n")
    start = time.monotonic()
    result = snapshotd(
        "check", "--offline", "--policy-dir", str(policies), "--config", str(config), timeout=60
    )
    elapsed = time.monotonic() - start
    assert result.code == 2, result
    assert f"{target}{message}" in result.err  # located: FILE:LINE:COLUMN (or FILE)
    assert "snapshotd check: 1 error" in result.err
    assert elapsed < QUICKLY, f"{case} took {elapsed:.1f} s"
    assert not marker.exists()  # no code ran
    assert "Traceback" not in result.err


def test_fault_13_hostile_files_leave_the_daemon_running_with_the_last_good_set(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """13. Hostile YAML ... rejected quickly with exit 2, no code run.  (A hostile file
    dropped into a running daemon's policy directory leaves the daemon alive and the
    last good set in force.)"""
    dom = domain_factory(state="shutoff")
    marker = daemon.root / "marker"
    write_policy(daemon, "good", policy(dom, every="2s", keep=100))
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: len(dom.dom.listAllSnapshots(0)) >= 1, 20, "a first snapshot")
    before_files = files_under(dom.directory)
    hostile = hostile_documents(marker)
    dropped = ["python-object-apply", "alias-bomb-10^30", "nested-100000", "huge-50MB"]
    for name in dropped:
        path = daemon.policies / f"{name}.yaml"
        path.write_text(hostile[name][0])
        path.chmod(0o644)
    # The reload refuses the hostile files, naming each, and keeps the good policy.
    daemon.wait_for(
        lambda: "reload refused" in daemon.log.read_text(), QUICKLY, "the reload refused"
    )
    log = daemon.log.read_text()
    for name in dropped:  # each named in the log, with where and what
        assert str(daemon.policies / f"{name}.yaml") + hostile[name][1] in log
    assert "the previous policies stay in force" in log
    before = libvirt_state(dom)
    before_rows = catalog_rows(daemon.state)
    daemon.wait_for(
        lambda: len(dom.dom.listAllSnapshots(0)) > len(before["names"]),
        20,
        "snapshots by the last good set after the reload",
    )
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    report = snapshotd(
        "status", "--json", "--config", str(daemon.root / "snapshotd.yaml"),
        "--state-dir", str(daemon.state),
    )  # fmt: skip
    assert report.code == 0, report
    data = json.loads(report.out)
    assert data["daemon"]["running"] is True
    assert data["policies"] == ["good"]
    errors = " ".join(data["load_errors"])
    for name in dropped:
        assert str(daemon.policies / f"{name}.yaml") + hostile[name][1] in errors
    assert not marker.exists()
    # Nothing lost: every snapshot and catalog row from before is still there; no
    # new file in the domain's directory (internal snapshots of a shut-off domain).
    after = libvirt_state(dom)
    assert set(before["names"]) <= set(after["names"])
    assert all(after["xml"][n] == before["xml"][n] for n in before["names"])
    assert before_rows <= catalog_rows(daemon.state)
    assert files_under(dom.directory) == before_files
    assert "Traceback" not in daemon.log.read_text()
    assert daemon.stop() == 0


# --- 14: names and paths ---------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "name-dotdot",
        "name-slash",
        "name-absolute",
        "directory-dotdot",
        "directory-relative",
        "domain-slash",
        "out-newline",
    ],
)
def test_fault_14_cli_names_and_paths_leave_the_domain_untouched(
    domain_factory: DomainFactory, tmp_path: Path, case: str
) -> None:
    """14. Names and paths with `../`, `/`, NUL, newlines, absolute paths, or a symlink
    pointing out of the allowed directory: rejected before any libvirt call or file
    write.  (Against a real domain; tests/unit/test_faults_input.py shows the same
    refusals with a connection URI that fails if used.)"""
    dom = domain_factory(state="running")
    config = config_file(tmp_path)
    where = ["--config", str(config), "--state-dir", str(tmp_path / "state")]
    argv, option = {
        "name-dotdot": (["take", "--domain", dom.name, "--name", "../../escape"], "--name"),
        "name-slash": (["take", "--domain", dom.name, "--name", "sub/escape"], "--name"),
        "name-absolute": (["take", "--domain", dom.name, "--name", "/etc/escape"], "--name"),
        "directory-dotdot": (
            ["take", "--domain", dom.name, "--disk-only", "--directory", f"{dom.directory}/../.."],
            "--directory",
        ),
        "directory-relative": (
            ["take", "--domain", dom.name, "--memory", "external", "--directory", "snaps"],
            "--directory",
        ),
        "domain-slash": (["take", "--domain", f"{dom.name}/../{dom.name}"], "--domain"),
        "out-newline": (
            ["export", "--domain", dom.name, "--out", f"{tmp_path}/out\nforged"],
            "--out",
        ),
    }[case]
    if argv[0] == "export":
        where = []
    before, files = libvirt_state(dom), files_under(dom.directory.parent)
    result = snapshotd(*argv, *where)
    assert result.code == 2, result
    assert f"argument {option}" in result.err
    assert libvirt_state(dom) == before
    assert files_under(dom.directory.parent) == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshotd.yaml"]


@pytest.mark.parametrize("case", ["name-template", "directory-template", "directory-symlink"])
def test_fault_14_policy_names_and_directories_refused_before_libvirt_writes(
    domain_factory: DomainFactory, tmp_path: Path, case: str
) -> None:
    """14. Names and paths with `../`, `/`, NUL, newlines, absolute paths, or a symlink
    pointing out of the allowed directory: rejected before any libvirt call or file
    write.  (Snapshot names from policy templates and directory settings: a domain
    whose name holds a control character, and a directory that a symlink leads out.)"""
    odd = case != "directory-symlink"
    # libvirt allows a tab in a domain name ('/' and newlines it refuses itself).
    dom = domain_factory(state="shutoff", suffix="tab\there" if odd else None)
    root = tmp_path / "snaps"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    name = "{policy}-{domain}-{time:%Y%m%dT%H%M%S%fZ}" if case == "name-template" else NAME
    directory = (
        f"  disk_only: true\n  disks: external\n  directory: {root}/{{domain}}\n"
        if case != "name-template"
        else ""
    )
    if case == "directory-symlink":
        (root / dom.name).symlink_to(elsewhere)
    (tmp_path / "policies").mkdir(mode=0o755)
    pattern = dom.name.replace("\t", "*")  # a control character in a pattern is refused
    write = tmp_path / "policies" / "p.yaml"
    write.write_text(
        f'domains: {{include: ["{pattern}"]}}\nschedule: {{every: 1h}}\n'
        f'snapshot:\n  name: "{name}"\n{directory}'
    )
    write.chmod(0o644)
    config = config_file(tmp_path)
    before, files = libvirt_state(dom), files_under(dom.directory.parent)
    made = files_under(tmp_path)
    result = snapshotd(
        "take", "--policy", "p", "--json", "--config", str(config),
        "--policy-dir", str(tmp_path / "policies"), "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert result.code == 1, result
    (entry,) = json.loads(result.out)
    assert entry["outcome"] == "failed"
    expected = {
        "name-template": "snapshot name " + repr(f"p-{dom.name}-")[:-1],
        "directory-template": f"domain name {dom.name!r} cannot be used as a file name",
        "directory-symlink": f"resolves to {elsewhere} through a symlink",
    }[case]
    assert expected in entry["error"]
    assert libvirt_state(dom) == before == {**before, "names": []}
    assert files_under(dom.directory.parent) == files
    assert list(elsewhere.iterdir()) == []
    # Only the catalog's state directory is new under tmp_path: no snapshot directory.
    assert {f for f in files_under(tmp_path) - made if not f.startswith("state")} == set()


def test_fault_14_export_never_writes_through_a_planted_symlink(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """14. Names and paths with `../`, `/`, NUL, newlines, absolute paths, or a symlink
    pointing out of the allowed directory: rejected before any libvirt call or file
    write.  (--out for export: a symlink planted where an exported file goes.)"""
    dom = domain_factory(state="shutoff")
    dom.dom.snapshotCreateXML("<domainsnapshot><name>a</name></domainsnapshot>", 0)
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (out / "0001-a.xml").symlink_to(victim)
    (out / "index.json").symlink_to(victim)
    result = snapshotd("export", "--domain", dom.name, "--out", str(out))
    assert result.code == 0, result
    assert victim.read_text() == "keep me\n"
    for written in ("0001-a.xml", "index.json"):
        st = (out / written).lstat()
        assert stat.S_ISREG(st.st_mode)  # the link itself was replaced, never followed
        assert stat.S_IMODE(st.st_mode) == 0o600


# --- 15: broken hierarchies on import --------------------------------------------------

OTHER_UUID = "00000000-1111-2222-3333-444444444444"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("self-parent", "the parents form a cycle: a -> a"),
        ("cycle", "the parents form a cycle: a -> b -> a"),
        ("missing-parent", "the parent of 'b', 'ghost', is neither among the snapshots imported"),
        ("wrong-uuid", f"belongs to the domain with UUID {OTHER_UUID}"),
    ],
)
def test_fault_15_broken_hierarchy_imports_leave_libvirt_byte_identical(
    domain_factory: DomainFactory, tmp_path: Path, damage: str, message: str
) -> None:
    """15. Import of snapshot XML with a self-parent, a cycle, a missing parent or the
    wrong uuid: rejected; libvirt's metadata unchanged."""
    dom = domain_factory(state="shutoff")
    for name in ("a", "b"):
        dom.dom.snapshotCreateXML(f"<domainsnapshot><name>{name}</name></domainsnapshot>", 0)
    out = tmp_path / "export"
    result = snapshotd("export", "--domain", dom.name, "--out", str(out))
    assert result.code == 0, result
    for name in ("b", "a"):
        dom.dom.snapshotLookupByName(name, 0).delete(
            libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
        )
    # What libvirt has before: two snapshots, the current one not the newest.
    for name in ("x", "y"):
        dom.dom.snapshotCreateXML(f"<domainsnapshot><name>{name}</name></domainsnapshot>", 0)
    dom.dom.revertToSnapshot(dom.dom.snapshotLookupByName("x", 0), 0)
    a, b = sorted(out.glob("*.xml"))
    text_a, text_b = a.read_text(), b.read_text()
    assert "<parent>" not in text_a
    assert "<name>a</name>" in text_b  # b's parent is a
    culprit = {"self-parent": a, "cycle": a, "missing-parent": b, "wrong-uuid": b}[damage]
    first = "<name>a</name>"
    if damage == "self-parent":
        a.write_text(text_a.replace(first, first + "<parent><name>a</name></parent>", 1))
    elif damage == "cycle":
        a.write_text(text_a.replace(first, first + "<parent><name>b</name></parent>", 1))
    elif damage == "missing-parent":
        b.write_text(text_b.replace("<name>a</name>", "<name>ghost</name>", 1))
    else:
        b.write_text(text_b.replace(dom.uuid, OTHER_UUID))
    before = libvirt_state(dom)
    image = subprocess.run(
        ["qemu-img", "snapshot", "-l", str(dom.image("vda"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = snapshotd("import", "--domain", dom.name, str(out))
    assert result.code == 2, result
    assert str(culprit) in result.err
    assert message in result.err
    assert "nothing was imported" in result.err
    assert libvirt_state(dom) == before  # list, each XML (plain and secure), current
    assert before["current"] == "x"
    after_image = subprocess.run(
        ["qemu-img", "snapshot", "-l", str(dom.image("vda"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert after_image == image


# --- 18: secrets -------------------------------------------------------------------------


def with_vnc_password(conn: Any, dom: ScratchDomain, password: str) -> None:
    """Redefine the scratch domain (same name and UUID) with a VNC password."""
    xml = dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    graphics = f"<graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='{password}'/>"
    dom.dom = conn.defineXML(xml.replace("</devices>", graphics + "</devices>", 1))
    assert password in dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    assert password not in dom.dom.XMLDesc(0)


def readable_by_others(root: Path) -> list[Path]:
    return [
        p
        for p in [root, *root.rglob("*")]
        if p.is_file() and not p.is_symlink() and p.stat().st_mode & stat.S_IROTH
    ]


def test_fault_18_no_secret_leaks_and_secure_xml_is_private(
    domain_factory: DomainFactory, daemon: Daemon, libvirt_conn: Any, tmp_path: Path
) -> None:
    """18. Nothing secret leaks: logs, `status`, metrics and exported files readable by
    others contain no secure XML (a domain with a VNC password is used), and stored
    secure XML is mode 0600."""
    password = "Pw" + secrets.token_hex(3)  # VNC passwords are at most 8 characters
    dom = domain_factory(state="shutoff")
    with_vnc_password(libvirt_conn, dom, password)
    port = free_port()
    config = config_file(daemon.root, connect_line() + f'metrics_address: "127.0.0.1:{port}"\n')
    seen = tmp_path / "hook-env"
    seen.mkdir()
    hook = ["/bin/sh", "-c", f'env > {seen}/"$SNAPSHOTD_SNAPSHOT"']
    write_policy(
        daemon,
        "sec",
        policy(dom, every="2s", keep=100) + f"hooks:\n  after: [{json.dumps(hook)}]\n",
    )
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: len(list(seen.iterdir())) >= 2, 30, "two snapshots and their hooks")
    where = ["--config", str(config), "--state-dir", str(daemon.state)]
    outputs: dict[str, str] = {}
    took = snapshotd("take", "--domain", dom.name, "--name", "by-hand", "--json", *where)
    assert took.code == 0, took
    outputs["take"] = took.out + took.err
    outputs["status"] = snapshotd("status", "--json", *where).out
    outputs["status-text"] = snapshotd("status", *where).out
    outputs["metrics"] = metrics_text(port)
    for args in (["--json"], ["--tree", "--json"], []):
        listed = snapshotd("list", "--domain", dom.name, *args, *where)
        assert listed.code == 0, listed
        outputs[f"list {args}"] = listed.out + listed.err
    plan = snapshotd("plan", "--domain", dom.name, "--json", *where)
    assert plan.code == 0, plan
    outputs["plan"] = plan.out
    plain, secure = tmp_path / "export", tmp_path / "secure"
    for out, extra in ((plain, []), (secure, ["--secure"])):
        done = snapshotd("export", "--domain", dom.name, "--out", str(out), *extra)
        assert done.code == 0, done
        outputs[f"export {extra}"] = done.out + done.err
    assert outputs["status"]
    assert outputs["metrics"]
    pid = daemon.proc.pid if daemon.proc is not None else 0
    outputs["daemon environ"] = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    outputs["daemon cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=60) == 0
    outputs["daemon log"] = daemon.log.read_text()
    assert "created by-hand" not in outputs["daemon log"]  # the CLI took that one
    for name, text in outputs.items():
        assert password not in text, f"the VNC password leaked into {name}"
    hooks = list(seen.iterdir())
    assert len(hooks) >= 2
    for env in hooks:
        assert "SNAPSHOTD_DOMAIN=" in env.read_text()
        assert password not in env.read_text(), f"the hook's environment ({env.name})"
    # Plain export files (and anything readable by others anywhere) hold no secret.
    assert len(list(plain.glob("*.xml"))) >= 3
    for root in (plain, secure, daemon.state, dom.directory):
        for path in readable_by_others(root):
            assert password.encode() not in path.read_bytes(), path
    for path in plain.iterdir():
        assert password.encode() not in path.read_bytes(), path
    # The secure XML is stored (catalog, export --secure), each file 0600.
    state_mode = stat.S_IMODE(daemon.state.stat().st_mode)
    assert state_mode & 0o077 == 0, oct(state_mode)
    catalog = sorted(daemon.state.glob("catalog.sqlite*"))
    assert catalog
    for path in catalog:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    stored = b"".join(p.read_bytes() for p in catalog)
    assert password.encode() in stored  # the catalog does keep the secure XML ...
    secured = list(secure.iterdir())
    assert any(password.encode() in p.read_bytes() for p in secured)  # ... and --secure
    for path in [secure, *secured]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path, oct(mode))
    shutil.rmtree(secure)
