"""Taking a video or an image out of the collection: its rows, its derived files, and the uploaded copy we own.

Boxes are never deleted with it: they name their frame or image, so they become orphans (kept, listed on the
annotations page) and the removal lists them. A file the user indexed from their own folders is never touched;
only a copy under uploads/ (it came from the browser) goes. The FAISS indexes drop the vectors when the job's
index run refreshes them (the catalogue no longer has the rows).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.items import BadItemRef, ItemRef
from app.models import Annotation, Image, Video
from app.paths import DataLayout
from app.store import remove_video_files


class RemovalError(ValueError):
    """A target that cannot be removed (unknown, or named the wrong way); the message says why."""


@dataclass(frozen=True)
class Target:
    """What a delete or re-index names: a whole video ('video:<video_id>') or an image ('image:<content_hash>')."""

    kind: str  # video | image
    key: str  # video_id | content hash

    @classmethod
    def parse(cls, text: str) -> Target:
        text = (text or "").strip()
        if text.startswith("video:") and 0 < len(text) - 6 <= 255:
            return cls("video", text[6:])
        try:
            ref = ItemRef.parse(text)
        except BadItemRef as exc:
            raise RemovalError(f"{exc}; a whole video is 'video:<video_id>'") from None
        if ref.is_frame:
            raise RemovalError(f"'{text[:80]}' is one keyframe; a keyframe goes only with its video: "
                               f"name it 'video:{ref.video_id}'")
        return cls("image", ref.image_hash)

    def __str__(self) -> str:
        return f"{self.kind}:{self.key}"


@dataclass
class Removed:
    name: str
    orphaned: list[dict] = field(default_factory=list)  # the boxes that named it: id, label, where


def find(session: Session, target: Target) -> Video | Image | None:
    if target.kind == "video":
        return session.scalar(select(Video).where(Video.video_id == target.key))
    return session.scalar(select(Image).where(Image.content_hash == target.key))


def source_path(session: Session, target: Target) -> Path:
    """The file an item was indexed from (re-indexing reads it again)."""
    row = find(session, target)
    if row is None:
        raise RemovalError(f"no {target.kind} {target.key} in the collection")
    path = Path(row.path)
    if not path.is_file():
        raise RemovalError(f"its source file is gone ({path.name}); it cannot be indexed again")
    return path


def _boxes(session: Session, target: Target) -> list[dict]:
    column = Annotation.video_id if target.kind == "video" else Annotation.image_hash
    rows = session.scalars(select(Annotation).where(column == target.key).order_by(Annotation.id))
    return [{"id": a.id, "label": a.label.name, "target": a.target} for a in rows]


def owned_copy(layout: DataLayout, path: str) -> Path | None:
    """The source file when it is our own copy (an upload under uploads/, or an entry we extracted from a zip under
    archives/), else None: a file of the user's own folders is never ours to delete."""
    try:
        resolved = Path(path).resolve()
    except OSError:
        return None
    ours = (layout.uploads_dir.resolve(), layout.archives_dir.resolve())
    return resolved if any(resolved.is_relative_to(root) for root in ours) else None


def remove(session: Session, layout: DataLayout, target: Target) -> Removed:
    """Delete the rows (faces, objects and labels go with them), then the derived files and our own copies; commits.
    An image is named by its content, so every catalogued copy of that content goes."""
    row = find(session, target)
    if row is None:
        raise RemovalError(f"no {target.kind} {target.key} in the collection (deleted already?)")
    orphaned = _boxes(session, target)
    if isinstance(row, Video):
        rows, name = [row], row.video_id
    else:
        rows = list(session.scalars(select(Image).where(Image.content_hash == target.key)))
        name = ", ".join(r.display_name for r in rows)
    owned = [p for p in (owned_copy(layout, r.path) for r in rows) if p is not None]
    for r in rows:
        session.delete(r)
    session.commit()
    if target.kind == "video":
        remove_video_files(layout, target.key)
    else:
        (layout.image_feature_dir / f"{target.key}.npy").unlink(missing_ok=True)
    for path in owned:
        path.unlink(missing_ok=True)
    return Removed(name, orphaned)
