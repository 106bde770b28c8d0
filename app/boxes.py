"""Bounding-box annotations: validation, storage with optimistic locking, and who may change what.

Boxes are [x, y, w, h] in the target image's own pixels (whatever size a page shows it at)
and must lie inside it with a positive size. A target is a keyframe '<video_id>/<n>' or an
image by its path in the collection. Every function validates everything first and writes
nothing on error.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

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
    video_id: str | None
    n: int | None
    image_path: str | None
    width: int
    height: int
    pixels: Callable[[], PILImage.Image]  # reads the picture (links refused), for crops

    @property
    def name(self) -> str:
        return f"{self.video_id}/{self.n}" if self.video_id is not None else self.image_path or ""


def resolve_keyframe(session: Session, layout: DataLayout, item: str) -> Target:
    video_id, _, n = str(item).rpartition("/")
    if not video_id or not is_id(n):
        raise AnnotationError(f"keyframe must be '<video_id>/<n>', not '{str(item)[:80]}'")
    rel = session.scalar(select(Keyframe.image_path).join(Video).where(Video.video_id == video_id,
                                                                       Keyframe.n == int(n)))
    if rel is None:
        raise AnnotationError(f"unknown keyframe '{video_id}/{n}'", 404)
    try:
        handle, _ = open_beneath(layout.data_dir, rel)
        with handle, PILImage.open(handle) as im:
            width, height = im.size
    except UnsafeFile as exc:
        raise AnnotationError(f"the picture of keyframe '{video_id}/{n}' cannot be used: {exc}", 404) from None
    except OSError as exc:
        raise AnnotationError(f"the picture of keyframe '{video_id}/{n}' is damaged ({exc})", 404) from None
    return Target(video_id, int(n), None, width, height, lambda: read_picture(open_beneath(layout.data_dir, rel)))


def resolve_image(session: Session, path: str) -> Target:
    row = session.scalar(select(Image).where(Image.path == str(path)))
    if row is None:
        raise AnnotationError(f"no image '{str(path)[:200]}' in the collection", 404)
    return Target(None, None, row.path, row.width, row.height, lambda: read_picture(open_source(row)))


def resolve(session: Session, layout: DataLayout, payload: dict) -> Target:
    if payload.get("keyframe") and payload.get("image"):
        raise AnnotationError("give either keyframe or image, not both")
    if payload.get("keyframe"):
        return resolve_keyframe(session, layout, payload["keyframe"])
    if payload.get("image"):
        return resolve_image(session, payload["image"])
    raise AnnotationError("say what is annotated: keyframe '<video_id>/<n>' or image '<path>'")


def target_of(session: Session, layout: DataLayout, a: Annotation) -> Target:
    return resolve_keyframe(session, layout, a.target) if a.video_id is not None else resolve_image(session, a.target)


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
    a = Annotation(video_id=target.video_id, n=target.n, image_path=target.image_path, x=x, y=y, w=w, h=h,
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


def search(session: Session, video_id: str | None = None, label: str | None = None, author: str | None = None,
           target: str | None = None, limit: int = 5000) -> list[Annotation]:
    stmt = select(Annotation).join(Label).join(User).order_by(Annotation.id)
    if video_id:
        stmt = stmt.where(Annotation.video_id == video_id)
    if label:
        stmt = stmt.where(Label.name == label)
    if author:
        stmt = stmt.where(User.name == author)
    if target:
        video, _, n = target.rpartition("/")
        if video and is_id(n):
            stmt = stmt.where(Annotation.video_id == video, Annotation.n == int(n))
        else:
            stmt = stmt.where(Annotation.image_path == target)
    return list(session.scalars(stmt.limit(limit)).unique())


def as_json(a: Annotation) -> dict:
    return {"id": a.id, "keyframe": a.target if a.video_id is not None else None,
            "image": a.image_path, "video_id": a.video_id, "n": a.n, "box": [a.x, a.y, a.w, a.h],
            "label": a.label.name, "note": a.note, "author": a.author.name, "version": a.version,
            "created": a.created_at.isoformat(), "updated": a.updated_at.isoformat()}


def label_counts(session: Session) -> list[tuple[str, int]]:
    from sqlalchemy import func

    rows = session.execute(select(Label.name, func.count(Annotation.id)).join(Annotation)
                           .group_by(Label.name).order_by(func.count(Annotation.id).desc(), Label.name))
    return [(name, count) for name, count in rows]


def all_labels(session: Session) -> list[str]:
    return list(session.scalars(select(Label.name).order_by(Label.name)))
