"""The logic the verbs hand to the actions (check --freshness's facts, list's merge of
libvirt and the catalog, which policies select which domains, the prune sweep) and the
shapes the verbs show it in: the same text and JSON as the verbs always printed."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapshotd.actions import freshness, listing, planning, snapshot, sweep, taking
from snapshotd.actions.policyrun import Outcome, RunResult
from snapshotd.actions.prune import PruneReport
from snapshotd.adapters.configfiles import load_settings
from snapshotd.catalog import SnapshotRow, open_catalog
from snapshotd.catalog.memory import MemoryCatalog
from snapshotd.cli import output, reports
from snapshotd.config.settings import Overrides
from snapshotd.core import freshness as verdicts
from snapshotd.core.model import DomainInfo, DomainState, Request, SnapshotRequest
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.policy import Policy
from snapshotd.core.retention import Verdict
from snapshotd.errors import RequestError
from tests.fakes.hypervisor import FakeHypervisor, domain_xml

WEB = DomainInfo("web1", "11111111-0000-0000-0000-000000000001", DomainState.RUNNING)
WEB_OFF = DomainInfo("web2", "11111111-0000-0000-0000-000000000002", DomainState.SHUTOFF)
DB = DomainInfo("db1", "22222222-0000-0000-0000-000000000001", DomainState.RUNNING)
NOW = 1_800_000_000
AT = dt.datetime.fromtimestamp(NOW, dt.UTC)  # 2027-01-15 08:00 UTC

HOURLY = """name: hourly
domains:
  include: ["web*"]
  states: [running]
schedule:
  every: 1h
monitor:
  warn: 2h
  crit: 6h
"""
EVERYTHING = "name: everything\nschedule:\n  every: 1d\n"


def policies(root: Path, *documents: str, folder: str = "policies") -> tuple[Policy, ...]:
    """The policies of a trusted policy directory holding ``documents``."""
    directory = root / folder
    directory.mkdir(mode=0o755)
    for index, text in enumerate(documents):
        path = directory / f"p{index}.yaml"
        path.write_text(text)
        path.chmod(0o644)
    config = root / "snapshotd.yaml"
    config.write_text("connect: [qemu:///system]\n")
    config.chmod(0o644)
    settings = load_settings(Overrides(config=str(config), policy_dir=str(directory)))
    assert settings.errors == ()
    return settings.policies


def row(name: str, created: int, policy: str | None, domain: DomainInfo = WEB) -> SnapshotRow:
    return SnapshotRow(
        uri="qemu:///system",
        domain_uuid=domain.uuid,
        domain_name=domain.name,
        name=name,
        created_at=created,
        policy=policy,
        parent=None,
        xml=f"<domainsnapshot><name>{name}</name><creationTime>{created}</creationTime>"
        "<memory snapshot='no'/></domainsnapshot>",
        files=(),
        libvirt_metadata=False,
    )


# --- check --freshness ----------------------------------------------------------------


def test_freshness_checks_each_monitored_stream_the_policy_takes(tmp_path: Path) -> None:
    everything, hourly = sorted(policies(tmp_path, HOURLY, EVERYTHING), key=lambda p: p.name)
    newest = {("hourly", WEB.uuid): NOW - 600, ("everything", DB.uuid): NOW - 60}
    checks = freshness.checks([hourly, everything], [WEB, WEB_OFF, DB], newest, NOW)
    # web2 is shut off (skipped, not stale), db1 not selected; "everything" monitors nothing.
    assert checks == [verdicts.Check("hourly", "web1", 600, 7200, 21600)]
    future = {("hourly", WEB.uuid): NOW + 30}
    assert freshness.checks([hourly], [WEB], future, NOW)[0].age == 0
    assert freshness.checks([hourly], [WEB], {}, NOW)[0].age is None


def test_the_newest_snapshot_per_stream_comes_from_the_catalog(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert freshness.newest_by_stream(str(state)) == {}
    assert not state.exists(), "reading opens no catalog that is absent"
    with open_catalog(str(state)) as catalog:
        for name, created, policy, domain in (
            ("a", NOW - 300, "hourly", WEB),
            ("b", NOW - 100, "hourly", WEB),
            ("c", NOW - 900, "hourly", WEB),
            ("d", NOW - 50, None, WEB),  # taken by hand: no stream
            ("e", NOW - 700, "hourly", DB),
        ):
            catalog.record_snapshot(row(name, created, policy, domain))
    assert freshness.newest_by_stream(str(state)) == {
        ("hourly", WEB.uuid): NOW - 100,
        ("hourly", DB.uuid): NOW - 700,
    }


def test_freshness_is_unknown_before_libvirt_is_asked(tmp_path: Path) -> None:
    settings = load_settings(Overrides(config=str(tmp_path / "absent.yaml")))
    assert settings.errors
    code, line = freshness.assess(settings, "qemu+unix:///system?socket=/nonexistent", _clock)
    assert code is verdicts.Code.UNKNOWN
    assert line.startswith("SNAPSHOTD UNKNOWN - configuration not valid: ")


def _clock() -> dt.datetime:
    raise AssertionError("the clock is read only once libvirt answered")


# --- list -------------------------------------------------------------------------------


def fake_hypervisor(tmp_path: Path) -> FakeHypervisor:
    """web1 (running) and web2 (shut off), each with one qcow2 disk; libvirt's clock at NOW."""
    hv = FakeHypervisor(clock=lambda: NOW)
    for domain in (WEB, WEB_OFF):
        image = tmp_path / f"{domain.name}.qcow2"
        image.write_bytes(b"")
        hv.define(
            domain_xml(domain.name, [("vda", str(image))], uuid=domain.uuid), state=domain.state
        )
    return hv


