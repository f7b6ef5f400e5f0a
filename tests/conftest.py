"""Shared fixtures: isolated settings, a running node on a free loopback port, peer tools."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from certs import TlsFiles, make_tls_files
from peers import dcmtk_tool
from postgres import PostgresCluster, server_bin

from cad_node.node import Node
from cad_node.settings import Settings

IN_CI = bool(os.environ.get("CI"))
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MAMMO = Path(
    os.environ.get("CAD_NODE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data" / "mammo")
)
"""Real mammography samples (mini-MIAS, NYU GMIC exam), beside the checkout as ``../shared``."""


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CAD_NODE_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("CAD_NODE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _missing_peer(message: str) -> NoReturn:
    """A peer the tests need is not installed: a skip locally, a failure in CI."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_dcmtk(name: str) -> str:
    """The path of a dcmtk tool; missing is a skip locally but a failure in CI."""
    path = dcmtk_tool(name)
    if path is None:
        _missing_peer(f"dcmtk's {name} not installed (scripts/bootstrap --test installs it)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throw-away PostgreSQL server for the session, started on first use."""
    bindir = server_bin()
    if bindir is None:
        _missing_peer("PostgreSQL not installed (scripts/bootstrap --test installs it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing_peer("psycopg not installed (scripts/bootstrap --test installs .[postgres])")
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


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "host": "127.0.0.1",
        "port": 0,
        "study_quiet_seconds": 1.0,
        "min_free_mb": 0,
        "http_port": 0,  # tests that want the web server pass a free port
    }
    values.update(overrides)
    return Settings(**values)


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


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate`` returns something truthy; fail clearly after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
