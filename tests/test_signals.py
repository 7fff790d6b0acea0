"""SIGTERM and SIGHUP are handled as SIGINT is, by every command (issue 11 item 4).

A real ``etcdwarden backup`` of a real etcd holding ~96 MiB of incompressible values is signalled while
its ``.part`` file grows: it must remove what it wrote, print one line and exit 128 + the signal number.
Before the fix SIGTERM killed it on the spot and left the ``.part`` file behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.conftest import _start
from tests.tiers import starts

VALUE = 1 << 20  # below etcd's 1.5 MiB request limit
COUNT = 96


@pytest.fixture(scope="module")
@starts("etcd")
def big_etcd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One member whose database is ~96 MiB of random bytes (so a snapshot takes a while to stream)."""
    c = _start(request, tmp_path_factory.mktemp("bigetcd"), 1)

    async def fill() -> None:
        async with EtcdClient(ClientConfig.from_strings(c.endpoints, command_timeout=30.0)) as client:
            for i in range(COUNT):
                await client.put(f"/big/{i:04d}".encode(), os.urandom(VALUE))

    try:
        asyncio.run(fill())
        yield c
    finally:
        c.stop()


def _cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ETCDWARDEN_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "etcdwarden", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_part(out: Path, proc: subprocess.Popen[str], min_size: int, timeout: float = 60.0) -> int:
    """Wait until a ``.part`` file in ``out`` holds at least ``min_size`` bytes; its size then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the backup ended before it was signalled: {proc.communicate()}"
        for p in out.glob("*.part") if out.is_dir() else []:
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            if size >= min_size:
                return size
        time.sleep(0.005)
    raise AssertionError("no .part file grew in time")


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*") if p.name != ".etcdwarden.lock") if out.exists() else []


@pytest.mark.parametrize(("sig", "code", "line", "extra"), [
    (signal.SIGTERM, 143, "Error: terminated", []),
    (signal.SIGHUP, 129, "Error: hangup", []),
    (signal.SIGINT, 130, "Error: interrupted", []),
    (signal.SIGTERM, 143, "Error: terminated", ["--compress", "zstd"]),  # an encoder thread is running too
])
def test_backup_signalled_mid_stream_leaves_nothing(big_etcd: LocalCluster, tmp_path: Path, sig: int, code: int,
                                                    line: str, extra: list[str]) -> None:
    out = tmp_path / "b"
    proc = _cli("backup", str(out), "--endpoints", big_etcd.endpoints[0], *extra, cwd=tmp_path)
    try:
        size = _wait_for_part(out, proc, 1 << 20)
        os.kill(proc.pid, sig)
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert size < COUNT * VALUE, "the signal did not arrive mid-stream"
    assert proc.returncode == code, stderr
    assert stderr == line + "\n", stderr  # one line, no traceback, no log noise
    assert _leftovers(out) == []  # no .part, no half backup


def test_sigterm_while_waiting_for_the_lock(big_etcd: LocalCluster, tmp_path: Path) -> None:
    """A command blocked in a plain (non-asyncio) wait is interrupted as well."""
    from etcdwarden.fsutil import dir_lock

    out = tmp_path / "b"
    out.mkdir(mode=0o700)
    with dir_lock(out):
        proc = _cli("backup", str(out), "--endpoints", big_etcd.endpoints[0], "--lock-wait", "60s", cwd=tmp_path)
        try:
            time.sleep(1.5)  # importing, then waiting for the lock we hold
            assert proc.poll() is None
            os.kill(proc.pid, signal.SIGTERM)
            _stdout, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 143 and stderr == "Error: terminated\n", stderr


@pytest.mark.unit
def test_handlers_are_put_back_after_a_command() -> None:
    from etcdwarden.cli.signals import Interrupted, signals_as_exceptions

    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
    with pytest.raises(Interrupted) as e, signals_as_exceptions() as received:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(5)  # interrupted at once
    assert e.value.signum == signal.SIGHUP and received == [signal.SIGHUP]
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == before


@pytest.mark.unit
def test_a_signal_lost_in_a_finalizer_is_delivered_again() -> None:
    """Raised inside a weakref callback, the exception cannot propagate ("Exception ignored"): it comes again."""
    import weakref

    from etcdwarden.cli.signals import Interrupted, signals_as_exceptions

    class Thing:
        pass

    def finalizer() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs (and raises) in here, where nothing can catch it
            pass

    started = time.monotonic()
    with pytest.raises(Interrupted) as e, signals_as_exceptions() as received:
        thing = Thing()
        weakref.finalize(thing, finalizer)
        del thing
        time.sleep(5)
    assert e.value.signum == signal.SIGTERM and received[:2] == [signal.SIGTERM, signal.SIGTERM]
    assert time.monotonic() - started < 3


def test_sigterm_inside_a_grpc_callback_is_not_lost(big_etcd: LocalCluster) -> None:
    """Many signals at random moments of an in-process snapshot stream: each ends it, none is lost or hangs."""
    import random

    from etcdwarden.cli.signals import Interrupted, signals_as_exceptions

    async def stream() -> None:
        async with EtcdClient(ClientConfig.from_strings(big_etcd.endpoints)) as c:
            async for _chunk in c.snapshot(c.config.endpoints[0]):
                pass

    for _ in range(5):
        timer = threading.Timer(random.uniform(0.05, 0.3), os.kill, (os.getpid(), signal.SIGTERM))
        started = time.monotonic()
        with pytest.raises(Interrupted), signals_as_exceptions():
            timer.start()
            for _ in range(100):  # streaming still (never past the block, where SIGTERM would end pytest)
                asyncio.run(stream())
        timer.join()
        assert time.monotonic() - started < 10