def test_list_shows_libvirt_s_snapshots_then_the_catalog_only_ones(tmp_path: Path) -> None:
    hv = fake_hypervisor(tmp_path)
    web = hv.domain("web1")
    snapshot.create(hv, MemoryCatalog(), web, SnapshotRequest(name="root"), policy=None, now=AT)
    state = str(tmp_path / "state")
    assert [s.info.name for s in listing.snapshots(hv, "web1", state).snapshots] == ["root"]
    assert not Path(state).exists(), "list opens no catalog that is absent"
    with open_catalog(state) as catalog:
        catalog.record_snapshot(row("root", NOW, "hourly"))  # libvirt lists it: once only
        catalog.record_snapshot(row("cat", NOW + 60, "backups"))
        catalog.record_snapshot(row("other", NOW, "backups", DB))
    found = listing.snapshots(hv, web.uuid, state)
    assert found.domain == web
    shown = [output.listed_dict(item) for item in found.snapshots]
    assert [list(item) for item in shown] == [
        [*output.snapshot_dict(found.snapshots[0].info), "catalog_only", "group"],
        [*output.snapshot_dict(found.snapshots[1].info), "catalog_only", "policy", "group"],
    ]
    assert [item["group"] for item in shown] == [None, None]  # no group in the catalog
    assert [(s["name"], s["current"], s["catalog_only"], s["parent"]) for s in shown] == [
        ("root", True, False, None),
        ("cat", None, True, None),
    ]
    assert shown[1]["policy"] == "backups"
    text = io.StringIO()
    output.print_listing(found, text)
    lines = text.getvalue().splitlines()
    assert lines[0].split() == ["name", "created", "(UTC)", "state", "memory", "disks", "parent"]
    assert lines[1].split() == [
        "root",
        "*",
        "2027-01-15",
        "08:00:00",
        "running",
        "internal",
        "vda=internal",
        "-",
    ]
    assert lines[1].index("2027") == lines[0].index("created") == 48
    assert lines[2].split() == [
        "cat",
        "(catalog-only)",
        "2027-01-15",
        "08:01:00",
        "-",
        "no",
        "-",
        "-",
    ]


def test_a_domain_without_snapshots_says_so(tmp_path: Path) -> None:
    text = io.StringIO()
    output.print_listing(listing.Listing(WEB, ()), text)
    assert text.getvalue().splitlines()[-1] == "(domain web1 has no snapshots)"


# --- check's domains, plan's selections ----------------------------------------------------


def test_each_domain_with_the_policies_that_select_it(tmp_path: Path) -> None:
    chosen = policies(tmp_path, HOURLY, EVERYTHING)
    selections = planning.selections(chosen, [WEB, WEB_OFF, DB])
    assert [(s.domain.name, sorted(p.name for p in s.policies)) for s in selections] == [
        ("web1", ["everything", "hourly"]),
        ("web2", ["everything", "hourly"]),  # selected whatever its state
        ("db1", ["everything"]),
    ]
    hourly = [p for p in chosen if p.name == "hourly"]
    text = io.StringIO()
    reports.print_selections(planning.selections(hourly, [WEB, DB]), text)
    assert text.getvalue() == "domains:\n  web1: hourly\n"  # db1: no policy, no line
    text = io.StringIO()
    reports.print_selections(selections, text)
    lines = text.getvalue().splitlines()
    assert lines[0] == "domains:"
    assert lines[1].endswith("  (overlap: each policy takes and prunes its own snapshots)")
    assert lines[3] == "  db1: everything"


