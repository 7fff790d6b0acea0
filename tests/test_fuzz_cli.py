"""Property-based test of every command's file and number arguments (issue 11 item 7).

Hostile inputs — random bytes, empty files, directories, FIFOs, devices, missing paths, paths below a
file, symlink loops; huge, negative and non-finite numbers — must give one clear error: no traceback,
an exit code in {1, 2, 3}, and no file outside the test's own directory changed. The CLI runs in-process
(``etcdwarden.cli.main.run``) against a closed 127.0.0.1 port with a short dial timeout, so commands that
need a cluster fail fast; a watchdog turns a hang (a FIFO opened for reading, an infinite timeout) into
a failure instead of a stuck suite.

``demo`` is left out: with a valid ``--keys`` it starts a cluster, which is not what this suite is for.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import signal
import socket
import stat
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdwarden.cli.main import run
from etcdwarden.cli.output import Output

WATCHDOG = 30.0  # seconds one command may take before it counts as hung
# ~0.1 s an example: the two tests take about a minute. Random inputs on a developer's machine, the same ones
# in CI (a failure there must be reproducible, not a coin toss for whoever merges next).
FUZZ = settings(max_examples=int(os.environ.get("ETCDWARDEN_FUZZ_EXAMPLES", "300")), deadline=None,
                derandomize=bool(os.environ.get("CI")), database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

pytestmark = pytest.mark.unit


class Hung(BaseException):
    """The command did not finish within the watchdog's time."""


@dataclass
class Outcome:
    code: int
    err: str
    out: str
    crash: str | None  # the traceback of an exception that escaped ``run``


def _closed_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise Hung(f"the command did not finish within {WATCHDOG:g}s")


def _grpc_loop_noise(line: str) -> bool:
    """gRPC's aio poller outlives the event loop of a command run earlier in this process and logs that it
    is closed; a real process runs one command (one loop) and never shows it."""
    return "PollerCompletionQueue" in line or "Event loop is closed" in line


def invoke(argv: list[str]) -> Outcome:
    out = Output(out=io.StringIO(), err=io.StringIO())
    stdout, stderr = io.StringIO(), io.StringIO()  # argparse and a few commands write to sys.std*
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG)
    crash = None
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run(argv, out=out)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    except BaseException:  # a traceback a user would have seen (or a hang)
        code, crash = -1, traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert isinstance(out.err, io.StringIO) and isinstance(out.out, io.StringIO)
    err = "".join(line for line in (stderr.getvalue() + out.err.getvalue()).splitlines(keepends=True)
                  if not _grpc_loop_noise(line))
    return Outcome(code, err, out.out.getvalue() + stdout.getvalue(), crash)


# --- what is outside the test's directory ---------------------------------------------------------------------


def _outside(base: Path) -> dict[str, tuple[int, int, float]]:
    """A fingerprint of what a run must not touch: the test directory's siblings and /dev/null & co."""
    seen: dict[str, tuple[int, int, float]] = {}
    for d in (base.parent, Path("/dev")):
        with os.scandir(d) as it:
            for e in it:
                if Path(e.path) == base or (d == Path("/dev") and e.name not in ("null", "zero", "full")):
                    continue
                try:
                    s = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                seen[e.path] = (s.st_mode, s.st_size, s.st_mtime)
    return seen


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The test's own directory; cwd, HOME, TMPDIR and the temp module point into it for the whole module."""
    base = tmp_path_factory.mktemp("fuzzcli")
    (base / "tmp").mkdir()
    (base / "home").mkdir()
    old_cwd, old_tempdir = Path.cwd(), tempfile.tempdir
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "HOME", "ETCDCTL_ENDPOINTS", "ETCDCTL_DIAL_TIMEOUT",
                                            "ETCDCTL_COMMAND_TIMEOUT", "ETCDWARDEN_DEBUG")}
    os.environ["TMPDIR"] = str(base / "tmp")
    os.environ["HOME"] = str(base / "home")
    tempfile.tempdir = str(base / "tmp")
    os.environ["ETCDCTL_ENDPOINTS"] = _closed_endpoint()
    os.environ["ETCDCTL_DIAL_TIMEOUT"] = "200ms"
    os.environ["ETCDCTL_COMMAND_TIMEOUT"] = "1s"
    os.environ.pop("ETCDWARDEN_DEBUG", None)
    os.chdir(base)
    before = _outside(base)
    try:
        yield base
    finally:
        os.chdir(old_cwd)
        tempfile.tempdir = old_tempdir
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert _outside(base) == before, "a command changed something outside the test's directory"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# --- hostile inputs ----------------------------------------------------------------------------------------------

