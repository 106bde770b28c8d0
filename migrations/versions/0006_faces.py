"""faces: detected faces with their vectors and thumbnails, people (named clusters), per-item scan marks

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 02:20:00

A face belongs to a keyframe or an image (deleted with it); `videos.faces_model` / `images.faces_model` say which
face model has scanned an item, so adding faces to an indexed collection scans only what is missing.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("videos") as batch:
        batch.add_column(sa.Column("faces_model", sa.String(64), nullable=True))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("faces_model", sa.String(64), nullable=True))
    op.create_table(
        "people",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=True, unique=True),
        sa.Column("centroid", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "faces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("keyframe_id", sa.Integer, sa.ForeignKey("keyframes.id", ondelete="CASCADE"), nullable=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=True),
        sa.Column("x", sa.Float, nullable=False),
        sa.Column("y", sa.Float, nullable=False),
        sa.Column("w", sa.Float, nullable=False),
        sa.Column("h", sa.Float, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("person_id", sa.Integer, sa.ForeignKey("people.id", ondelete="SET NULL"), nullable=True),
        sa.Column("locked", sa.Boolean, nullable=False, server_default=sa.false()),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_faces_keyframe_id", "faces", ["keyframe_id"])
    op.create_index("ix_faces_image_id", "faces", ["image_id"])
    op.create_index("ix_faces_person_id", "faces", ["person_id"])
    op.create_table(
        "face_data",
        sa.Column("face_id", sa.Integer, sa.ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("thumb", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("face_data")
    op.drop_table("faces")
    op.drop_table("people")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("faces_model")
    with op.batch_alter_table("videos") as batch:
        batch.drop_column("faces_model")