def test_a_plan_entry_shows_what_the_policy_would_do() -> None:
    at = dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.UTC)
    skipped = planning.PolicyPlan(WEB_OFF, "hourly", at, skip="domain is shutoff")
    assert reports.plan_entry(skipped) == {
        "domain": "web2",
        "state": "shutoff",
        "policy": "hourly",
        "next_due": "2027-01-15T08:00:00+00:00",
        "skip": "domain is shutoff",
    }
    pruning = planning.PolicyPlan(
        WEB, "hourly", at, refused="no", retention="keep 1", would_delete=("a", "b")
    )
    shown = reports.plan_entry(pruning)
    assert (shown["refused"], shown["retention"], shown["would_delete"]) == (
        "no",
        "keep 1",
        ["a", "b"],
    )
    assert "skip" not in shown
    assert "snapshot" not in shown
    text = io.StringIO()
    overview = planning.Overview(at, (planning.Selection(WEB, ()),), (pruning,))
    reports.print_overview(overview, text)
    assert text.getvalue().splitlines() == [
        "plan at 2027-01-15T08:00:00+00:00",
        "  web1 (running): no policy selects it",
        "",
        "== web1 (running) by policy hourly",
        "next due: 2027-01-15T08:00:00+00:00",
        "refused: no",
        "retention (keep 1) would delete: a, b",
        "",
    ]
    assert json.loads(json.dumps(reports.overview_dict(overview)))["domains"] == [
        {"name": "web1", "state": "running", "policies": []}
    ]


# --- take --policy: one PolicyRun per domain; prune's sweep ----------------------------

RETAINED = HOURLY + "retention:\n  keep_last: 1\n"


def test_take_runs_the_policy_for_each_domain_and_shows_each_result(tmp_path: Path) -> None:
    hv = fake_hypervisor(tmp_path)
    catalog = MemoryCatalog()
    (hourly,) = policies(tmp_path, RETAINED)
    domains = planning.selected(hv, hourly, None)
    assert [d.name for d in domains] == ["web1", "web2"]
    first = taking.run_policy(hv, catalog, hourly, domains, AT, clock=lambda: AT)
    assert [reports.take_result(r)["outcome"] for r in first] == ["created", "skipped"]
    later = AT + dt.timedelta(hours=1)
    shown: list[str] = []

    @contextlib.contextmanager
    def progress(domain: DomainInfo) -> Iterator[None]:
        shown.append(domain.name)
        yield

    second = taking.run_policy(
        hv, catalog, hourly, domains, later, clock=lambda: later, retention_progress=progress
    )
    assert shown == ["web1"], "retention runs only where a snapshot was made"
    made = second[0].created
    assert made is not None
    assert made.info.name == "hourly-20270115T090000Z"
    result = reports.take_result(second[0])
    assert result == {
        "domain": "web1",
        "policy": "hourly",
        "outcome": "created",
        "snapshot": output.snapshot_dict(made.info),
        "pruned": ["hourly-20270115T080000Z"],
    }
    assert reports.take_result(second[1]) == {
        "domain": "web2",
        "policy": "hourly",
        "outcome": "skipped",
        "reason": "domain is shutoff; the policy takes only running",
    }
    assert not any(reports.take_failed(r) for r in second)
    text = io.StringIO()
    for r in second:
        reports.print_take_result(reports.take_result(r), text)
    assert text.getvalue().splitlines() == [
        "web1 (policy hourly): created hourly-20270115T090000Z",
        "  pruned: hourly-20270115T080000Z",
        "web2 (policy hourly): skipped: domain is shutoff; the policy takes only running",
    ]
    again = taking.run_policy(hv, catalog, hourly, domains[:1], later, clock=lambda: later)
    assert reports.take_result(again[0])["outcome"] == "failed"  # the name is taken
    assert reports.take_failed(again[0])


def test_a_domain_the_policy_does_not_select_is_refused(tmp_path: Path) -> None:
    hv = fake_hypervisor(tmp_path)
    (hourly,) = policies(tmp_path, HOURLY)
    hv.define(domain_xml("db1", [], uuid=DB.uuid))
    with pytest.raises(RequestError, match="policy 'hourly' does not select domain 'db1'"):
        planning.selected(hv, hourly, "db1")
    assert planning.selected(hv, hourly, "web2") == [hv.domain("web2")]


