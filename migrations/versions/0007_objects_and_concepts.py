"""objects and concepts: machine boxes from a detector (with their crops' CLIP vectors), zero-shot shot labels

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 02:45:00

Detections belong to a keyframe or an image (deleted with it) and may be accepted into a human box (linked, never
the other way round). Concept labels belong to a shot or an image. `objects_model` and `concepts_vocab` on videos and
images say which detector and which vocabulary have processed an item, so each pass runs only where it is missing.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("videos", "images"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("objects_model", sa.String(64), nullable=True))
            batch.add_column(sa.Column("concepts_vocab", sa.String(64), nullable=True))
    op.create_table(
        "detections",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("keyframe_id", sa.Integer, sa.ForeignKey("keyframes.id", ondelete="CASCADE"), nullable=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=True),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("x", sa.Float, nullable=False),
        sa.Column("y", sa.Float, nullable=False),
        sa.Column("w", sa.Float, nullable=False),
        sa.Column("h", sa.Float, nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="new"),
        sa.Column("annotation_id", sa.Integer, sa.ForeignKey("annotations.id", ondelete="SET NULL"), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_detections_keyframe_id", "detections", ["keyframe_id"])
    op.create_index("ix_detections_image_id", "detections", ["image_id"])
    op.create_index("ix_detections_label", "detections", ["label"])
    op.create_table(
        "detection_data",
        sa.Column("detection_id", sa.Integer, sa.ForeignKey("detections.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "concept_labels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("shot_id", sa.Integer, sa.ForeignKey("shots.id", ondelete="CASCADE"), nullable=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("vocabulary", sa.String(64), nullable=False),
    )
    op.create_index("ix_concept_labels_shot_id", "concept_labels", ["shot_id"])
    op.create_index("ix_concept_labels_image_id", "concept_labels", ["image_id"])
    op.create_index("ix_concept_labels_label", "concept_labels", ["label"])


def downgrade() -> None:
    op.drop_table("concept_labels")
    op.drop_table("detection_data")
    op.drop_table("detections")
    for table in ("images", "videos"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("concepts_vocab")
            batch.drop_column("objects_model")
