"""Which libvirt URI a verb uses: --connect, the config file's, $LIBVIRT_DEFAULT_URI
(as virsh takes it), qemu:///system, in that order."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from snapshotd.cli import common
from snapshotd.cli.parser import build_parser


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_order_connect_config_environment_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "snapshotd.yaml"
    config.write_text('connect: ["qemu+ssh://a/system"]\n')
    config.chmod(0o644)
    absent = str(tmp_path / "none.yaml")
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    given = ["--policy-dir", str(tmp_path), "--state-dir", str(tmp_path)]
    take = ["take", "--domain", "web", *given]
    assert common.uri(args(*take, "-c", "test:///x", "--config", str(config))) == "test:///x"
    assert common.uri(args(*take, "--config", str(config))) == "qemu+ssh://a/system"
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+tls://b/system")
    assert common.uri(args(*take, "--config", str(config))) == "qemu+ssh://a/system"
    # A verb without --connect and without a config file: $LIBVIRT_DEFAULT_URI.
    assert common.uri(args("export", "--domain", "web", "--config", absent)) == (
        "qemu+tls://b/system"
    )
    assert common.uri(args("export", "--domain", "web", "--config", str(config))) == (
        "qemu+ssh://a/system"
    )
    settings = common.read_settings(args(*take, "--config", absent), policies=False)
    assert common.uri(args(*take), settings) == "qemu+tls://b/system"
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI")
    assert common.uri(args("export", "--domain", "web", "--config", absent)) == "qemu:///system"
