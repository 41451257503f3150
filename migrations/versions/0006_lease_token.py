"""fencing token on leases; service job runs

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 13:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(
            sa.Column("token", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )
    op.create_table(
        "service_jobs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("last_started", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_outcome", sa.String(length=16), nullable=True),
        sa.Column("last_message", sa.Text(), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_jobs")),
    )


def downgrade() -> None:
    op.drop_table("service_jobs")
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("token")
