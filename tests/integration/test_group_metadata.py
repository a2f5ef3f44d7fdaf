"""Consistency groups through export, import and replicate, against real libvirt.

A group of two real domains taken with `snapshotd take --policy`; each member
exported, its metadata removed from libvirt, and imported into a fresh state
directory: the catalog there has the group again, one member at a time.  Replicate to
a second (embedded) QEMU driver records each member's copy there.
tests/unit/test_group_metadata.py holds the same to every bad index on the fakes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import libvirt
import pytest

from snapshotd.catalog import open_catalog
from tests.integration import target
from tests.integration.cli import Result, make_settings, settings_args, snapshotd
from tests.integration.domains import DomainFactory, ScratchDomain
from tests.integration.test_groups import group_policy, group_rows, members, take
from tests.integration.test_metadata import embed_root, in_embed, tree

__all__ = ["embed_root"]  # the fixture, imported for the replicate test


def ok(result: Result) -> Result:
    assert result.code == 0, f"exit {result.code}\nout: {result.out}\nerr: {result.err}"
    return result


def groups(root: Path) -> list[dict[str, Any]]:
    shown = ok(snapshotd("list", "--group", "shop", "--json", *settings_args(root))).out
    found = json.loads(shown)
    assert isinstance(found, list)
    return found


def take_group(root: Path, doms: list[ScratchDomain]) -> str:
    """The group policy over ``doms`` in ``root``, taken once: its snapshot's name."""
    make_settings(root)
    prefix = doms[0].name[:-1]
    policy = root / "policies" / "shop.yaml"
    policy.write_text(group_policy(prefix, root / "snaps"))
    policy.chmod(0o644)
    code, shown, err = take(root)
    assert code == 0, (shown, err)
    assert {m["domain"] for m in shown["members"]} == {d.name for d in doms}  # type: ignore[attr-defined, index]
    return str(shown["snapshot"])


def remove_metadata(dom: ScratchDomain) -> None:
    for snap in reversed(dom.dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)):
        snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)


def test_importing_each_member_s_export_rebuilds_the_group_in_a_fresh_catalog(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    doms = members(domain_factory, 2, "gm")
    db, web = doms
    here = tmp_path / "here"
    here.mkdir()
    name = take_group(here, doms)
    exports = {}
    for dom in doms:
        out = tmp_path / "export" / dom.name
        ok(snapshotd("export", "--domain", dom.name, "--out", str(out), *settings_args(here)))
        exports[dom.name] = out
    index = json.loads((exports[db.name] / "index.json").read_text())
    (entry,) = index["snapshots"]
    group = entry["group"]
    assert (group["policy"], group["name"], group["partial"]) == ("shop", name, False)
    assert group["other_members"] == [{"domain": web.name, "uuid": web.uuid, "uri": target.URI}]
    (made,) = groups(here)
    trees = {d.name: tree(d.dom) for d in doms}

    # The metadata gone from libvirt, and a state directory with no catalog yet.
    for dom in doms:
        remove_metadata(dom)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    make_settings(fresh)

    # A hostile index is refused, naming the file and the field; nothing is imported.
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in exports[db.name].iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    hostile = dict(index)
    hostile["snapshots"] = [{**entry, "group": {**group, "policy": "../../etc/shadow"}}]
    (bad / "index.json").write_text(json.dumps(hostile))
    refused = snapshotd("import", "--domain", db.name, str(bad), *settings_args(fresh))
    assert refused.code == 2, refused
    assert f"{bad / 'index.json'}: snapshots[0].group.policy: policy name" in refused.err
    assert "nothing was imported" in refused.err
    assert db.dom.listAllSnapshots(0) == []

    # One member's export: the group, with that member, on this connection.
    first = ok(
        snapshotd("import", "--domain", db.name, str(exports[db.name]), *settings_args(fresh))
    )
    assert f"not yet its other members {web.name} ({web.uuid}, {target.URI})" in first.out
    (one,) = groups(fresh)
    assert (one["snapshot"], one["taken_at"], one["partial"]) == (name, made["taken_at"], False)
    assert [(m["domain"], m["uri"]) for m in one["members"]] == [(db.name, target.URI)]
    listed = json.loads(
        ok(snapshotd("list", "--domain", db.name, "--json", *settings_args(fresh))).out
    )
    assert [(i["name"], i["group"]) for i in listed] == [(name, "shop")]

    # The other's: the whole group again, as it was taken.
    second = ok(
        snapshotd("import", "--domain", web.name, str(exports[web.name]), *settings_args(fresh))
    )
    assert "the catalog has all its 2 members" in second.out
    (both,) = groups(fresh)
    assert both["members"] == made["members"]  # domain, UUID, URI, creation time
    assert {d.name: tree(d.dom) for d in doms} == trees
    assert group_rows(fresh / "state") == sorted((name, d.name) for d in doms)
    with open_catalog(str(fresh / "state")) as catalog:
        rows = catalog.snapshots(policy="shop")
    assert sorted(r.domain_name for r in rows) == sorted(d.name for d in doms)
    # Imported again: nothing changes.
    ok(snapshotd("import", "--domain", web.name, str(exports[web.name]), *settings_args(fresh)))
    assert groups(fresh) == [both]


# The embedded driver is this machine's QEMU (as test_metadata.py's replicate test).
@pytest.mark.local_only
def test_replicate_records_each_member_s_copy_on_the_target(
    domain_factory: DomainFactory, tmp_path: Path, embed_root: Path
) -> None:
    doms = [domain_factory(state="shutoff", suffix=f"gr{i}") for i in range(2)]
    db, web = doms
    name = take_group(tmp_path, doms)
    uri = f"qemu:///embed?root={embed_root}"
    for dom in doms:
        definition = dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        in_embed(embed_root, "conn.defineXML(sys.argv[2]); result = True", definition)

    copied = ok(
        snapshotd(
            "replicate", "--domain", db.name, "--to", uri, *settings_args(tmp_path), timeout=120
        )
    )
    assert f"group shop: {name} is also a member on {uri} in the catalog" in copied.out
    (group,) = groups(tmp_path)
    shown = {m["domain"]: (m["uri"], m["also_on"]) for m in group["members"]}
    assert shown == {db.name: (target.URI, [uri]), web.name: (target.URI, [])}

    moved = ok(
        snapshotd(
            "replicate",
            "--domain",
            web.name,
            "--to",
            uri,
            "--remove-source-metadata",
            *settings_args(tmp_path),
            timeout=120,
        )
    )
    assert f"group shop: {name} is a member on {uri} in the catalog" in moved.out
    assert web.dom.listAllSnapshots(0) == []
    (group,) = groups(tmp_path)
    shown = {m["domain"]: (m["uri"], m["also_on"]) for m in group["members"]}
    assert shown == {db.name: (target.URI, [uri]), web.name: (uri, [])}
    there = in_embed(
        embed_root,
        "result = {}\n"
        "for uuid in sys.argv[2:]:\n"
        "    dom = conn.lookupByUUIDString(uuid)\n"
        "    result[dom.name()] = tree(dom)\n"
        "    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)",
        db.uuid,
        web.uuid,
    )
    assert there == {db.name: {name: None}, web.name: {name: None}}
