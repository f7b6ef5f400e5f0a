"""instance revisions

Each stored instance records the study revision that first included it, so that a job analyses
exactly the instances of its revision, not whatever has arrived by the time it starts. Instances
already in a completed study go to its earliest job still to run (which would have read them
all), else to the study's current revision; the others stay NULL until the next completion.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE instances SET revision = ("
        " SELECT COALESCE(("
        "  SELECT MIN(jobs.revision) FROM jobs WHERE jobs.study_id = studies.id"
        "  AND jobs.state IN ('queued', 'running')), studies.revision)"
        " FROM studies WHERE studies.id = instances.study_id"
        " AND studies.completed_at IS NOT NULL AND instances.received_at <= studies.completed_at)"
        " WHERE outcome = 'stored'"
    )


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("revision")
