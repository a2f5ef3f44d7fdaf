"""The filesystem half of the path checks, done right before libvirt writes files.

The planner has already checked every path as a string.  Here the real
filesystem is consulted: directories are created when missing, every new file's
directory must resolve (symlinks followed) inside the root it was planned in,
and no new file may exist already, unless the user asked to reuse external
files.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from pathlib import Path

from snapshotd.core.model import CreateFlag, SnapshotSpec
from snapshotd.core.naming import is_inside
from snapshotd.errors import RequestError


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
        path = _backing_file(path)
    return chain


def absolute(path: str) -> str:
    """An absolute, normalised path; symlinks are not resolved (libvirt names files so)."""
    return os.path.normpath(Path(path).absolute())


def _backing_file(path: str) -> str | None:
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