FILE_KINDS = ["random", "empty", "directory", "directory-of-random", "fifo", "missing", "below-a-file",
              "dev-null", "symlink-loop", "dangling-symlink", "long-name", "socket"]


def make_input(where: Path, kind: str, data: bytes) -> str:
    """Create a hostile file argument of ``kind`` in ``where``; return its path as given on the command line."""
    p = where / "input"
    if kind == "random":
        p.write_bytes(data)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "directory":
        p.mkdir()
    elif kind == "directory-of-random":
        p.mkdir()
        (p / "snapshot_2024-01-01_000000.db").write_bytes(data)
        (p / "backup_2024-01-01_000000.json").write_bytes(data[::-1])
        (p / "x.yaml").write_bytes(data)
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "missing":
        pass
    elif kind == "below-a-file":
        p.write_bytes(data)
        p = p / "below"
    elif kind == "dev-null":
        return "/dev/null"
    elif kind == "symlink-loop":
        p.symlink_to(p)
    elif kind == "dangling-symlink":
        p.symlink_to(where / "nowhere")
    elif kind == "long-name":
        p = where / ("n" * 300)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()  # the socket file stays
    return str(p)


NUMBERS = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "NaN", "Infinity", "1e999", "-1e999", "1e308", "-1", "-0", "0", "",
                     " ", "0x10", "1_0", "1e-400", "+5", "-5s", "5s", "99999999999999999999h", "9" * 400,
                     "-" + "9" * 400, "1.5", "\u0661\u0662", "1e3", "-0.0", "5 ", "nanh", "1e20", "4294967297"]),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


# --- the commands and their file arguments ------------------------------------------------------------------------

Slot = Callable[[str, Path], list[str]]

FILE_SLOTS: dict[str, Slot] = {
    "config validate": lambda f, d: ["config", "validate", f],
    "daemon --config": lambda f, d: ["daemon", "--config", f, "--once"],
    "snapshot status": lambda f, d: ["snapshot", "status", f],
    "snapshot verify": lambda f, d: ["snapshot", "verify", f],
    "snapshot inspect": lambda f, d: ["snapshot", "inspect", f],
    "snapshot diff": lambda f, d: ["snapshot", "diff", f, f],
    "snapshot get": lambda f, d: ["snapshot", "get", f, "/registry/x"],
    "snapshot get -o": lambda f, d: ["snapshot", "get", str(d / "snap.db"), "/registry/x", "-o", f],
    "snapshot status --identity": lambda f, d: ["snapshot", "status", f, "--identity", f],
    "backup DIR": lambda f, d: ["backup", f],
    "backup --resources": lambda f, d: ["backup", str(d / "out"), "--resources", f],
    "backup --resources-dir": lambda f, d: ["backup", str(d / "out"), "--resources-dir", f],
    "backup --encryption-config": lambda f, d: ["backup", str(d / "out"), "--encryption-config", f],
    "backup --repository-config": lambda f, d: ["backup", str(d / "out"), "--repository-config", f],
    "backups list": lambda f, d: ["backups", "list", f],
    "backups show": lambda f, d: ["backups", "show", f, "2024-01-01_000000"],
    "backups delete": lambda f, d: ["backups", "delete", f, "2024-01-01_000000"],
    "backups prune": lambda f, d: ["backups", "prune", f, "--max-number", "1"],
    "backups copy SRC": lambda f, d: ["backups", "copy", f, str(d / "dst")],
    "backups copy DST": lambda f, d: ["backups", "copy", str(d), f],
    "restore member BACKUP": lambda f, d: ["restore", "member", f, "--data-dir", str(d / "data"), "--name", "m1",
                                           "--initial-cluster", "m1=http://127.0.0.1:2380", "--dry-run"],
    "restore member --data-dir": lambda f, d: ["restore", "member", str(d), "--data-dir", f, "--name", "m1",
                                               "--initial-cluster", "m1=http://127.0.0.1:2380", "--dry-run"],
    "restore member --identity": lambda f, d: ["restore", "member", f, "--identity", f, "--data-dir",
                                               str(d / "data"), "--name", "m1", "--initial-cluster",
                                               "m1=http://127.0.0.1:2380", "--dry-run"],
    "restore member --etcdutl": lambda f, d: ["restore", "member", f, "--etcdutl", f, "--data-dir", str(d / "data"),
                                              "--name", "m1", "--initial-cluster", "m1=http://127.0.0.1:2380",
                                              "--dry-run"],
    "restore cluster --spec": lambda f, d: ["restore", "cluster", str(d), "--spec", f, "--dry-run"],
    "restore cluster --state": lambda f, d: ["restore", "cluster", str(d), "--spec", f, "--state", f, "--dry-run"],
    "member replace --spec": lambda f, d: ["member", "replace", "m1", "--spec", f, "--dry-run"],
    "doctor --spec": lambda f, d: ["doctor", "--spec", f],
    "doctor --backup": lambda f, d: ["doctor", "--backup", f],
    "encryption status --config": lambda f, d: ["encryption", "status", "--config", f],
    "encryption enable --config": lambda f, d: ["encryption", "enable", "--config", f, "--dry-run"],
    "encryption migrate --state-file": lambda f, d: ["encryption", "migrate", "--config", f, "--state-file", f,
                                                     "--dry-run"],
    "encryption rotate --apiserver-config": lambda f, d: ["encryption", "rotate", "--config", f,
                                                          "--apiserver-config", f, "--dry-run"],
    "encryption enable --apiserver-cacert": lambda f, d: ["encryption", "enable", "--config", f,
                                                          "--apiserver-cacert", f, "--apiserver-token-file", f,
                                                          "--apiserver-metrics", "https://127.0.0.1:1/metrics",
                                                          "--dry-run"],
    "--cacert": lambda f, d: ["endpoint", "status", "--endpoints", "https://127.0.0.1:1", "--cacert", f],
    "--cert --key": lambda f, d: ["member", "list", "--endpoints", "https://127.0.0.1:1", "--cert", f, "--key", f],
    "--from-manifest": lambda f, d: ["endpoint", "health", "--endpoints", "", "--from-manifest", f],
}

