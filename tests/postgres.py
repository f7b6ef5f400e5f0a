"""A throw-away PostgreSQL cluster for the tests: ``initdb`` into a temporary folder and
``pg_ctl`` on a free loopback port, as a non-root user (the server refuses to run as root).

Trust authentication on 127.0.0.1 only: the cluster lives for one test session.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services import free_port, wait_until

if TYPE_CHECKING:
    import psycopg

SUPERUSER = "postgres"
"""The cluster's superuser role (whatever the operating-system user running it is)."""


def server_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl`` (Debian's newest under /usr/lib/postgresql)."""

    def version(folder: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/bin", folder)
        return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)

    folders = sorted(
        (f for f in glob.glob("/usr/lib/postgresql/*/bin") if Path(f, "initdb").is_file()),
        key=version,
        reverse=True,
    )
    if folders:
        return Path(folders[0])
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _server_user() -> str | None:
    """The user to run the server as when we are root: Debian's ``postgres``, else ``nobody``;
    None when we are not root (the server then runs as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


class PostgresCluster:
    """One server on 127.0.0.1, its data and socket in a folder of its own."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _server_user()
        # Not under pytest's temporary folder: that is private to us, and the server's user
        # must reach its data directory.
        self.folder = Path(tempfile.mkdtemp(prefix="cad-node-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self._names = itertools.count(1)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(
            command, cwd=self.folder, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{output}")

    def start(self) -> None:
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.folder}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.folder / "server.log"),
            "--options",
            options,
            "--wait",
        )
        wait_until(self._ready, 30, "PostgreSQL")

    def _ready(self) -> bool:
        with self._admin() as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def _admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        )

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of database ``dbname`` on this cluster."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = f"cad_node_test_{next(self._names)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, closing what still uses it."""
        name = url.rsplit("/", 1)[1]
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "--pgdata", str(self.data), "--mode", "immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
