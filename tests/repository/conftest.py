"""Fixtures of the repository tests: one real SeaweedFS S3 gateway and one real Azurite blob service per
session, a fresh prefix per test, and fabricated backups (real files with real sha256 in a real manifest,
no etcd needed)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.repository.base import Repository, open_repository
from tests.repository.azurite import Azurite
from tests.repository.seaweed import SeaweedS3
from tests.tiers import starts

_counter = itertools.count()


@pytest.fixture(scope="session")
@starts("backend")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
@starts("backend")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _prefix(request: pytest.FixtureRequest) -> str:
    return f"t{next(_counter)}-{request.node.name[:40]}".replace("[", "-").replace("]", "")


@pytest.fixture
def s3_repo(seaweed: SeaweedS3, request: pytest.FixtureRequest) -> Iterator[Repository]:
    repo = open_repository(seaweed.url(_prefix(request)), seaweed.options())
    yield repo
    repo.close()


@pytest.fixture
def az_repo(azurite: Azurite, request: pytest.FixtureRequest) -> Iterator[Repository]:
    repo = open_repository(azurite.url(_prefix(request)), azurite.options())
    yield repo
    repo.close()


@pytest.fixture
def local_repo(tmp_path: Path) -> Repository:
    return open_repository(tmp_path / "repo")


@pytest.fixture(params=[pytest.param("local", marks=pytest.mark.unit), pytest.param("s3", marks=pytest.mark.backend),
                        pytest.param("az", marks=pytest.mark.backend)])
def any_repo(request: pytest.FixtureRequest) -> Repository:
    repo: Repository = request.getfixturevalue(f"{request.param}_repo")
    return repo
