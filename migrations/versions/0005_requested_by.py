"""job requested_by

Who asked for a job by hand (a re-analysis from the console, the API or the CLI). Such a job
runs even though its revision holds the same instances as the last analysed one; jobs the node
creates itself when a study completes keep NULL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 02:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("requested_by")
