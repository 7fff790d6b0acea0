"""Walk the subtrees under one branch page in several processes, with the checks of one walk.

Why: a snapshot's walk is pure-Python page parsing (a few microseconds a leaf) and nearly all of an etcd
snapshot is one bucket, ``key``. The subtrees under that bucket's root page are independent: on a machine
with more than one CPU, each worker walks a contiguous group of them and the results are joined in key order.
The caller's ``work`` says what a group yields; this module runs the groups and keeps the walk whole:

* each worker walks from the state of the caller's walk at the split (its bitmap of pages already reached);
  afterwards the pages every worker reached are merged into the caller's walk, and a page reached by two
  workers is corrupt (:meth:`.bbolt.Walk.absorb`), as the one walk would have found it;
* a group's corruption is reported as that group's outcome; the first in key order is raised, after every
  group finished, so the message does not depend on which worker was faster;
* a worker that cannot report (fork refused, killed, out of memory) changes nothing but the time: its group
  is walked again here.

Why ``fork``: a worker needs the caller's open map and bitmap as they are; a fresh interpreter would pay its
start-up (~40 ms) and open the file again. Forking a process that runs other threads is unsafe (a lock held
by another thread stays held in the child), so :func:`run_groups` walks every group itself unless the calling
process has exactly one thread. The worker never returns into the caller's code: it writes its result to a
pipe and leaves with ``os._exit``, whatever happens.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from etcdwarden.snapshot.bbolt import Walk
from etcdwarden.snapshot.errors import SnapshotCorrupt

Starts = list[tuple[int, bytes | None]]  # subtree roots in key order: (page, lowest key allowed)
Work = Callable[[Walk, Starts], Any]  # walks one group; returns what marshal can carry
# a group's outcome: ("ok", result, pages reached | None, pages, branch pages) or ("corrupt", message, None, 0, 0);
# the pages reached (the walk's bitmap) are a worker's, None for a group walked in this process
_Outcome = tuple[str, Any, bytes | None, int, int]


def split(starts: Starts, groups: int) -> list[Starts]:
    """``starts`` in at most ``groups`` contiguous groups of nearly equal length (none empty)."""
    groups = max(1, min(groups, len(starts)))
    size, extra = divmod(len(starts), groups)
    out, at = [], 0
    for i in range(groups):
        n = size + (1 if i < extra else 0)
        out.append(starts[at : at + n])
        at += n
    return out


def can_fork() -> bool:
    """Whether this process may fork a worker now (a POSIX system and no other thread running)."""
    return hasattr(os, "fork") and threading.active_count() == 1


class _Worker:
    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd

    def collect(self) -> _Outcome | None:
        """The worker's report (``None`` if it has none), once it has exited."""
        chunks = []
        try:
            while chunk := os.read(self.fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(self.fd)
            self.fd = -1
            _pid, status = os.waitpid(self.pid, 0)
            self.pid = 0
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            return None
        try:
            report = marshal.loads(b"".join(chunks))  # noqa: S302 - written by our own forked worker
        except (EOFError, ValueError, TypeError):
            return None
        return report if isinstance(report, tuple) and len(report) == 5 else None

    def stop(self) -> None:
        """Kill and reap a worker still running (the caller is leaving early)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0


def _fork(walk: Walk, group: Starts, work: Work) -> _Worker | None:
    """A worker running ``work(walk, group)``, or ``None`` if the system refuses one (no pipe, no process)."""
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:  # the worker: never returns from here
        code = 1
        try:
            os.close(read_fd)
            pages, branches = walk.pages, walk.branch_pages
            try:
                report: _Outcome = ("ok", work(walk, group), walk.visited(), walk.pages - pages,
                                    walk.branch_pages - branches)
            except SnapshotCorrupt as e:
                report = ("corrupt", str(e), None, 0, 0)
            view = memoryview(marshal.dumps(report))
            while view:
                view = view[os.write(write_fd, view) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    return _Worker(pid, read_fd)


def run_groups(walk: Walk, groups: list[Starts], work: Work, where: str) -> list[Any]:
    """``work(walk, group)`` of every group, in order: the first groups in forked workers (when allowed),
    the last one here. Raises the first group's :class:`SnapshotCorrupt` in key order, then a page reached
    by two groups; afterwards ``walk`` counts every group's pages as its own."""
    if len(groups) <= 1 or not can_fork():
        return [work(walk, g) for g in groups]
    since = walk.visited()
    workers: list[_Worker | None] = []
    try:
        for g in groups[:-1]:
            workers.append(_fork(walk, g, work))
        outcomes: list[_Outcome | None] = [None] * len(groups)
        outcomes[-1] = _here(walk, groups[-1], work)
        for i, w in enumerate(workers):
            outcomes[i] = w.collect() if w is not None else None
    finally:
        for w in workers:
            if w is not None:
                w.stop()
    for i, outcome in enumerate(outcomes):
        if outcome is None:  # the worker could not report: its group is walked here
            outcomes[i] = _here(walk, groups[i], work)
    done = [o for o in outcomes if o is not None]
    for kind, message, _visited, _pages, _branches in done:
        if kind == "corrupt":
            raise SnapshotCorrupt(message)
    for _kind, _result, visited, pages, branches in done:
        if visited is not None:  # a worker's: its pages join this walk
            walk.absorb(visited, since, pages, branches, where)
    return [result for _kind, result, *_rest in done]


def _here(walk: Walk, group: Starts, work: Work) -> _Outcome:
    """A group walked in this process (its pages are this walk's already)."""
    try:
        return ("ok", work(walk, group), None, 0, 0)
    except SnapshotCorrupt as e:
        return ("corrupt", str(e), None, 0, 0)
