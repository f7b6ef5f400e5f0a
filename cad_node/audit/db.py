"""Engine creation and schema migrations (Alembic) for the audit database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import ColumnElement, Engine, create_engine, event, select, update
from sqlalchemy.orm import Session

from cad_node.audit.models import Base
from cad_node.errors import ConfigError
from cad_node.shipped import shipped_folder

MIGRATIONS_DIR = shipped_folder("migrations")
"""The Alembic scripts: the checkout's ``migrations/``, or the installed package's copy."""


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (the audit CLI) work while the node writes; FULL makes a commit
    # durable before the node answers Success; the timeout rides out short write locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, durable commits and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def lock_rows(session: Session, entity: type[Base], *where: ColumnElement[bool]) -> None:
    """Make the session's transaction the only writer of the rows matching ``where`` until it
    ends: another transaction doing the same waits, then reads what this one committed.

    PostgreSQL locks the rows (``SELECT ... FOR UPDATE``). SQLite has no row locks, so a
    no-op write takes the database's write lock instead (before any read of the transaction).
    """
    if session.get_bind().dialect.name == "sqlite":
        pk = entity.__mapper__.primary_key[0]
        session.execute(
            update(entity)
            .where(*where)
            .values({pk.key: pk})
            .execution_options(synchronize_session=False)
        )
    else:
        session.execute(select(entity.__mapper__.primary_key[0]).where(*where).with_for_update())


def alembic_config(url: str) -> Config:
    """An Alembic configuration pointing at our migrations and ``url``."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise ConfigError(f"migrations not found at {MIGRATIONS_DIR}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating an SQLite file as needed)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None  # do not create an empty database file by looking
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
