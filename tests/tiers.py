"""Test tiers: every test is exactly one of ``unit``, ``backend``, ``etcd`` (pytest markers).

* ``unit``: runs inside the test process and starts no server process (in-process fakes on loopback
  threads are fine; ``etcd --version`` is not a server).
* ``backend``: starts a server process other than etcd (SeaweedFS, Azurite, OpenSSH's sshd).
* ``etcd``: starts etcd.

A test gets its tier from the fixtures it uses (a fixture that starts servers is decorated with
:func:`starts`, and every test using it, directly or through other fixtures, is at least that tier) or
from a mark (``pytestmark = pytest.mark.unit`` for a module, ``@pytest.mark.etcd`` for one test). A
test with no tier, several, or a mark lower than its fixtures' fails the collection.

The tiers are enforced while the tests run: a ``unit`` test that starts any server process, or a
``backend`` test that starts etcd, fails, whether the process is started from the test process
(every ``subprocess``/``asyncio`` spawn goes through ``subprocess.Popen._execute_child``, checked
before the process exists) or by a child of it (``/proc`` is watched for server processes descending
from the test process while the test runs).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

TIERS = ("unit", "backend", "etcd")  # ordered: a test's tier is the highest any of its parts needs
SERVERS = {"etcd": "etcd", "weed": "backend", "azurite": "backend", "azurite-blob": "backend", "sshd": "backend"}
_NOT_A_SERVER = (["--version"], ["version"])  # a server binary asked only for its version

F = TypeVar("F", bound=Callable[..., Any])


def starts(tier: str) -> Callable[[F], F]:
    """Declare the tier of a fixture that starts servers (put it below ``@pytest.fixture``)."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}")

    def mark(func: F) -> F:
        func.__dict__["etcdwarden_tier"] = tier
        return func

    return mark


def _rank(tier: str | None) -> int:
    return TIERS.index(tier) if tier is not None else -1


def fixture_tier(item: pytest.Item) -> tuple[str | None, str | None]:
    """The highest tier any fixture of ``item`` declares, and that fixture's name."""
    best: tuple[str | None, str | None] = (None, None)
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return best
    for name in item.fixturenames:  # type: ignore[attr-defined]
        for fixturedef in info.name2fixturedefs.get(name, ()):
            tier = getattr(fixturedef.func, "etcdwarden_tier", None)
            if _rank(tier) > _rank(best[0]):
                best = (tier, name)
    return best


def assign(items: Iterable[pytest.Item]) -> None:
    """Give each item its one tier marker; fail the collection for items without one or with a wrong one."""
    problems: list[str] = []
    for item in items:
        test = item.nodeid.split("[", 1)[0]  # one line per test function, whatever its parameters
        marked = sorted({m.name for m in item.iter_markers() if m.name in TIERS}, key=_rank)
        implied, by = fixture_tier(item)
        if len(marked) > 1:
            problems.append(f"{test}: marked {' and '.join(marked)}; a test has one tier")
        elif marked and _rank(marked[0]) < _rank(implied):
            problems.append(f"{test}: marked {marked[0]} but its fixture {by!r} makes it {implied}")
        elif not marked and implied is None:
            problems.append(f"{test}: no tier; mark it (pytest.mark.unit, backend or etcd) or use a "
                            "fixture that declares one (tests/tiers.py)")
        elif not marked:
            item.add_marker(implied)  # type: ignore[arg-type]
    if problems:
        shown = list(dict.fromkeys(problems))
        raise pytest.UsageError("test tiers:\n  " + "\n  ".join(shown))


def tier_of(item: pytest.Item) -> str:
    for m in item.iter_markers():
        if m.name in TIERS:
            return m.name
    raise AssertionError(f"{item.nodeid} has no tier")  # assign() made this impossible


def server_in(argv: Sequence[str]) -> str | None:
    """The server an argv starts (``etcd``, ``weed``, ...): its program, or an executable file named on its
    command line (a launcher's: ``unshare -m sh -c SCRIPT /path/sshd -D``; ``node /path/azurite-blob``).
    A server asked only for its version is not one; a data directory named ``etcd`` is not one either."""
    for i, arg in enumerate(argv):
        name = os.path.basename(arg)
        if name not in SERVERS or (i > 0 and not (os.path.isfile(arg) and os.access(arg, os.X_OK))):
            continue
        if list(argv[i + 1:]) in _NOT_A_SERVER:
            return None
        return name
    return None