NUMBER_SLOTS: dict[str, Callable[[str, Path], list[str]]] = {
    "--dial-timeout": lambda v, d: ["endpoint", "status", "--dial-timeout", v],
    "--command-timeout": lambda v, d: ["alarm", "list", "--command-timeout", v],
    "backup --lock-wait": lambda v, d: ["backup", str(d / "out"), "--lock-wait", v],
    "backups prune --max-number": lambda v, d: ["backups", "prune", str(d), "--max-number", v, "--dry-run"],
    "backups prune --max-size-gib": lambda v, d: ["backups", "prune", str(d), "--max-size-gib", v, "--dry-run"],
    "backups prune --max-size": lambda v, d: ["backups", "prune", str(d), "--max-size", v, "--dry-run"],
    "backups prune --reverify-after": lambda v, d: ["backups", "prune", str(d), "--max-number", "1",
                                                    "--reverify-after", v, "--dry-run"],
    "backups prune --max-verify-bytes": lambda v, d: ["backups", "prune", str(d), "--max-number", "1",
                                                      "--max-verify-bytes", v, "--dry-run"],
    "backups prune --keep-within": lambda v, d: ["backups", "prune", str(d), "--keep-within", v, "--dry-run"],
    "backups prune --keep-daily": lambda v, d: ["backups", "prune", str(d), "--keep-daily", v, "--dry-run"],
    "backups prune --min-keep": lambda v, d: ["backups", "prune", str(d), "--max-number", "1", "--min-keep", v,
                                              "--dry-run"],
    "backups prune --incomplete-grace": lambda v, d: ["backups", "prune", str(d), "--incomplete-grace", v,
                                                      "--dry-run"],
    "backups prune --lock-wait": lambda v, d: ["backups", "prune", str(d), "--lock-wait", v, "--dry-run"],
    "snapshot inspect --rev": lambda v, d: ["snapshot", "inspect", str(d / "snap.db"), "--rev", v],
    "snapshot get --rev": lambda v, d: ["snapshot", "get", str(d / "snap.db"), "/registry/x", "--rev", v],
    "restore member --bump-revision": lambda v, d: ["restore", "member", str(d / "snap.db"), "--data-dir",
                                                    str(d / "data"), "--name", "m1", "--initial-cluster",
                                                    "m1=http://127.0.0.1:2380", "--bump-revision", v,
                                                    "--mark-compacted", "--dry-run"],
    "restore cluster --timeout": lambda v, d: ["restore", "cluster", str(d / "snap.db"), "--spec",
                                               str(d / "spec.yaml"), "--timeout", v, "--dry-run"],
    "member replace --timeout": lambda v, d: ["member", "replace", "m1", "--spec", str(d / "spec.yaml"),
                                              "--timeout", v, "--dry-run"],
    "member remove ID": lambda v, d: ["member", "remove", v],
    "member promote ID": lambda v, d: ["member", "promote", v],
    "defrag --wait": lambda v, d: ["defrag", "--wait", v, "--dry-run"],
    "defrag --recover-timeout": lambda v, d: ["defrag", "--recover-timeout", v, "--dry-run"],
    "defrag --quota-backend-bytes": lambda v, d: ["defrag", "--quota-backend-bytes", v, "--dry-run"],
    "defrag --disarm-threshold": lambda v, d: ["defrag", "--disarm-threshold", v, "--dry-run"],
    "encryption migrate --page-size": lambda v, d: ["encryption", "migrate", "--config", str(d / "enc.yaml"),
                                                    "--page-size", v, "--dry-run"],
    "encryption migrate --batch-size": lambda v, d: ["encryption", "migrate", "--config", str(d / "enc.yaml"),
                                                     "--batch-size", v, "--dry-run"],
    "encryption migrate --concurrency": lambda v, d: ["encryption", "migrate", "--config", str(d / "enc.yaml"),
                                                      "--concurrency", v, "--dry-run"],
    "encryption migrate --rate-limit": lambda v, d: ["encryption", "migrate", "--config", str(d / "enc.yaml"),
                                                     "--rate-limit", v, "--dry-run"],
    "encryption enable --rollout-timeout": lambda v, d: ["encryption", "enable", "--config", str(d / "enc.yaml"),
                                                         "--rollout-timeout", v, "--dry-run"],
    "daemon --deadline": lambda v, d: ["daemon", "--config", str(d / "daemon.yaml"), "--once", "--deadline", v],
}

