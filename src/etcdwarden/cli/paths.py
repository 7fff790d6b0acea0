"""Path arguments are checked before a command runs: each is the kind of file system object it must be.

A file argument that exists must be a regular file (or, where the command reads a directory, a
directory): a FIFO would block the command that opens it for reading, and a device or socket holds no
input. A directory argument (created if missing) must not be a file, nor lie below one. A symlink
loop, a symlink to nothing and a name too long for the file system are named as such. All of these
are bad input (exit 2), reported before anything is read or created.

Arguments are found by their option string (``--spec``) or positional name, in the parser of the command
being run, so every command gets the same checks.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from etcdwarden.errors import UsageError

FILE, FILE_OR_DIR, DIR = "file", "file-or-dir", "dir"

#: option -> what its value must be
PATH_OPTIONS: dict[str, str] = {
    # global options
    "--cacert": FILE, "--cert": FILE, "--key": FILE, "--from-manifest": FILE,
    # files read (or rewritten in place)
    "--identity": FILE, "--encryption-config": FILE, "--repository-config": FILE, "--etcdutl": FILE,
    "--etcd": FILE, "--spec": FILE, "--state": FILE, "--state-file": FILE, "--apiserver-config": FILE,
    "--apiserver-cacert": FILE, "--apiserver-token-file": FILE, "--output": FILE,
    # a file, or a directory read as a whole
    "--config": FILE_OR_DIR, "--backup": FILE_OR_DIR,
    # directories (created if missing) and local repositories
    "--resources-dir": DIR, "--backups": DIR, "--data-dir": DIR, "--workdir": DIR,
}

#: positional argument (its destination) -> what it must be
PATH_POSITIONALS: dict[str, str] = {
    "file": FILE, "a": FILE, "b": FILE,
    "path": FILE_OR_DIR, "files": FILE_OR_DIR, "backup": FILE_OR_DIR,
    "directory": DIR, "repo": DIR, "src": DIR, "dst": DIR,
}

_KIND = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def local_directory(text: str) -> Path | None:
    """The local path of a directory argument (a plain path or ``file://`` URL); ``None`` for object stores."""
    from urllib.parse import unquote, urlsplit

    from etcdwarden.repository.location import scheme_of

    if scheme_of(text) != "file":
        return None
    if text.lower().startswith("file://"):
        return Path(unquote(urlsplit(text).path))
    return Path(text).expanduser()


def _stat_problem(label: str, text: str, path: Path, e: OSError) -> UsageError | None:
    """The bad-input reading of a failed ``stat`` (``None``: missing, or for the command to report)."""
    if e.errno == errno.ENAMETOOLONG:
        return UsageError(f"{label} {text}: the name is too long for the file system")
    if e.errno == errno.ELOOP:
        return UsageError(f"{label} {text}: too many levels of symbolic links (a symlink loop?)")
    if e.errno == errno.ENOENT and path.is_symlink():
        return UsageError(f"{label} {text}: a symlink to {os.readlink(path)}, which does not exist")
    if e.errno == errno.ENOTDIR:
        parent = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        return UsageError(f"{label} {text}: {parent} is not a directory")
    return None


def check_file_arg(text: str, label: str, allow_dir: bool = False) -> None:
    """An existing path must be a regular file (or a directory, with ``allow_dir``); a missing one is the
    command's to report (it may be created). URLs of object stores are left alone."""
    path = local_directory(text)
    if path is None:
        return
    try:
        st = os.stat(path)
    except OSError as e:
        problem = _stat_problem(label, text, path, e)
        if problem is not None:
            raise problem from None
        return
    if stat.S_ISREG(st.st_mode) or (allow_dir and stat.S_ISDIR(st.st_mode)):
        return
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{label} {text}: is a directory; name a file")
    kind = _KIND.get(stat.S_IFMT(st.st_mode), "not a regular file")
    raise UsageError(f"{label} {text}: is {kind}, not a regular file; name a regular file")


def check_directory_arg(text: str, label: str) -> None:
    """A directory that will be used or created must not be a file, nor lie below one (exit 2).

    Checked before anything is created, so a mistyped path leaves nothing behind.
    """
    path = local_directory(text)
    if path is None:
        return
    for candidate in (path, *path.parents):
        try:
            st = os.stat(candidate)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR) and not candidate.is_symlink():
                continue  # missing (created later) or below a file (the file is found further up)
            problem = _stat_problem(label, text, candidate, e)
            if problem is not None:
                raise problem from None
            return  # unreadable: the command reports that itself with the right exit code
        if stat.S_ISDIR(st.st_mode):
            return
        what = "a file" if stat.S_ISREG(st.st_mode) else f"{_KIND.get(stat.S_IFMT(st.st_mode), 'not a directory')}"
        if candidate == path:
            raise UsageError(f"{label} {text}: {candidate} is {what}; name a directory (it is created if missing)")
        raise UsageError(f"{label} {text}: {candidate} is {what}, so nothing can be created below it; "
                         "name a directory (it is created if missing)")


