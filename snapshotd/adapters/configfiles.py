"""Reads the policy files and snapshotd.yaml from disk, and decides whether to trust them.

``load_settings`` is the one entry point for the daemon and the CLI: snapshotd.yaml (or
the built-in defaults), the command line's ``Overrides`` applied, and the policies of
the policy directory, each problem collected as a ``LocatedError``.

snapshotd runs as root and does what these files say, so a file (or the directory
that holds it) that someone else can write would hand them root's snapshots.
The rules, as sshd's StrictModes has them for its keys:

* a file or policy directory must not be writable by its group or by others;
* it must be owned by root (or, when snapshotd does not run as root, by the user
  it runs as);
* a policy file may be a symlink; then its target and the target's directory must
  pass the same checks, so a link cannot lead to a file someone else controls;
* a file is opened without following a further symlink and checked through the
  opened descriptor (``fstat``), so it cannot be swapped between check and read;
  it must be a regular file of at most ``MAX_BYTES`` bytes of UTF-8.

The text is then handed to ``snapshotd.config.load`` (pure), which does the rest.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from snapshotd.config.load import check_set, parse_config, parse_policy
from snapshotd.config.settings import DEFAULT_CONFIG, Overrides, Settings
from snapshotd.config.yamlreader import MAX_BYTES, LocatedError
from snapshotd.core.policy import Policy

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a policy directory holds: the usable policies and every problem found.

    A file with any error contributes no policy; the others still load.
    ``ignored`` names the directory's other entries (editor backups, hidden files,
    ``*.disabled``), for a debug log.
    """

    policies: tuple[Policy, ...]
    errors: tuple[LocatedError, ...]
    ignored: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def _file_error(path: str, message: str) -> LocatedError:
    return LocatedError(path, 0, 0, "", message)


def _trusted_owners() -> str:
    euid = os.geteuid()
    return "root" if euid == 0 else f"root or uid {euid} (the user snapshotd runs as)"


def untrusted(st: os.stat_result, path: str) -> str | None:
    """Why a file or directory with this status cannot be trusted, or None."""
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    writers = [who for who, bit in (("group", 0o020), ("others", 0o002)) if st.st_mode & bit]
    if writers:
        return (
            f"the {kind} is writable by its {' and '.join(writers)} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}), so they could change what snapshotd "
            f"does as root; fix: chmod go-w {path}"
        )
    if st.st_uid not in {0, os.geteuid()}:
        return (
            f"the {kind} is owned by uid {st.st_uid}, not {_trusted_owners()}, so that "
            f"user could change what snapshotd does; fix: chown root:root {path}"
        )
    return None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class _Refused(Exception):
    """Why a file is not read; becomes a LocatedError for the file."""


def read_trusted(path: str) -> str | LocatedError:
    """A trusted file's text, or why it cannot be read or trusted."""
    try:
        data = _read_bytes(path)
    except _Refused as refused:
        return _file_error(path, str(refused))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return LocatedError(path, line, column, "", "the file is not UTF-8 text")


