"""Every snapshotd command line shown in README.md and docs/ is run here, so the docs
cannot drift from the product.

Lines in code blocks that start with `snapshotd ` are collected.  Synopsis lines (with
placeholders such as NAME or [--json]) are checked against the parser: every option
they name must exist for their verb.  Every other line is run, in document order,
against real libvirt: "web" becomes a scratch domain, the policies are the examples in
config/policies.d narrowed to that domain, paths go to a temporary directory, and a
remote URI becomes a second, embedded QEMU driver.  The install steps in
docs/operations.md are run verbatim by tests/system/test_unit.py instead.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from snapshotd.cli.parser import build_parser
from tests.integration.cli import REPO, snapshotd
from tests.integration.domains import DiskSpec, DomainFactory, ScratchDomain
from tests.integration.target import connect_line

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_|.]*[A-Z]\b|\[|\.\.\.|\|")
TESTED_ELSEWHERE = "<!-- tested: install-steps -->"  # the next block: tests/system
# What each verb exits with in these runs when it works: status finds no daemon (3).
EXPECTED = {"status": 3}
EXIT_REFUSED = 2


@dataclass(frozen=True)
class Line:
    doc: Path
    number: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.name}:{self.number}"


def command_lines(doc: Path) -> list[Line]:
    found = []
    in_block = skip_next = skipping = False
    for number, raw in enumerate(doc.read_text().splitlines(), 1):
        if raw.strip() == TESTED_ELSEWHERE:
            skip_next = True
        if raw.lstrip().startswith("```"):
            in_block = not in_block
            skipping = in_block and skip_next
            skip_next = skip_next and not in_block
            continue
        text = raw.strip().removeprefix("$ ")
        if in_block and not skipping and text.startswith("snapshotd "):
            text = re.split(r"\s{2,}#|\s+&&\s+", text)[0].strip()
            found.append(Line(doc, number, text))
    return found


ALL = [line for doc in DOCS for line in command_lines(doc)]


def is_synopsis(line: Line) -> bool:
    return bool(PLACEHOLDER.search(line.text.removeprefix("snapshotd ")))


def verb_options() -> dict[str, set[str]]:
    parser = build_parser()
    result: dict[str, set[str]] = {}
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            for name, sub in choices.items():
                result[name] = {o for a in sub._actions for o in a.option_strings}
    return result


def test_the_docs_show_commands() -> None:
    assert len(ALL) >= 40
    assert {line.doc.name for line in ALL} >= {"README.md", "operations.md", "state-table.md"}


@pytest.mark.parametrize("line", [x for x in ALL if is_synopsis(x)], ids=lambda x: x.where)
def test_each_synopsis_names_only_real_options(line: Line) -> None:
    options = verb_options()
    words = line.text.split()
    verb = words[1]
    assert verb in options, f"{line.where}: no verb {verb!r}"
    for option in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", line.text):
        assert option in options[verb], f"{line.where}: {verb} has no option {option}"


# --- running them ---------------------------------------------------------------------------


@dataclass
class Env:
    root: Path
    web: ScratchDomain
    embed: Path

    def paths(self) -> list[str]:
        return [
            "--config",
            str(self.root / "snapshotd.yaml"),
            "--policy-dir",
            str(self.root / "policies"),
            "--state-dir",
            str(self.root / "state"),
        ]


def _machines(conn: Any) -> set[str]:
    caps = etree.fromstring(conn.getCapabilities().encode())
    return {str(m.text) for m in caps.iterfind("guest/arch[@name='x86_64']/machine")}


def common_machine(web: ScratchDomain) -> None:
    """The docs replicate ``web`` to an embedded QEMU driver on this machine: when the
    tested host is another libvirt whose QEMU names a machine type this machine's QEMU
    lacks (pc-i440fx-10.0 on QEMU 10), ``web`` gets the newest i440fx type both have."""
    xml = web.dom.XMLDesc(2)  # VIR_DOMAIN_XML_INACTIVE
    machine = re.search(r"machine='([^']*)'", xml)
    here = libvirt.open("qemu:///system")
    try:
        local = _machines(here)
    finally:
        here.close()
    if machine is None or machine.group(1) in local:
        return
    both = sorted(
        (m for m in local & _machines(web.dom.connect()) if re.fullmatch(r"pc-i440fx-\d+\.\d+", m)),
        key=lambda m: tuple(int(x) for x in m.rsplit("-", 1)[1].split(".")),
    )
    assert both, "no i440fx machine type common to both hosts' QEMU"
    web.dom.destroy()
    web.dom.connect().defineXML(xml.replace(machine.group(0), f" machine='{both[-1]}'"))
    web.dom.create()


def make_env(domain_factory: DomainFactory, root: Path, disks: list[DiskSpec]) -> Env:
    web = domain_factory(disks, state="running")
    common_machine(web)
    (root / "policies").mkdir(mode=0o755)
    (root / "snapshotd.yaml").write_text(connect_line())
    (root / "snapshotd.yaml").chmod(0o644)
    for example in sorted((REPO / "config" / "policies.d").glob("*.yaml")):
        text = example.read_text()
        text = re.sub(r"(?m)^(\s*)include: .*$", rf'\1include: ["{web.name}"]', text)
        text = text.replace("/var/lib/libvirt/snapshots", str(root / "snaps"))
        (root / "policies" / example.name).write_text(text)
        (root / "policies" / example.name).chmod(0o644)
    embed = Path(tempfile.mkdtemp(prefix="e", dir=domain_factory.root.parent))
    (embed / "etc").mkdir()
    (embed / "etc" / "qemu.conf").write_text('user = "root"\ngroup = "root"\n')
    return Env(root, web, embed)


@pytest.fixture
def env(domain_factory: DomainFactory, tmp_path: Path) -> Iterator[Env]:
    made = make_env(domain_factory, tmp_path, [DiskSpec("vda"), DiskSpec("vdb")])
    try:
        yield made
    finally:
        shutil.rmtree(made.embed, ignore_errors=True)


def prepare(env: Env, line: Line) -> list[str]:
    """The documented command as it runs here: the scratch domain, temporary paths."""
    text = line.text
    text = re.sub(r"--domain web\b", f"--domain {env.web.name}", text)
    text = text.replace("/var/lib/snapshots", str(env.root / "snaps"))
    text = text.replace("/root/web-snapshots", str(env.root / "export"))
    text = text.replace("qemu+ssh://root@b/system", f"qemu:///embed?root={env.embed}")
    words = shlex.split(text)[1:]
    options = verb_options()[words[0]]
    if "--config" in options:
        words += env.paths()
    return words


def define_in_embed(env: Env) -> None:
    script = (
        "import sys, threading, libvirt\n"
        "libvirt.virEventRegisterDefaultImpl()\n"
        "threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() "
        "for _ in iter(int, 1)], daemon=True).start()\n"
        "libvirt.open(sys.argv[1]).defineXML(sys.argv[2])\n"
    )
    xml = env.web.dom.XMLDesc(2)  # VIR_DOMAIN_XML_INACTIVE
    subprocess.run(
        [sys.executable, "-c", script, f"qemu:///embed?root={env.embed}", xml],
        check=True,
        timeout=60,
    )


def run_all(env: Env, lines: list[Line]) -> None:
    for line in lines:
        words = prepare(env, line)
        if words[:2] == ["take", "--policy"]:
            time.sleep(1.05)  # policy snapshot names have one-second resolution
        result = snapshotd(*words)
        expected = EXPECTED.get(words[0], 0)
        assert result.code == expected, (
            f"{line.where}: {line.text}\n(ran: snapshotd {shlex.join(words)})\n"
            f"exit {result.code}, expected {expected}\n{result.out}\n{result.err}"
        )


def runnable(doc: str) -> list[Line]:
    return [x for x in ALL if x.doc.name == doc and not is_synopsis(x)]


def test_readme_and_architecture_commands_run(env: Env) -> None:
    lines = runnable("README.md") + runnable("architecture.md") + runnable("getting-started.md")
    assert len(lines) >= 8
    run_all(env, lines)


def test_operations_commands_run(env: Env) -> None:
    # What the page's examples act on: a snapshot by the name it reverts to.
    made = snapshotd(
        "take", "--domain", env.web.name, "--name", "nightly-20261125T030000Z", *env.paths()
    )
    assert made.code == 0, made.err
    define_in_embed(env)
    lines = runnable("operations.md")
    assert len(lines) >= 7
    run_all(env, lines)


def test_state_table_examples_run(domain_factory: DomainFactory, tmp_path: Path) -> None:
    (tmp_path / "on").mkdir()
    running = make_env(domain_factory, tmp_path / "on", [DiskSpec("vda")])
    shut = domain_factory([DiskSpec("vda")], state="shutoff")
    try:
        lines = runnable("state-table.md")
        assert len(lines) == 25
        doc = (REPO / "docs" / "state-table.md").read_text().splitlines()
        for line in lines:
            before = doc[: line.number]
            heading = next(t for t in reversed(before) if t.startswith("#### Row "))
            context = next(t for t in reversed(before) if t.startswith("Domain `web`"))
            after = "\n".join(doc[line.number : line.number + 6])
            domain = running.web if "running" in context else shut
            words = shlex.split(line.text.replace("--domain web", f"--domain {domain.name}"))[1:]
            result = snapshotd(*words)
            refused = "refused before libvirt is called" in after
            expected = EXIT_REFUSED if refused else 0
            assert result.code == expected, (line.where, heading, result.err)
    finally:
        shutil.rmtree(running.embed, ignore_errors=True)
