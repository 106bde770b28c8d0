"""words: on-screen text (OCR) and speech (ASR) lines, with a full-text index

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 08:40:00

One table of lines: an OCR line belongs to a keyframe or an image (its box as fractions of the picture), an ASR
line to a video (its start and end in seconds, its words' times). `folded` is the text as app.words folds it; the
full-text index is over that column: an FTS5 table kept in step by triggers on SQLite, a GIN index over a
stored to_tsvector('simple', folded) column on PostgreSQL. The `ocr_model` / `asr_model` marks say which model read an item, so
adding OCR or speech to an indexed collection redoes neither shots nor CLIP.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

SQLITE_FTS = [  # `source` is a column of its own, so `source : asr` narrows a match inside the index
    "CREATE VIRTUAL TABLE text_fts USING fts5(folded, source, content='text_lines', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER text_lines_ai AFTER INSERT ON text_lines BEGIN "
    "INSERT INTO text_fts(rowid, folded, source) VALUES (new.id, new.folded, new.source); END",
    "CREATE TRIGGER text_lines_ad AFTER DELETE ON text_lines BEGIN "
    "INSERT INTO text_fts(text_fts, rowid, folded, source) VALUES ('delete', old.id, old.folded, old.source); END",
    "CREATE TRIGGER text_lines_au AFTER UPDATE ON text_lines BEGIN "
    "INSERT INTO text_fts(text_fts, rowid, folded, source) VALUES ('delete', old.id, old.folded, old.source); "
    "INSERT INTO text_fts(rowid, folded, source) VALUES (new.id, new.folded, new.source); END",
]


def upgrade() -> None:
    op.create_table(
        "text_lines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("keyframe_id", sa.Integer, sa.ForeignKey("keyframes.id", ondelete="CASCADE"), nullable=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=True),
        sa.Column("video_pk", sa.Integer, sa.ForeignKey("videos.id", ondelete="CASCADE"), nullable=True),
        sa.Column("shot_id", sa.Integer, sa.ForeignKey("shots.id", ondelete="SET NULL"), nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("folded", sa.Text, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("x", sa.Float, nullable=True),
        sa.Column("y", sa.Float, nullable=True),
        sa.Column("w", sa.Float, nullable=True),
        sa.Column("h", sa.Float, nullable=True),
        sa.Column("start_s", sa.Float, nullable=True),
        sa.Column("end_s", sa.Float, nullable=True),
        sa.Column("words_json", sa.Text, nullable=True),
        sa.Column("model", sa.String(64), nullable=False),
        sqlite_autoincrement=True,
    )
    for column in ("keyframe_id", "image_id", "video_pk"):
        op.create_index(f"ix_text_lines_{column}", "text_lines", [column])
    for table, columns in (("videos", ("ocr_model", "asr_model")), ("images", ("ocr_model",))):
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.add_column(sa.Column(column, sa.String(64), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_FTS:
            op.execute(statement)
    else:
        # a stored tsvector: ranking reads it instead of parsing every matched line again
        op.execute("ALTER TABLE text_lines ADD COLUMN tsv tsvector GENERATED ALWAYS AS "
                   "(to_tsvector('simple', folded)) STORED")
        op.execute("CREATE INDEX ix_text_lines_fts ON text_lines USING GIN (tsv)")
        op.create_index("ix_text_lines_source", "text_lines", ["source"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("text_lines_ai", "text_lines_ad", "text_lines_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS text_fts")
    for table, columns in (("videos", ("ocr_model", "asr_model")), ("images", ("ocr_model",))):
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.drop_column(column)
    op.drop_table("text_lines")
