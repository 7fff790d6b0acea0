"""The test tiers themselves (tests/tiers.py): every test gets exactly one, and a unit test cannot start a server."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from etcdwarden.binaries import find_binary
from etcdwarden.processes import pid_alive
from tests.conftest import _guard as session_guard
from tests.tiers import Guard, assign, server_in, starts

pytestmark = pytest.mark.unit


@dataclass
class _Def:
    func: Any


@dataclass
class _Info:
    name2fixturedefs: dict[str, tuple[_Def, ...]]


@dataclass
class _Item:
    """As much of a pytest item as :func:`assign` reads."""

    nodeid: str
    marks: list[str] = field(default_factory=list)
    fixtures: dict[str, Any] = field(default_factory=dict)

    @property
    def fixturenames(self) -> list[str]:
        return list(self.fixtures)

    @property
    def _fixtureinfo(self) -> _Info:
        return _Info({n: (_Def(f),) for n, f in self.fixtures.items()})

    def iter_markers(self) -> list[pytest.Mark]:
        return [getattr(pytest.mark, m).mark for m in self.marks]

    def add_marker(self, name: str) -> None:
        self.marks.append(name)


@starts("etcd")
def _etcd_fixture() -> None: ...


@starts("backend")
def _backend_fixture() -> None: ...


def _plain_fixture() -> None: ...


def test_a_tier_comes_from_the_fixtures_or_a_mark() -> None:
    items = [_Item("a", fixtures={"tmp_path": _plain_fixture, "etcd1": _etcd_fixture}),
             _Item("b", fixtures={"seaweed": _backend_fixture}),
             _Item("c", marks=["unit"]),
             _Item("d", marks=["etcd"], fixtures={"seaweed": _backend_fixture})]  # a mark may say more
    assign(items)  # type: ignore[arg-type]
    assert [i.marks for i in items] == [["etcd"], ["backend"], ["unit"], ["etcd"]]


@pytest.mark.parametrize(("item", "problem"), [
    (_Item("t::no_tier", fixtures={"tmp_path": _plain_fixture}), "t::no_tier: no tier"),
    (_Item("t::two[x]", marks=["unit", "etcd"]), "t::two: marked unit and etcd"),
    (_Item("t::low", marks=["unit"], fixtures={"etcd1": _etcd_fixture}),
     "t::low: marked unit but its fixture 'etcd1' makes it etcd"),
])
def test_a_test_without_exactly_one_fitting_tier_fails_the_collection(item: _Item, problem: str) -> None:
    with pytest.raises(pytest.UsageError, match="test tiers") as e:
        assign([item])  # type: ignore[list-item]
    assert problem in str(e.value)


def test_servers_are_recognised_through_launchers_but_not_by_a_path_or_a_version() -> None:
    etcd = str(find_binary("etcd"))
    assert server_in([etcd, "--data-dir", "/x"]) == "etcd"
    assert server_in(["unshare", "-m", "sh", "-c", "exec \"$0\" \"$@\"", etcd, "--name", "m"]) == "etcd"
    assert server_in([etcd, "--version"]) is None
    assert server_in(["test", "-e", "/var/lib/etcd"]) is None and server_in(["etcdctl", "get", "k"]) is None


def test_a_unit_test_cannot_start_etcd(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    etcd = str(find_binary("etcd"))
    assert subprocess.run([etcd, "--version"], capture_output=True, check=False).returncode == 0
    with pytest.raises(RuntimeError, match="test tier violation: a unit test started etcd"):
        subprocess.Popen([etcd, "--data-dir", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()  # refused before the process existed
    # the session's guard recorded it against this test, which would fail without this (expected) take
    found = session_guard.take(request.node.nodeid)
    assert len(found) == 1 and found[0].startswith("a unit test started etcd "), found


def test_a_backend_test_cannot_start_etcd(tmp_path: Path) -> None:
    g = Guard()  # a second guard over the session's, for a pretend backend test: it refuses first
    g.install()
    g.tier, g.nodeid = "backend", "pretend"
    try:
        with pytest.raises(RuntimeError, match="a backend test started etcd"):
            subprocess.Popen([str(find_binary("etcd")), "--data-dir", str(tmp_path / "d")])
        assert len(g.take("pretend")) == 1 and g.take("pretend") == []
    finally:
        g.uninstall()


def test_a_server_started_below_a_child_is_seen(request: pytest.FixtureRequest) -> None:
    # the child is python; it becomes a process whose command line says etcd, as a CLI starting etcd would
    child = subprocess.Popen([sys.executable, "-c", "import os; os.execv('/bin/sleep', ['etcd', '30'])"])
    try:
        deadline = time.monotonic() + 10
        while not session_guard.violations.get(request.node.nodeid) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = session_guard.take(request.node.nodeid)
        assert found and f"a unit test ran etcd below it (PID {child.pid}: etcd 30)" in found[0], found
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)