def allowed(tier: str, server: str) -> bool:
    return _rank(SERVERS[server]) <= _rank(tier)


class Guard:
    """Fails the running test when it starts a server its tier does not allow (see the module docstring)."""

    interval = 0.2

    def __init__(self) -> None:
        self.tier: str | None = None
        self.nodeid = ""
        self.since = 0  # when the running test began, in clock ticks since boot (as /proc/PID/stat counts)
        self.spawned = False  # whether the running test started a process (only then can it have grandchildren)
        self.violations: dict[str, list[str]] = {}
        self._reported: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._original: Any = None

    # -- the running test --------------------------------------------------------------------------
    def enter(self, item: pytest.Item) -> None:
        with self._lock:
            self.tier, self.nodeid, self.since = tier_of(item), item.nodeid, _ticks_now()
            self.spawned = False

    def leave(self) -> None:
        with self._lock:
            self.violations.pop(self.nodeid, None)
            self._reported.pop(self.nodeid, None)
            self.tier, self.nodeid = None, ""

    def take(self, nodeid: str) -> list[str]:
        """The violations of ``nodeid`` not reported yet (each is reported once, in the phase that saw it)."""
        with self._lock:
            found = self.violations.get(nodeid, [])
            done = self._reported.get(nodeid, 0)
            self._reported[nodeid] = len(found)
            return found[done:]

    def _violation(self, text: str) -> None:
        with self._lock:
            if self.nodeid:
                found = self.violations.setdefault(self.nodeid, [])
                if text not in found:
                    found.append(text)

    # -- direct children: every spawn of the test process ------------------------------------------
    def install(self) -> None:
        if self._original is not None:
            return
        guard = self
        original = subprocess.Popen._execute_child  # type: ignore[attr-defined]
        self._original = original

        def _execute_child(popen: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> Any:
            server = server_in(_words(args))
            tier = guard.tier
            guard.spawned = True  # from now on the watcher looks for grandchildren too
            if server is not None and tier is not None and not allowed(tier, server):
                text = f"a {tier} test started {server} ({' '.join(_words(args))[:300]})"
                guard._violation(text)
                raise RuntimeError(f"test tier violation: {text}; see tests/tiers.py")
            return original(popen, args, *rest, **kw)

        subprocess.Popen._execute_child = _execute_child  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._watch, name="tier-guard", daemon=True)
        self._thread.start()

    def uninstall(self) -> None:
        if self._original is not None:
            subprocess.Popen._execute_child = self._original  # type: ignore[attr-defined]
            self._original = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- grandchildren: server processes below the test process ------------------------------------
    def _watch(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            tier = self.tier
            if tier is None or tier == "etcd" or not self.spawned:
                continue
            for pid, argv in _descendants(me, self.since):
                server = server_in(argv)
                if server is not None and not allowed(tier, server):
                    self._violation(f"a {tier} test ran {server} below it (PID {pid}: {' '.join(argv)[:300]})")


def _words(args: Any) -> list[str]:
    """Popen's ``args`` as words (a string is a command line: ``shell=True``, or a program without arguments)."""
    if isinstance(args, (str, bytes)):
        text = os.fsdecode(args)
        try:
            return shlex.split(text)
        except ValueError:
            return text.split()
    if isinstance(args, os.PathLike):
        return [os.fsdecode(args)]
    return [os.fsdecode(a) for a in args]


_HZ = os.sysconf("SC_CLK_TCK")


def _ticks_now() -> int:
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _HZ) - 1


def _descendants(root: int, since: int) -> list[tuple[int, list[str]]]:
    """The processes below ``root`` started at or after ``since`` (not the servers of earlier tests'
    session fixtures), with their command lines."""
    parent: dict[int, int] = {}
    started: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            fields = stat[stat.rindex(b")") + 2:].split()
            parent[int(entry.name)], started[int(entry.name)] = int(fields[1]), int(fields[19])
        except (OSError, ValueError, IndexError):
            continue
    out: list[tuple[int, list[str]]] = []
    for pid in parent:
        if started[pid] < since:
            continue
        p, seen = parent.get(pid), 0
        while p is not None and p > 1 and seen < 64:
            if p == root:
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    break
                out.append((pid, [a.decode(errors="replace") for a in raw.split(b"\0") if a]))
                break
            p, seen = parent.get(p), seen + 1
    return out