def _values(value: object) -> Iterator[str]:
    if isinstance(value, (str, Path)):
        if str(value):
            yield str(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _values(v)


def _chosen_actions(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Iterator[argparse.Action]:
    """The actions of ``parser`` and of the subcommands chosen in ``args``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                yield from _chosen_actions(chosen, args)
        else:
            yield action


def path_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """``(kind, label, path)`` of every path argument given, found by option string or positional name.

    A positional shares the namespace with the global options: ``snapshot get FILE KEY`` stores its KEY
    where ``--key`` would go, so an option whose destination a positional of the command uses is skipped.
    """
    actions = list(_chosen_actions(parser, args))
    positional = {a.dest for a in actions if not a.option_strings}
    found: dict[str, tuple[str, str]] = {}
    for a in actions:
        if a.option_strings:
            if a.dest in positional:
                continue
            kind = next((PATH_OPTIONS[o] for o in a.option_strings if o in PATH_OPTIONS), None)
            label = next((o for o in a.option_strings if o.startswith("--")), a.option_strings[0])
        else:
            kind = PATH_POSITIONALS.get(a.dest)
            label = a.metavar if isinstance(a.metavar, str) else a.dest.upper()
        if kind is not None and a.dest not in found:
            found[a.dest] = (kind, label)
    return [(kind, label, text) for dest, (kind, label) in found.items() for text in _values(getattr(args, dest, None))]


def check_path_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check every path argument of the parsed command line (see the module docstring)."""
    for kind, label, text in path_arguments(parser, args):
        if kind == DIR:
            check_directory_arg(text, label)
        else:
            check_file_arg(text, label, allow_dir=kind == FILE_OR_DIR)


#: errors of a path as given (exit 2); any other OSError is the environment's (exit 1)
_BAD_PATH = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL, errno.ENXIO,
             errno.ENODEV}


def _which(files: list[tuple[str, str]]) -> str:
    if not files:
        return ""
    if len(files) == 1:
        return f": {files[0][0]} {files[0][1]}"
    return "; check the files given (" + ", ".join(f"{label} {path}" for label, path in files) + ")"


def unforeseen(e: BaseException, files: list[tuple[str, str]]) -> tuple[str, int]:
    """One line and an exit code for an error a command did not turn into its own message."""
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        what = e.strerror or str(e)
        if e.errno in _BAD_PATH:
            return f"{where}{what}; check the path given", 2
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"{where}{what}; check its owner, mode and mount (or run as a user who may use it)", 1
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{where}{what}; free space or choose another place", 1
        return f"{where}{what}", 1
    if isinstance(e, UnicodeDecodeError):
        byte = e.object[e.start:e.start + 1].hex() if isinstance(e.object, bytes) else "?"
        return f"an input is not UTF-8 text (byte 0x{byte} at offset {e.start}){_which(files)}", 2
    if isinstance(e, RecursionError):
        return f"an input is nested too deeply to be read{_which(files)}", 2
    return f"{type(e).__name__}: {e}", 1
