"""Migrations on each backend: upgrade, `alembic check` against the models, downgrade."""

from alembic import command
from sqlalchemy import inspect

from cad_node.audit.db import alembic_config, current_revision, make_engine, upgrade


def test_upgrade_creates_schema_and_models_match_migrations(database_url: str) -> None:
    url = database_url
    assert current_revision(url) is None
    upgrade(url)
    assert current_revision(url) is not None
    tables = set(inspect(make_engine(url)).get_table_names())
    assert {"studies", "instances", "events"} <= tables
    # Raises if the SQLAlchemy models and the migrations have drifted apart.
    command.check(alembic_config(url))


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    url = database_url
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    assert "studies" not in inspect(make_engine(url)).get_table_names()
    upgrade(url)
    assert "studies" in inspect(make_engine(url)).get_table_names()
