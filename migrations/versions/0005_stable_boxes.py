"""stable identities: boxes on (video, frame_idx) in source pixels, image boxes by content hash

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 23:40:00

Boxes used to name a keyframe by its number n (renumbered by every re-index) and hold keyframe-JPEG pixels
(which depend on --keyframe-size), and name images by absolute path. Each old box is converted where its
keyframe or image is still catalogued; one whose keyframe or image is already gone keeps its old fields and
is listed as orphaned. The keyframe JPEG's size comes from the file when the data dir is known (open_database
passes it), else from the default --keyframe-size of 1280.
"""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

DEFAULT_KEYFRAME_SIDE = 1280


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    """app.video_decode.fit_size as it was when these boxes were drawn (frozen here: migrations do not
    import app code that may change later)."""
    scale = max_side / max(width, height, 1)
    if scale >= 1:
        return width, height
    return max(2, round(width * scale)), max(2, round(height * scale))


def _jpeg_size(data_dir: str | None, rel: str) -> tuple[int, int] | None:
    if not data_dir or not rel:
        return None
    try:
        from PIL import Image

        with Image.open(Path(data_dir) / rel) as im:
            return im.size
    except (OSError, ValueError):
        return None


def _to_source(box: tuple[int, int, int, int], shown: tuple[int, int], source: tuple[int, int]):
    sx, sy = source[0] / max(shown[0], 1), source[1] / max(shown[1], 1)
    x, y, w, h = box
    x0, y0 = min(round(x * sx), source[0] - 1), min(round(y * sy), source[1] - 1)
    x1, y1 = min(round((x + w) * sx), source[0]), min(round((y + h) * sy), source[1])
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def upgrade() -> None:
    with op.batch_alter_table("annotations") as batch:
        batch.add_column(sa.Column("frame_idx", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("image_hash", sa.String(64), nullable=True))
        batch.create_index("ix_annotations_frame", ["video_id", "frame_idx"])
        batch.create_index("ix_annotations_image_hash", ["image_hash"])
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("name", sa.Text(), nullable=True))
        batch.create_index("ix_images_content_hash", ["content_hash"])
    op.create_index("ix_keyframes_frame", "keyframes", ["video_pk", "frame_idx"])

    bind = op.get_bind()
    data_dir = context.config.attributes.get("data_dir")
    for image_id, path in bind.execute(sa.text("SELECT id, path FROM images")).all():
        bind.execute(sa.text("UPDATE images SET name = :n WHERE id = :i"), {"n": Path(path).name, "i": image_id})
    frame_boxes = bind.execute(sa.text(
        "SELECT a.id, a.x, a.y, a.w, a.h, k.frame_idx, k.image_path, v.width, v.height "
        "FROM annotations a JOIN videos v ON v.video_id = a.video_id JOIN keyframes k "
        "ON k.video_pk = v.id AND k.n = a.n WHERE a.video_id IS NOT NULL AND a.n IS NOT NULL")).all()
    for box_id, x, y, w, h, frame_idx, rel, vw, vh in frame_boxes:
        source = (vw, vh)
        shown = _jpeg_size(data_dir, rel) or _fit(vw, vh, DEFAULT_KEYFRAME_SIDE)
        nx, ny, nw, nh = _to_source((x, y, w, h), shown, source) if vw and vh else (x, y, w, h)
        bind.execute(sa.text("UPDATE annotations SET frame_idx = :f, n = NULL, x = :x, y = :y, w = :w, h = :h "
                             "WHERE id = :i"), {"f": frame_idx, "x": nx, "y": ny, "w": nw, "h": nh, "i": box_id})
    bind.execute(sa.text(
        "UPDATE annotations SET image_hash = (SELECT min(i.content_hash) FROM images i "
        "WHERE i.path = annotations.image_path), image_path = NULL "
        "WHERE image_path IS NOT NULL AND EXISTS (SELECT 1 FROM images i WHERE i.path = annotations.image_path)"))


def downgrade() -> None:
    bind = op.get_bind()
    # back to keyframe numbers where the frame is a keyframe (pixels stay in source scale: a lossy step)
    bind.execute(sa.text(
        "UPDATE annotations SET n = (SELECT k.n FROM keyframes k JOIN videos v ON v.id = k.video_pk "
        "WHERE v.video_id = annotations.video_id AND k.frame_idx = annotations.frame_idx) "
        "WHERE frame_idx IS NOT NULL"))
    bind.execute(sa.text(
        "UPDATE annotations SET image_path = (SELECT min(i.path) FROM images i "
        "WHERE i.content_hash = annotations.image_hash) WHERE image_hash IS NOT NULL"))
    op.drop_index("ix_keyframes_frame", table_name="keyframes")
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_content_hash")
        batch.drop_column("name")
    with op.batch_alter_table("annotations") as batch:
        batch.drop_index("ix_annotations_image_hash")
        batch.drop_index("ix_annotations_frame")
        batch.drop_column("image_hash")
        batch.drop_column("frame_idx")
