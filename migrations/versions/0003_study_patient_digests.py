"""study patient digests

Salted digests of each study's PatientID and issuer, so that an instance of another patient is
refused into the study. Studies recorded before keep NULL until their next instance.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:48:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_salt", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("patient_id_digest", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("patient_issuer_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("patient_issuer_digest")
        batch_op.drop_column("patient_id_digest")
        batch_op.drop_column("patient_salt")