def test_a_name_the_template_cannot_give_fails_that_domain_alone(tmp_path: Path) -> None:
    """As before PolicyRun: a domain whose name makes no valid snapshot name fails (or,
    in a state the policy does not take, is skipped), and the others are taken."""
    hv = fake_hypervisor(tmp_path)
    named = HOURLY + 'snapshot:\n  name: "{policy}-{domain}-{time:%Y%m%dT%H%M%SZ}"\n'
    (hourly,) = policies(tmp_path, named)
    image = tmp_path / "spaced.qcow2"
    image.write_bytes(b"")
    spaced = hv.define(domain_xml("web 3", [("vda", str(image))]))
    spaced_off = hv.define(domain_xml("web 4", [("vda", str(image))]), state=DomainState.SHUTOFF)
    domains = [spaced, spaced_off, hv.domain("web1")]
    results = taking.run_policy(hv, MemoryCatalog(), hourly, domains, AT, clock=lambda: AT)
    shown = [reports.take_result(r) for r in results]
    assert [r["outcome"] for r in shown] == ["failed", "skipped", "created"]
    assert shown[0]["error"].startswith("snapshot name 'hourly-web 3-20270115T080000Z' is not")
    assert shown[1]["reason"] == "domain is shutoff; the policy takes only running"


def constant(when: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: when


def test_prune_sweeps_each_policy_with_retention_over_the_domains_it_selects(
    tmp_path: Path,
) -> None:
    hv = fake_hypervisor(tmp_path)
    catalog = MemoryCatalog()
    (taker,) = policies(tmp_path, HOURLY, folder="taking")  # "hourly", without retention
    everything, hourly = sorted(policies(tmp_path, RETAINED, EVERYTHING), key=lambda p: p.name)
    for hour in range(3):
        when = AT + dt.timedelta(hours=hour)
        taking.run_policy(hv, catalog, taker, [hv.domain("web1")], when, clock=constant(when))
    seen: list[tuple[str, str]] = []

    def around(uri: str, domain: DomainInfo) -> contextlib.AbstractContextManager[None]:
        seen.append((uri, domain.name))
        return contextlib.nullcontext()

    later = AT + dt.timedelta(hours=3)
    dry = sweep.prune_selected(
        hv, catalog, [everything, hourly], None, later, dry_run=True, around=around
    )
    # "everything" has no retention: not a report of it.
    assert [(r.policy, r.domain, r.to_delete) for r in dry] == [
        ("hourly", "web1", ["hourly-20270115T080000Z", "hourly-20270115T090000Z"]),
        ("hourly", "web2", []),
    ]
    assert seen == [("test:///fake", "web1"), ("test:///fake", "web2")]
    assert len(hv.list_snapshots("web1")) == 3, "a dry run deletes nothing"
    done = sweep.prune_selected(hv, catalog, [hourly], "web1", later, dry_run=False)
    assert [(r.domain, r.deleted) for r in done] == [
        ("web1", ["hourly-20270115T080000Z", "hourly-20270115T090000Z"])
    ]
    assert [r.name for r in hv.list_snapshots("web1")] == ["hourly-20270115T100000Z"]


def test_plan_shows_each_policy_s_snapshot_or_why_not(tmp_path: Path) -> None:
    hv = fake_hypervisor(tmp_path)
    (hourly,) = policies(tmp_path, RETAINED)
    overview = planning.overview(hv, MemoryCatalog(), [hourly], None, AT)
    shown = reports.overview_dict(overview)
    assert shown["domains"] == [
        {"name": "web1", "state": "running", "policies": ["hourly"]},
        {"name": "web2", "state": "shutoff", "policies": ["hourly"]},
    ]
    web, off = shown["plans"]
    assert list(web) == [
        "domain",
        "state",
        "policy",
        "next_due",
        "snapshot",
        "retention",
        "would_delete",
    ]
    assert web["snapshot"]["name"] == "hourly-20270115T080000Z"
    assert web["snapshot"]["row"]["number"] == 7
    assert web["next_due"] == "2027-01-15T09:00:00+00:00"
    assert (web["retention"], web["would_delete"]) == ("keep_last 1", [])
    assert off["skip"] == "domain is shutoff; the policy takes only running"
    assert hv.list_snapshots("web1") == [], "plan changes nothing"
    alone = planning.overview(hv, MemoryCatalog(), [hourly], "web2", AT)
    assert [p.domain.name for p in alone.plans] == ["web2"]
    domain, proposed = planning.adhoc(
        hv,
        "web1",
        SnapshotRequest(
            name="now",
            disk_only=True,
            memory=Request.NO,
            disks=Request.EXTERNAL,
            directory=str(tmp_path / "absent"),
        ),
    )
    assert domain.name == "web1"
    assert proposed.plan.spec.name == "now"
    assert "<disk name='vda' snapshot='external'" in proposed.xml
    assert not (tmp_path / "absent").exists(), "the plan makes no directory"


def test_a_policy_run_is_shown_as_take_always_showed_it(tmp_path: Path) -> None:
    skipped = RunResult("hourly", WEB_OFF, "s", Outcome.SKIPPED, reason="domain is shutoff")
    assert reports.take_result(skipped) == {
        "domain": "web2",
        "policy": "hourly",
        "outcome": "skipped",
        "reason": "domain is shutoff",
    }
    assert not reports.take_failed(skipped)
    failed = RunResult("hourly", WEB, "s", Outcome.FAILED, error=RequestError("refused"))
    assert reports.take_result(failed)["error"] == "refused"
    assert reports.take_failed(failed)
    hv = fake_hypervisor(tmp_path)
    made = snapshot.create(
        hv, MemoryCatalog(), hv.domain("web1"), SnapshotRequest(name="root"), policy=None, now=AT
    )
    pruned = PruneReport("hourly", "web1", deleted=["old"], failed=[("older", "busy")])
    result = RunResult("hourly", WEB, "root", Outcome.CREATED, made, note="quiesce", pruned=pruned)
    assert reports.take_result(result) == {
        "domain": "web1",
        "policy": "hourly",
        "outcome": "created",
        "snapshot": output.snapshot_dict(made.info),
        "note": "quiesce",
        "pruned": ["old"],
        "prune_failed": [{"snapshot": "older", "error": "busy"}],
    }
    assert reports.take_failed(result)
    text = io.StringIO()
    reports.print_take_result(reports.take_result(result), text)
    assert text.getvalue().splitlines() == [
        "web1 (policy hourly): created root",
        "  note: quiesce",
        "  pruned: old",
        "  could not delete older: busy",
    ]


def test_a_prune_report_is_shown_as_prune_always_showed_it() -> None:
    verdicts_ = [Verdict("new", True, ("keep_last",)), Verdict("old", False, ())]
    dry = PruneReport("hourly", "web1", verdicts=verdicts_, dry_run=True, kept=[("x", "in use")])
    assert reports.prune_dict(dry) == {
        "policy": "hourly",
        "domain": "web1",
        "dry_run": True,
        "would_delete": ["old"],
        "failed": [],
        "kept_in_use": [{"snapshot": "x", "reason": "in use"}],
        "left_to": [],
        "kept": [{"snapshot": "new", "reasons": ["keep_last"]}],
    }
    done = PruneReport("hourly", "web1", verdicts=verdicts_, deleted=[], failed=[("old", "e")])
    assert list(reports.prune_dict(done))[3] == "deleted"
    text = io.StringIO()
    reports.print_prune(dry, text)
    reports.print_prune(done, text)
    assert text.getvalue().splitlines() == [
        "web1 (policy hourly): would delete old",
        "  kept x: in use",
        "web1 (policy hourly): deleted nothing",
        "  could not delete old: e",
    ]


def test_a_taken_name_is_the_refusal_even_when_its_snapshot_moved_the_disk(
    tmp_path: Path,
) -> None:
    """As when another process took the snapshot by this name between this one's domain
    read and its plan: the disk now is that snapshot's overlay, which the plan would write."""
    hv = fake_hypervisor(tmp_path)
    catalog = MemoryCatalog()
    request = SnapshotRequest(name="same", disks=Request.EXTERNAL, disk_only=True)
    snapshot.create(hv, catalog, hv.domain("web1"), request, policy=None, now=AT)
    moved = hv.domain("web1")  # vda is now the overlay web1.vda.same.qcow2
    with pytest.raises(RequestError, match="would be written over"):
        plan_snapshot(moved, request)  # the plan alone gives the wrong reason
    with pytest.raises(RequestError, match="already has a snapshot named 'same' in libvirt"):
        snapshot.plan_named(hv, catalog, moved, request)