def _read_bytes(path: str) -> bytes:
    try:
        link = Path(path).lstat()
    except FileNotFoundError:
        raise _Refused("no such file") from None
    except OSError as exc:
        raise _Refused(f"cannot be read: {exc.strerror}") from None
    target = path
    said = ""
    if stat.S_ISLNK(link.st_mode):
        target = os.path.realpath(path)
        said = f"is a symlink to {target}, and "
        parent = str(Path(target).parent)
        try:
            problem = untrusted(Path(parent).stat(), parent)
        except OSError as exc:
            raise _Refused(f"{said}{parent} cannot be read: {exc.strerror}") from None
        if problem is not None:
            raise _Refused(f"{said}{problem}")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(target, flags)
    except FileNotFoundError:
        raise _Refused(f"{said}that file does not exist") from None
    except OSError as exc:
        raise _Refused(f"{said}cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"{said}is not a regular file")
        problem = untrusted(st, target)
        if problem is not None:
            raise _Refused(said + problem)
        data = _read_at_most(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise _Refused(f"is larger than {MAX_BYTES // 1024} KiB; not read")
    return data


def is_policy_file(name: str) -> bool:
    """``*.yaml`` and ``*.yml``, but not editor temp, backup or hidden files."""
    if name.startswith((".", "#")) or name.endswith(("~", "#")):
        return False
    return name.endswith(SUFFIXES) and name not in SUFFIXES


def load_policy_dir(directory: str) -> LoadResult:
    """Every policy in ``directory``, read in sorted order, and every problem."""
    try:
        st = Path(directory).stat()
    except FileNotFoundError:
        return LoadResult(
            (),
            (
                _file_error(
                    directory,
                    "the policy directory does not exist; create it (install -d -m 0755 "
                    f"{directory}) or set policy_dir in {DEFAULT_CONFIG}",
                ),
            ),
        )
    except OSError as exc:
        return LoadResult((), (_file_error(directory, f"cannot be read: {exc.strerror}"),))
    if not stat.S_ISDIR(st.st_mode):
        return LoadResult((), (_file_error(directory, "the policy directory is not a directory"),))
    problem = untrusted(st, directory)
    if problem is not None:
        return LoadResult((), (_file_error(directory, problem),))
    try:
        names = sorted(entry.name for entry in Path(directory).iterdir())
    except OSError as exc:
        return LoadResult((), (_file_error(directory, f"cannot be listed: {exc.strerror}"),))

    policies: list[Policy] = []
    errors: list[LocatedError] = []
    ignored: list[str] = []
    parsed: _Parsed = {}
    for name in names:
        if not is_policy_file(name):
            ignored.append(name)
            continue
        path = str(Path(directory) / name)
        text = read_trusted(path)
        if isinstance(text, LocatedError):
            errors.append(text)
            continue
        result = _parse(text, path, parsed)
        if isinstance(result, Policy):
            policies.append(result)
        else:
            errors.extend(result)
    global _last_parsed  # noqa: PLW0603 - the memo of the previous load, replaced whole
    _last_parsed = parsed
    clashes = check_set(policies)
    if clashes:
        clashing = {e.file for e in clashes}
        policies = [p for p in policies if p.source not in clashing]
        errors.extend(clashes)
    return LoadResult(tuple(policies), tuple(errors), tuple(ignored))


# What parse_policy made of each file's text at the last load, keyed by path and a
# digest of the text: a reload after one file changed parses that file alone (a
# hundred YAML files take a quarter of a second).  parse_policy is pure, so the result
# is the same as parsing again.  Each load keeps only the files it saw, so the memo
# never outgrows the directory.  Everything else (trust checks, reading, the checks
# across the set) is done every time.
_Parsed = dict[tuple[str, bytes], Policy | tuple[LocatedError, ...]]
_last_parsed: _Parsed = {}


def _parse(text: str, path: str, parsed: _Parsed) -> Policy | list[LocatedError]:
    key = (path, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    result = _last_parsed.get(key)
    if result is None:
        fresh = parse_policy(text, path)
        result = fresh if isinstance(fresh, Policy) else tuple(fresh)
    parsed[key] = result
    return result if isinstance(result, Policy) else list(result)


def load_config(
    path: str = DEFAULT_CONFIG, *, required: bool = False
) -> Settings | list[LocatedError]:
    """snapshotd.yaml, checked like a policy file.

    A missing file gives the defaults unless ``required`` (a path the user named).
    """
    if not required and not os.path.lexists(path):
        return Settings(config=path)
    parent = str(Path(path).absolute().parent)
    try:
        problem = untrusted(Path(parent).stat(), parent)
    except OSError as exc:
        return [_file_error(path, f"its directory cannot be read: {exc.strerror}")]
    if problem is not None:
        return [_file_error(path, f"is in {parent}, and {problem}")]
    text = read_trusted(path)
    if isinstance(text, LocatedError):
        return [text]
    return parse_config(text, path)


def load_settings(
    overrides: Overrides = Overrides(),  # noqa: B008 - frozen, so one shared default is safe
    *,
    default_config: str = DEFAULT_CONFIG,
    load_policies: bool = True,
) -> Settings:
    """snapshotd.yaml (``overrides.config``, which must exist, or ``default_config``, which
    may not), with the overrides applied, and with ``load_policies`` the policy directory.
    Errors are collected in the result, never raised."""
    path = overrides.config if overrides.config is not None else default_config
    loaded = load_config(path, required=overrides.config is not None)
    errors: list[LocatedError] = []
    if isinstance(loaded, Settings):
        settings = loaded
    else:
        settings = Settings(config=path, config_found=True)
        errors.extend(loaded)
    directory = overrides.policy_dir if overrides.policy_dir is not None else settings.policy_dir
    # A broken snapshotd.yaml may name another directory: do not guess which.
    guessing = errors and overrides.policy_dir is None
    result = load_policy_dir(directory) if load_policies and not guessing else LoadResult((), ())
    errors.extend(result.errors)
    return replace(
        settings,
        policy_dir=directory,
        state_dir=overrides.state_dir if overrides.state_dir is not None else settings.state_dir,
        connect=overrides.connect or settings.connect,
        policies=result.policies,
        errors=tuple(errors),
        ignored=result.ignored,
    )
