"""The house's import contracts (pyproject.toml [tool.importlinter]) hold: layers, local/ protected, no cycles."""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter.cli import lint_imports

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert " 0 broken" in out, out


def test_offline_status_loads_no_client_and_no_repository_machinery(tmp_path: Path) -> None:
    """``snapshot status FILE`` is measured against ``etcdutl`` (bench/snapshot_status.py), start-up included:
    it must not import gRPC, protobuf, pydantic or the repository layer, which it does not use."""
    import subprocess
    import sys

    db = ROOT / "tests/format/fixtures/v1-plain/snapshot_2026-12-02_135418.db"
    code = ("import sys; from etcdwarden.cli.main import run; code = run(['snapshot', 'status', sys.argv[1]]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google', 'pydantic', 'yaml') "
            "or m.startswith(('etcdwarden.repository.', 'etcdwarden.etcd.', 'etcdwarden.format.manifest')) "
            "and m != 'etcdwarden.repository.location')); sys.exit(code)")
    r = subprocess.run([sys.executable, "-c", code, str(db)], check=False, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "TOTAL KEYS" in r.stdout and lines[-1] == "[]", r.stdout
