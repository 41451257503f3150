"""synthesis runs and SFT examples

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 15:52:02.934917
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
    op.create_table(
        "synth_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter", sa.String(length=200), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("health", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_synth_runs")),
    )
    op.create_table(
        "sft_examples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("record_key", sa.String(length=300), nullable=False),
        sa.Column("origin", sa.String(length=32), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("completion", sa.Text(), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=True),
        sa.Column("reward", sa.Double(), nullable=True),
        sa.Column("sample_id", sa.Integer(), nullable=True),
        sa.Column("interaction_id", sa.Integer(), nullable=True),
        sa.Column("synth_run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_sft_examples_interaction_id_interactions"),
        ),
        sa.ForeignKeyConstraint(
            ["sample_id"], ["samples.id"], name=op.f("fk_sft_examples_sample_id_samples")
        ),
        sa.ForeignKeyConstraint(
            ["synth_run_id"],
            ["synth_runs.id"],
            name=op.f("fk_sft_examples_synth_run_id_synth_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sft_examples")),
        sa.UniqueConstraint("record_key", name=op.f("uq_sft_examples_record_key")),
    )
    with op.batch_alter_table("sft_examples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sft_examples_task"), ["task"], unique=False)

    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("synth_run_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_samples_synth_run_id"), ["synth_run_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_samples_synth_run_id_synth_runs"), "synth_runs", ["synth_run_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_samples_synth_run_id_synth_runs"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_samples_synth_run_id"))
        batch_op.drop_column("synth_run_id")

    with op.batch_alter_table("sft_examples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sft_examples_task"))

    op.drop_table("sft_examples")
    op.drop_table("synth_runs")
