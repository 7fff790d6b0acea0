"""One receiver per repository: the lease in the receiver's state object (and a ``flock`` on local directories).

Two receivers writing one repository would write overlapping segments (the overlapping deltas Gardener's
users lost data to). The receiver's state object (:mod:`etcdwarden.format.receiver`) is its lease:

* a receiver starts only when the state is absent, says ``stopped``, is older than the lease
  (``heartbeat_at`` more than ``lease_seconds`` ago), or names a process of this host that is gone;
  otherwise :class:`ReceiverRunning` (exit 3) names the holder and when its lease ends;
* it then writes the state with its own random token and, on an object store (where two writes can
  race), reads it back a moment later: a receiver that finds another token there lost the race and
  stops before writing anything;
* every heartbeat reads the state first: a receiver whose token is gone (another one took over after its
  lease expired, e.g. while it was stalled) stops at once (:class:`LeaseLost`) instead of writing on.

On a local directory an exclusive ``flock`` on ``.etcdwarden-receive.lock`` makes the refusal atomic as well.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from etcdwarden import __version__
from etcdwarden.errors import EtcdwardenError, SafetyRefusal
from etcdwarden.format.receiver import (
    STATE_NAME,
    ReceiverState,
    ReceiverStateError,
    StateHolder,
    dump_state,
    load_state,
)
from etcdwarden.fsutil import Holder, Locked, dir_lock, private_dir, process_start
from etcdwarden.repository.base import ObjectNotFound, Repository

LOCK_NAME = ".etcdwarden-receive.lock"
RACE_WAIT = 1.0  # seconds between writing the state and reading it back (object stores)


class ReceiverRunning(SafetyRefusal):
    """Another receiver holds the repository's lease."""

    def __init__(self, message: str) -> None:
        super().__init__(message, force_flag=None)


class LeaseLost(EtcdwardenError):
    """Another receiver took the repository over while this one ran (this one stops writing)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _gone(h: StateHolder) -> bool:
    return h.host == socket.gethostname() and Holder(h.pid, h.start, h.host).gone()


class ReceiverLease:
    """The lease of one receiver on one repository; use ``with ReceiverLease(...) as lease:``."""

    def __init__(self, repo: Repository, cluster_id: str, lease_seconds: float = 30.0) -> None:
        self.repo = repo
        self.cluster_id = cluster_id
        self.lease_seconds = lease_seconds
        self.holder = StateHolder(host=socket.gethostname(), pid=os.getpid(), start=process_start(os.getpid()),
                                  token=secrets.token_hex(8), version=__version__)
        self.state = ReceiverState(cluster_id=cluster_id, holder=self.holder, heartbeat_at=_now())
        self.previous: ReceiverState | None = None  # the state found on acquiring (progress of the last run)
        self._flock: contextlib.ExitStack | None = None
        # one write of the state at a time: a heartbeat's thread goes on after its task is cancelled (at
        # shutdown), and two writes of one name would share its temporary file (the second rename: ENOENT)
        self._lock = threading.RLock()

    # -- acquiring ---------------------------------------------------------------------------------------------
    def _read(self) -> ReceiverState | None:
        try:
            return load_state(self.repo.read_bytes(STATE_NAME))
        except ObjectNotFound:
            return None

    def _refuse_if_held(self, found: ReceiverState | None) -> None:
        if found is None or found.stopped or found.holder.token == self.holder.token:
            return
        age = (_now() - found.heartbeat_at).total_seconds()
        if age > self.lease_seconds or _gone(found.holder):
            return
        h = found.holder
        until = found.heartbeat_at + dt.timedelta(seconds=self.lease_seconds)
        raise ReceiverRunning(
            f"another receiver (pid {h.pid} on {h.host}, etcdwarden {h.version}) is writing into {self.repo.url} "
            f"(its last heartbeat {age:.0f}s ago): two receivers would write overlapping segments; stop it, or wait "
            f"for its lease to end ({until.isoformat(timespec='seconds')} if it is gone)")

    def acquire(self) -> None:
        path = self.repo.local_path(STATE_NAME)
        if path is not None:
            self._flock = contextlib.ExitStack()
            try:
                self._flock.enter_context(dir_lock(private_dir(Path(path).parent), 0.0, LOCK_NAME))
            except Locked:
                self._flock = None
                found = None
                with contextlib.suppress(ReceiverStateError, EtcdwardenError):
                    found = self._read()
                h = found.holder if found is not None else None
                who = f"pid {h.pid} on {h.host}" if h is not None else "another process"
                raise ReceiverRunning(f"another receiver ({who}) is writing into {self.repo.url} (it holds "
                                      f"{LOCK_NAME}): two receivers would write overlapping segments; stop it "
                                      "first") from None
        try:
            try:
                self.previous = self._read()
            except ReceiverStateError:
                self.previous = None  # our own bookkeeping, unreadable: rewritten below
            self._refuse_if_held(self.previous)
            self._write()
            if path is None:  # an object store: two receivers may have written at once; the last write wins
                time.sleep(RACE_WAIT)
                self._check_still_mine(refuse=True)
        except BaseException:
            self.release_lock()
            raise

    def _check_still_mine(self, refuse: bool = False) -> None:
        found = self._read()
        if found is not None and found.holder.token == self.holder.token:
            return
        if refuse:
            self._refuse_if_held(found)
            raise ReceiverRunning(f"another receiver started at the same time on {self.repo.url}; it goes on")
        h = found.holder if found is not None else None
        raise LeaseLost(f"another receiver ({f'pid {h.pid} on {h.host}' if h else 'unknown'}) took {self.repo.url} "
                        "over (this one's lease had expired): this receiver stops; check that only one runs")

    # -- while running ----------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`LeaseLost` unless the lease is still ours now (blocking: one read of the state)."""
        self._check_still_mine()

    def _write(self) -> None:
        with self._lock:
            self.state = self.state.model_copy(update={"heartbeat_at": _now()})
            self.repo.write_bytes(STATE_NAME, dump_state(self.state))

    def heartbeat(self, base: str | None, revision: int, confirmed_at: dt.datetime | None) -> None:
        """Renew the lease and record the durable progress (blocking: run it in a thread; thread-safe).

        A late heartbeat (its thread outlived its cancelled task) never moves the recorded progress of the
        same chain backwards."""
        with self._lock:
            self._check_still_mine()
            s = self.state
            if base == s.base and revision < s.revision:
                revision, confirmed_at = s.revision, s.confirmed_at
            elif base == s.base and revision == s.revision and s.confirmed_at is not None and (
                    confirmed_at is None or confirmed_at < s.confirmed_at):
                confirmed_at = s.confirmed_at
            self.state = s.model_copy(update={"base": base, "revision": revision, "confirmed_at": confirmed_at})
            self._write()

    def release(self) -> None:
        """Mark the lease free (a clean stop), keeping the progress recorded."""
        try:
            with self._lock, contextlib.suppress(LeaseLost):
                self._check_still_mine()
                self.state = self.state.model_copy(update={"stopped": True})
                self._write()
        finally:
            self.release_lock()

    def release_lock(self) -> None:
        if self._flock is not None:
            self._flock.close()
            self._flock = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


__all__ = ["LOCK_NAME", "LeaseLost", "ReceiverLease", "ReceiverRunning"]
