"""Bounding-box annotations: validation, storage with optimistic locking, and who may change what.

Boxes are [x, y, w, h] in the item's source pixels (the video frame at full size, or the image)
and must lie inside it with a positive size. An item is named by an ItemRef: a frame
'<video_id>@<frame_idx>' or an image 'image:<content_hash>'. Every function validates
everything first and writes nothing on error.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from PIL import Image as PILImage
from sqlalchemy import and_, exists, func, not_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from app.items import BadItemRef, ItemRef
from app.models import Annotation, Image, Keyframe, Label, User, Video
from app.numbers import MAX_ID, finite, is_id
from app.paths import DataLayout
from app.safe_files import UnsafeFile, open_beneath, open_source, read_picture

MAX_BOX = 1_000_000  # pixels: far beyond any image, far below any overflow
MAX_LABEL = 100
MAX_NOTE = 2000


class AnnotationError(ValueError):
    """Bad input or a refused change; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Target:
    """The item a box is on. Boxes are in `width` x `height`: the source video's pixels for a frame (whatever
    --keyframe-size made the stored keyframe), the image's own pixels for an image."""

    ref: ItemRef
    width: int
    height: int
    picture_size: tuple[int, int]  # pixels of the stored picture (the keyframe JPEG, or the image)
    pixels: Callable[[], PILImage.Image]  # reads the stored picture (links refused), for crops
    label: str  # how a page names it: 'L01_V001 · frame 1234' or the image's name
    file_name: str  # the stored picture, relative to the collection (COCO's file_name): never a server path

    @property
    def name(self) -> str:
        return str(self.ref)

    def on_picture(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A box in source pixels as (left, top, right, bottom) on the stored picture."""
        pw, ph = self.picture_size
        sx, sy = pw / self.width, ph / self.height
        x, y, w, h = box
        left, top = min(round(x * sx), pw - 1), min(round(y * sy), ph - 1)  # a 1-px box at the edge stays inside
        return left, top, min(max(round((x + w) * sx), left + 1), pw), min(max(round((y + h) * sy), top + 1), ph)


def _picture_size(layout: DataLayout, rel: str, ref: ItemRef) -> tuple[int, int]:
    try:
        handle, _ = open_beneath(layout.data_dir, rel)
        with handle, PILImage.open(handle) as im:
            return im.size
    except UnsafeFile as exc:
        raise AnnotationError(f"the picture of {ref} cannot be used: {exc}", 404) from None
    except OSError as exc:
        raise AnnotationError(f"the picture of {ref} is damaged ({exc})", 404) from None


def resolve_frame(session: Session, layout: DataLayout, ref: ItemRef) -> Target:
    row = session.execute(select(Keyframe.image_path, Video.width, Video.height).join(Video)
                          .where(Video.video_id == ref.video_id, Keyframe.frame_idx == ref.frame_idx)).first()
    if row is None:
        raise AnnotationError(f"video '{ref.video_id}' has no keyframe at frame {ref.frame_idx}", 404)
    shown = _picture_size(layout, row.image_path, ref)
    width, height = (row.width, row.height) if row.width and row.height else shown
    rel = row.image_path
    return Target(ref, width, height, shown, lambda: read_picture(open_beneath(layout.data_dir, rel)),
                  f"{ref.video_id} · frame {ref.frame_idx}", rel)


def image_row(session: Session, ref: ItemRef) -> Image | None:
    """The catalogued image with this content (the first one catalogued, when copies sit at several paths)."""
    return session.scalar(select(Image).where(Image.content_hash == ref.image_hash).order_by(Image.id).limit(1))


def resolve_image(session: Session, ref: ItemRef) -> Target:
    row = image_row(session, ref)
    if row is None:
        raise AnnotationError(f"no image with content {ref.image_hash} in the collection", 404)
    return Target(ref, row.width, row.height, (row.width, row.height), lambda: read_picture(open_source(row)),
                  row.display_name, row.display_name)


def resolve_ref(session: Session, layout: DataLayout, ref: ItemRef) -> Target:
    return resolve_frame(session, layout, ref) if ref.is_frame else resolve_image(session, ref)


def parse_item(raw) -> ItemRef:
    try:
        return ItemRef.parse(raw)
    except BadItemRef as exc:
        raise AnnotationError(str(exc)) from None


def resolve(session: Session, layout: DataLayout, payload: dict) -> Target:
    if "item" not in payload:
        raise AnnotationError("say what is annotated: item '<video_id>@<frame_idx>' or 'image:<content_hash>'")
    return resolve_ref(session, layout, parse_item(payload["item"]))


def target_of(session: Session, layout: DataLayout, a: Annotation) -> Target:
    ref = a.ref
    if ref is None:
        raise AnnotationError(f"annotation {a.id} is orphaned: {a.target}", 404)
    return resolve_ref(session, layout, ref)


def check_box(raw, target: Target) -> tuple[int, int, int, int]:
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        raise AnnotationError("box must be [x, y, w, h]")
    try:
        x, y, w, h = (round(finite(v, "each box number", -MAX_BOX, MAX_BOX)) for v in raw)
    except ValueError as exc:
        raise AnnotationError(f"box must be four finite numbers [x, y, w, h] ({exc})") from None
    if w <= 0 or h <= 0:
        raise AnnotationError(f"box [{x}, {y}, {w}, {h}] must have a positive width and height")
    if x < 0 or y < 0 or x + w > target.width or y + h > target.height:
        raise AnnotationError(f"box [{x}, {y}, {w}, {h}] lies outside the {target.width}x{target.height} image "
                              f"of {target.name}")
    return x, y, w, h


def check_label(raw) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise AnnotationError("label must be a non-empty text")
    label = " ".join(raw.split())
    if len(label) > MAX_LABEL:
        raise AnnotationError(f"label is {len(label)} characters long; the limit is {MAX_LABEL}")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in label):
        raise AnnotationError("label must not contain control characters or lone surrogates")
    if not any(unicodedata.category(c)[0] in "LNPS" for c in label):
        raise AnnotationError("label must contain a visible character")
    return label


def check_note(raw) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise AnnotationError("note must be text")
    if len(raw) > MAX_NOTE:
        raise AnnotationError(f"note is {len(raw)} characters long; the limit is {MAX_NOTE}")
    if any(unicodedata.category(c) == "Cs" for c in raw):
        raise AnnotationError("note must be valid text (it holds a lone surrogate)")
    return raw


def label_row(session: Session, name: str) -> Label:
    """The label, created if new; two annotators adding the same new label at once both get it."""
    row = session.scalar(select(Label).where(Label.name == name))
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = Label(name=name)
            session.add(row)
    except IntegrityError:  # someone else created it meanwhile
        row = session.scalar(select(Label).where(Label.name == name))
    return row


def create(session: Session, layout: DataLayout, user: User, payload: dict, commit: bool = True) -> Annotation:
    if not isinstance(payload, dict):
        raise AnnotationError("send a JSON object")
    target = resolve(session, layout, payload)
    x, y, w, h = check_box(payload.get("box"), target)
    label, note = check_label(payload.get("label")), check_note(payload.get("note"))
    a = Annotation(video_id=target.ref.video_id, frame_idx=target.ref.frame_idx, image_hash=target.ref.image_hash,
                   x=x, y=y, w=w, h=h,
                   label=label_row(session, label), note=note, author_id=user.id)
    session.add(a)
    if commit:
        session.commit()
    return a


def _owned(session: Session, user: User, annotation_id: int) -> Annotation:
    a = session.get(Annotation, annotation_id)
    if a is None:
        raise AnnotationError(f"no annotation {annotation_id}", 404)
    if user.role != "admin" and a.author_id != user.id:
        raise AnnotationError(f"annotation {annotation_id} belongs to {a.author.name}; only they or an admin "
                              f"may change it", 403)
    return a


def parse_version(raw) -> int | None:
    """The version a client edited: a JSON whole number (or the digits of a query parameter)."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or (isinstance(raw, str) and not is_id(raw)):
        raise AnnotationError("version must be a whole number (the 'version' of the stored record)")
    if not 0 <= int(raw) <= MAX_ID:
        raise AnnotationError("version is out of range")
    return int(raw)


def _check_version(a: Annotation, version) -> None:
    version = parse_version(version)
    if version is None:
        raise AnnotationError("send the version you edited (from the stored record), so that a change made by "
                              "someone else meanwhile is not overwritten")
    if version != a.version:
        raise AnnotationError(f"annotation {a.id} was changed meanwhile (now version {a.version}, by "
                              f"{a.author.name} or an admin); reload it and edit again", 409)


def update(session: Session, layout: DataLayout, user: User, annotation_id: int, payload: dict) -> Annotation:
    if not isinstance(payload, dict):
        raise AnnotationError("send a JSON object")
    a = _owned(session, user, annotation_id)
    _check_version(a, payload.get("version"))
    if "item" in payload and parse_item(payload["item"]) != a.ref:
        raise AnnotationError("a box stays on its item: delete it and draw it on the other one")
    box = check_box(payload["box"], target_of(session, layout, a)) if "box" in payload else None
    label = check_label(payload["label"]) if "label" in payload else None
    note = check_note(payload["note"]) if "note" in payload else None
    # Everything is read (the label row too) before the box changes, so nothing flushes early: one UPDATE,
    # one version step, and a concurrent edit shows as StaleDataError at the commit below, a 409.
    label_obj = label_row(session, label) if label is not None else None
    try:
        with session.no_autoflush:
            if box is not None:
                a.x, a.y, a.w, a.h = box
            if label_obj is not None:
                a.label = label_obj
            if note is not None:
                a.note = note
        session.commit()
    except StaleDataError:
        session.rollback()
        raise AnnotationError(f"annotation {annotation_id} was changed meanwhile; reload it and edit again",
                              409) from None
    return a


def delete(session: Session, user: User, annotation_id: int, version=None) -> None:
    version = parse_version(version)
    a = _owned(session, user, annotation_id)
    if version is not None:
        _check_version(a, version)
    session.delete(a)
    try:
        session.commit()
    except StaleDataError:
        session.rollback()
        raise AnnotationError(f"annotation {annotation_id} was changed meanwhile; reload it", 409) from None


def _frame_exists():
    return exists().where(Keyframe.video_pk == Video.id, Video.video_id == Annotation.video_id,
                          Keyframe.frame_idx == Annotation.frame_idx)


def _orphaned():
    """Boxes whose frame or image is not catalogued now (re-indexed away, pruned, or an old-form leftover)."""
    on_frame = and_(Annotation.video_id.is_not(None), not_(_frame_exists()))
    on_image = and_(Annotation.video_id.is_(None),
                    not_(exists().where(Image.content_hash == Annotation.image_hash)))
    return or_(on_frame, on_image)


def search(session: Session, video_id: str | None = None, label: str | None = None, author: str | None = None,
           item: ItemRef | None = None, orphaned: bool = False, limit: int = 5000) -> list[Annotation]:
    stmt = select(Annotation).join(Label).join(User).order_by(Annotation.id)
    if video_id:
        stmt = stmt.where(Annotation.video_id == video_id)
    if label:
        stmt = stmt.where(Label.name == label)
    if author:
        stmt = stmt.where(User.name == author)
    if item is not None and item.is_frame:
        stmt = stmt.where(Annotation.video_id == item.video_id, Annotation.frame_idx == item.frame_idx)
    elif item is not None:
        stmt = stmt.where(Annotation.video_id.is_(None), Annotation.image_hash == item.image_hash)
    if orphaned:
        stmt = stmt.where(_orphaned())
    return list(session.scalars(stmt.limit(limit)).unique())


def orphaned_ids(session: Session, ids: list[int]) -> set[int]:
    """Which of these boxes are orphaned (pages mark them)."""
    if not ids:
        return set()
    return set(session.scalars(select(Annotation.id).where(Annotation.id.in_(ids), _orphaned())))


def count_orphaned(session: Session) -> int:
    return int(session.scalar(select(func.count(Annotation.id)).where(_orphaned())) or 0)


def annotated_frames(session: Session, video_id: str) -> set[int]:
    """Frames of a video that carry boxes: a re-index keeps them as keyframes, so every box stays on its frame."""
    return set(session.scalars(select(Annotation.frame_idx).where(Annotation.video_id == video_id,
                                                                  Annotation.frame_idx.is_not(None))))


def _utc(moment: datetime) -> str:
    """ISO 8601 with its UTC offset, whichever database gave it back (SQLite returns naive datetimes)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def as_json(a: Annotation, orphaned: bool | None = None) -> dict:
    """A box as the API and pages show it; `box` is in the item's source pixels (see Target)."""
    out = {"id": a.id, "item": a.target, "video_id": a.video_id, "frame_idx": a.frame_idx,
           "image_hash": a.image_hash, "box": [a.x, a.y, a.w, a.h], "label": a.label.name, "note": a.note,
           "author": a.author.name, "version": a.version, "created": _utc(a.created_at),
           "updated": _utc(a.updated_at)}
    if orphaned is not None:
        out["orphaned"] = orphaned
    return out


def marked_json(session: Session, rows: list[Annotation]) -> list[dict]:
    """Boxes as the API and pages list them, each marked orphaned or not (one query for all of them)."""
    lost = orphaned_ids(session, [a.id for a in rows])
    return [as_json(a, a.id in lost) for a in rows]


def label_counts(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(select(Label.name, func.count(Annotation.id)).join(Annotation)
                           .group_by(Label.name).order_by(func.count(Annotation.id).desc(), Label.name))
    return [(name, count) for name, count in rows]


def all_labels(session: Session) -> list[str]:
    return list(session.scalars(select(Label.name).order_by(Label.name)))
