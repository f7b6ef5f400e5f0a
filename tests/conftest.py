"""Shared fixtures: isolated settings, a running node on a free loopback port, peer tools."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import TlsFiles, make_tls_files
from helpers import make_settings, missing_peer
from postgres import PostgresCluster, server_bin

from cad_node.node import Node
from cad_node.settings import Settings


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CAD_NODE_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("CAD_NODE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throw-away PostgreSQL server for the session, started on first use."""
    bindir = server_bin()
    if bindir is None:
        missing_peer("PostgreSQL not installed (scripts/bootstrap --test installs it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing_peer("psycopg not installed (scripts/bootstrap --test installs .[postgres])")
    assert bindir is not None
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """An empty database of its own on the session's PostgreSQL server."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty audit database, on each backend in turn: an SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA with server (127.0.0.1, localhost) and client certificates, and a stranger."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start nodes with setting overrides; all are stopped at teardown.

    Nodes ingest and assemble only, unless ``pipeline=True`` asks for analysis and delivery.
    """
    started: list[Node] = []

    def start(**overrides: Any) -> Node:
        data_dir = overrides.pop("data_dir", tmp_path / "data")
        pipeline = overrides.pop("pipeline", False)
        node = Node(make_settings(data_dir, **overrides), pipeline=pipeline)
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def node(node_factory: Callable[..., Node]) -> Node:
    return node_factory()
