"""jobs: uploads, deletions and re-indexing from the browser, queued in the catalogue

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 05:20:00

A job survives a server restart because it lives here: queued jobs wait, a running job whose process is gone is
queued again (the ingest is resumable) or failed after too many tries. `stages_json` holds the counts per ingest
stage, `files_json` the result per uploaded file.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("folder", sa.Text, nullable=True),
        sa.Column("targets_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("stages_json", sa.Text, nullable=False, server_default="{}"),
        sa.Column("files_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status", "jobs")
    op.drop_table("jobs")
