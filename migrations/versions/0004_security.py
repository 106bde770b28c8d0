"""security: ids never reused, revocable sessions, case-insensitive user names

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 21:05:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite reuses the largest rowid after a delete unless the table is AUTOINCREMENT (PostgreSQL
        # sequences never go back): recreate the tables whose ids are remembered elsewhere (boxes in
        # clients, users in session cookies, keyframes and images in index generations).
        for table in ("annotations", "users", "keyframes", "images"):
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}) as batch:
                batch.alter_column("id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("session_version", sa.Integer(), nullable=False, server_default="1"))
    op.create_index("ux_users_name_lower", "users", [sa.text("lower(name)")], unique=True)


def downgrade() -> None:
    op.drop_index("ux_users_name_lower", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("session_version")