ENC_CONFIG = """apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - identity: {}
"""

DAEMON_CONFIG = """apiVersion: etcdwarden.io/v1alpha1
kind: DaemonConfig
repositories:
  - name: local
    url: {repo}
backups:
  - name: hourly
    repository: local
    schedule: "0 * * * *"
"""

SPEC = """members:
  - name: m1
    dataDir: {data}
    peerURL: http://127.0.0.1:2380
    clientURL: http://127.0.0.1:2379
"""


def _check(what: str, argv: list[str], o: Outcome, allowed: set[int]) -> None:
    assert o.crash is None, f"{what}: {argv}: an exception escaped:\n{o.crash}"
    assert "Traceback" not in o.err + o.out, f"{what}: {argv}: traceback:\n{o.err}"
    assert o.code in allowed, f"{what}: {argv}: exit {o.code}; stderr:\n{o.err}"
    if o.code != 0:
        assert (o.err + o.out).strip(), f"{what}: {argv}: exit {o.code} without a message"


# what a command may legitimately accept (exit 0): a directory is a repository, perhaps empty, perhaps holding
# unreadable backups (listed as such; deleting one by its ID is what was asked); a missing one holds nothing
REPOSITORY = {"directory", "directory-of-random", "missing"}
ACCEPTED: dict[str, set[str]] = {
    "backups list": REPOSITORY,
    "backups show": {"directory-of-random"},
    "backups delete": {"directory-of-random"},
    "backups prune": REPOSITORY,
    "backups copy SRC": REPOSITORY,
    "backups copy DST": REPOSITORY,
}

_PLAUSIBLE = re.compile(r"\s*\+?[0-9]+(\.[0-9]+)?\s*[a-zA-Z]{0,3}\s*")


def plausible(value: str) -> bool:
    """A value a command may accept: a non-negative decimal number, perhaps with a unit (a huge count such as
    --keep-daily 10^20 is harmless: keep them all), or a finite non-negative float (4.8e-251 GiB is 1 byte).

    Everything else (non-finite, negative, hex, blank, words) must be refused; nothing may crash."""
    if _PLAUSIBLE.fullmatch(value):
        return True
    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and number >= 0


@FUZZ
@given(slot=st.sampled_from(sorted(FILE_SLOTS)), kind=st.sampled_from(FILE_KINDS), data=st.binary(max_size=2048))
def test_file_arguments(arena: Path, slot: str, kind: str, data: bytes) -> None:
    d = Path(tempfile.mkdtemp(prefix="ex-", dir=arena))
    f = make_input(d, kind, data)
    argv = FILE_SLOTS[slot](f, d)
    o = invoke(argv)
    allowed = {1, 2, 3} | ({0} if kind in ACCEPTED.get(slot, set()) else set())
    _check(f"{slot} <{kind}>", argv, o, allowed)


@FUZZ
@given(slot=st.sampled_from(sorted(NUMBER_SLOTS)), value=NUMBERS)
def test_number_arguments(arena: Path, slot: str, value: str) -> None:
    d = Path(tempfile.mkdtemp(prefix="ex-", dir=arena))
    (d / "enc.yaml").write_text(ENC_CONFIG)
    (d / "daemon.yaml").write_text(DAEMON_CONFIG.format(repo=d / "repo"))
    (d / "spec.yaml").write_text(SPEC.format(data=d / "data"))
    (d / "snap.db").write_bytes(b"\0" * 8192)
    argv = NUMBER_SLOTS[slot](value, d)
    o = invoke(argv)
    _check(f"{slot} {value!r}", argv, o, {1, 2, 3} | ({0} if plausible(value) else set()))
