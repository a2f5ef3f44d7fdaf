"""The filesystem half of the path checks, done right before libvirt writes files.

The planner has already checked every path as a string.  Here the real
filesystem is consulted: directories are created when missing, every new file's
directory must resolve (symlinks followed) inside the root it was planned in,
and no new file may exist already, unless the user asked to reuse external
files.  After libvirt made them, ``narrow_modes`` takes back what libvirt left
more readable than the data they hold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from snapshotd.core.model import CreateFlag, SnapshotSpec
from snapshotd.core.naming import is_inside
from snapshotd.errors import RequestError

log = logging.getLogger("snapshotd")


def check_targets(spec: SnapshotSpec, *, create_dirs: bool) -> list[str]:
    """Check (and with ``create_dirs``, prepare) where the snapshot's files go.

    Returns the directories that were created, so a failed snapshot can remove
    them again.  Raises RequestError naming the file and the problem.
    """
    created: list[str] = []
    reuse = bool(spec.flags & CreateFlag.REUSE_EXT)
    roots = [os.path.realpath(r) for r in spec.allowed_directories]
    for path in spec.new_files:
        parent = str(Path(path).parent)
        if not Path(parent).is_dir():
            if not create_dirs:
                continue  # a dry run: the directory would be created
            if not any(is_inside(parent, r) for r in spec.allowed_directories):
                raise RequestError(f"{path}: its directory is outside {spec.allowed_directories}")
            created.extend(_make_dirs(parent))
        real_parent = os.path.realpath(parent)
        if not any(is_inside(real_parent, r) for r in roots):
            raise RequestError(
                f"{path}: directory {parent} resolves to {real_parent} through a symlink, "
                f"outside {', '.join(spec.allowed_directories)}; refusing to write there"
            )
        if os.path.lexists(path):  # also a dangling symlink
            if not reuse:
                raise RequestError(
                    f"{path} already exists; snapshotd never overwrites a file. Remove it, "
                    "choose another snapshot name, or reuse it explicitly (--reuse-external)"
                )
            if Path(path).is_symlink() or not Path(path).is_file():
                raise RequestError(f"{path} is not a regular file; it cannot be reused")
    return created


def is_local_uri(uri: str) -> bool:
    """Whether a libvirt URI names this machine (no host: qemu:///system, qemu:///embed?),
    so that the files its snapshots name are files here."""
    return not urlsplit(uri).netloc


def narrow_modes(spec: SnapshotSpec) -> list[str]:
    """Make each file the snapshot created no more readable than the data it holds.

    An overlay holds what its domain writes to the disk from now on, so its group and
    others get at most what they have on the base image (nothing for a group other
    than the image's); a memory file, and an overlay whose base cannot be looked at
    (a network disk), are the owner's alone.  libvirt before 11.10 creates the overlay
    of a shut-off domain 0644 whatever the image's mode (CVE-2025-13193).  Modes are
    only ever narrowed, the owner's bits are kept (QEMU writes the overlay), and a
    symlink is never followed.  Returns the files whose mode changed, as "PATH MODE".
    """
    bases = [(d.new_file, d.source) for d in spec.disks if d.new_file]
    if spec.memory_file:
        bases.append((spec.memory_file, None))
    changed: list[str] = []
    for path, base in bases:
        allowed = _allowed_bits(path, base)
        if allowed is None:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # gone, or a symlink: nothing of ours to narrow
        try:
            found = os.fstat(fd)
            mode = stat.S_IMODE(found.st_mode)
            narrowed = (mode & 0o700) | (mode & allowed & 0o077)
            if narrowed != mode and stat.S_ISREG(found.st_mode):
                _narrow(fd, path, mode, narrowed, changed)
        finally:
            os.close(fd)
    return changed


def _narrow(fd: int, path: str, mode: int, narrowed: int, changed: list[str]) -> None:
    try:
        os.fchmod(fd, narrowed)
    except OSError as exc:
        # Not owned by root (QEMU's user, under libvirt's dynamic ownership), and the unit
        # has no CAP_FOWNER: the snapshot stands, and the admin is told what to do.
        want, now = f"{narrowed:04o}", f"{mode:04o}"
        log.warning(
            "%s: cannot narrow its mode to %s (%s); it stays %s, more readable than the "
            "image it copies: chmod %s %s",
            path,
            want,
            exc.strerror,
            now,
            want,
            path,
        )
        return
    changed.append(f"{path} {narrowed:04o}")


def _allowed_bits(path: str, base: str | None) -> int | None:
    """The group and other bits ``path`` may keep: those of ``base`` (none for a group
    other than base's), or none when there is no base to compare with; None when
    ``path`` is not there."""
    try:
        made = Path(path).lstat()
    except OSError:
        return None
    if base is None:
        return 0
    try:
        image = Path(base).stat()
    except OSError:
        return 0
    allowed = stat.S_IMODE(image.st_mode) & 0o077
    if made.st_gid != image.st_gid:
        allowed &= 0o007
    return allowed


def _make_dirs(directory: str) -> list[str]:
    """mkdir -p with mode 0700; returns the directories it made, outermost first."""
    missing: list[str] = []
    current = Path(directory)
    while not current.exists():
        missing.append(str(current))
        current = current.parent
    for path in reversed(missing):
        Path(path).mkdir(mode=0o700)
    return list(reversed(missing))


def remove_dirs(created: list[str]) -> None:
    """Remove directories made by check_targets, innermost first, if still empty."""
    for path in reversed(created):
        try:
            Path(path).rmdir()
        except OSError:
            return


QCOW2_MAGIC = b"QFI\xfb"
MAX_CHAIN = 64


def backing_chain(image: str) -> list[str]:
    """``image`` and its backing files, top first, read from the qcow2 headers.

    Works whether or not a QEMU process has the image open (only the header is
    read).  Stops at a file that is not qcow2 (raw images have no backing file), at
    a missing file, and after MAX_CHAIN links.  Relative backing names are resolved
    against the directory of the image that names them, as QEMU does.
    """
    chain: list[str] = []
    path: str | None = absolute(image)
    while path is not None and len(chain) < MAX_CHAIN and path not in chain:
        chain.append(path)
        path = backing_file(path)
    return chain


def absolute(path: str) -> str:
    """An absolute, normalised path; symlinks are not resolved (libvirt names files so)."""
    return os.path.normpath(Path(path).absolute())


def backing_file(path: str) -> str | None:
    """The backing file a qcow2 image's header names (absolute), or None: not qcow2, no
    backing file, not a local file, or unreadable."""
    try:
        with Path(path).open("rb") as f:
            header = f.read(20)
            if len(header) < 20 or header[:4] != QCOW2_MAGIC:
                return None
            offset, size = struct.unpack(">QI", header[8:20])
            if offset == 0 or size == 0 or size > 4096:
                return None
            f.seek(offset)
            name = f.read(size).decode("utf-8", "replace")
    except OSError:
        return None
    if name.startswith(("json:", "nbd:", "rbd:", "iscsi:", "gluster:")):
        return None  # not a local file
    return absolute(str(Path(path).parent / name))


def remove_files(paths: tuple[str, ...]) -> list[str]:
    """Remove these regular files (never a directory or through a symlink); returns
    the ones that were there and are gone now."""
    removed = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if Path(path).is_symlink() or not Path(path).is_file():
                continue
            Path(path).unlink()
            removed.append(path)
    return removed


def write_private(path: Path, text: str, *, fsync: bool = True) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600: write, fsync, rename.

    ``fsync=False`` for files that are made again anyway (the daemon's status): a
    crash may then leave the old or an empty file, never a mixture.

    The temporary file gets a fresh random name, created exclusively (O_EXCL), so
    nothing planted beside ``path`` is written through or clobbered; it is removed if
    anything fails.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def free_space(path: str) -> tuple[str, int, int]:
    """(the directory measured, free bytes, size) of the file system ``path`` is or
    will be on: statvfs of its deepest existing directory, as root sees it (the
    blocks kept for root count as free: snapshotd and QEMU write as root)."""
    where = Path(absolute(path))
    while not where.is_dir() and where != where.parent:
        where = where.parent
    found = os.statvfs(where)
    return str(where), found.f_bfree * found.f_frsize, found.f_blocks * found.f_frsize
