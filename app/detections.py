"""Machine boxes on the annotation page: list the detections of an item, accept one (it becomes a human box), reject
it, or take a rejection back; and what the categories page counts.

A detection is never a human box. Accepting makes a human `Annotation` through app.boxes (the detection's label and
box, the accepting user as author) and links it, in one transaction: a second accept is refused (409), also when two
annotators press at once. A detection whose human box was deleted since counts as not accepted (it may be accepted
again). Re-detection replaces detections and never touches human boxes.
"""
from __future__ import annotations

import math

from sqlalchemy import and_, exists, func, not_, or_, select, update
from sqlalchemy.orm import Session

from app import boxes
from app.boxes import AnnotationError, Target
from app.items import ItemRef
from app.models import Annotation, Detection, Image, Keyframe, User, Video
from app.paths import DataLayout

SAMPLES = 4  # crops per category on the categories page


def _annotation_alive():
    return exists().where(Annotation.id == Detection.annotation_id)


def _accepted():
    """Accepted, and its human box is still there (deleting that box sets annotation_id NULL: the foreign key's ON
    DELETE SET NULL). A condition on the row alone, so that a concurrent change is seen when the row is written."""
    return and_(Detection.status == "accepted", Detection.annotation_id.is_not(None))


def _on_item(session: Session, ref: ItemRef):
    """The WHERE clause of an item's detections (a frame's keyframe, or the image with that content)."""
    if ref.is_frame:
        keyframe = select(Keyframe.id).join(Video).where(Video.video_id == ref.video_id,
                                                         Keyframe.frame_idx == ref.frame_idx)
        return Detection.keyframe_id.in_(keyframe.scalar_subquery())
    row = boxes.image_row(session, ref)
    return Detection.image_id == (row.id if row is not None else -1)


def status_of(d: Detection, alive: bool) -> str:
    """'accepted' only while its human box exists; an accepted detection whose box was deleted is 'new' again."""
    if d.status == "accepted":
        return "accepted" if alive and d.annotation_id is not None else "new"
    return d.status if d.status in ("new", "rejected") else "new"


def as_json(d: Detection, item: str, alive: bool = True) -> dict:
    status = status_of(d, alive)
    return {"id": d.id, "item": item, "label": d.label, "score": round(float(d.score), 4),
            "box": [round(float(v), 1) for v in d.box], "model": d.model, "status": status,
            "annotation_id": d.annotation_id if status == "accepted" else None, "machine": True}


def for_item(session: Session, ref: ItemRef) -> list[dict]:
    """An item's detections, best score first, each with its status."""
    rows = session.execute(select(Detection, _annotation_alive().label("alive")).where(_on_item(session, ref))
                           .order_by(Detection.score.desc(), Detection.id)).all()
    return [as_json(d, str(ref), bool(alive)) for d, alive in rows]


def _get(session: Session, detection_id: int) -> Detection:
    d = session.get(Detection, detection_id)
    if d is None:
        raise AnnotationError(f"no detection {detection_id}", 404)
    return d


def ref_of(session: Session, d: Detection) -> ItemRef:
    """The item a detection is on."""
    if d.keyframe_id is not None:
        row = session.execute(select(Video.video_id, Keyframe.frame_idx).join(Video)
                              .where(Keyframe.id == d.keyframe_id)).first()
        if row is not None:
            return ItemRef.frame(row.video_id, row.frame_idx)
    elif d.image_id is not None:
        digest = session.scalar(select(Image.content_hash).where(Image.id == d.image_id))
        if digest:
            return ItemRef.image(digest)
    raise AnnotationError(f"detection {d.id} is on no catalogued keyframe or image", 404)


def target_of(session: Session, layout: DataLayout, d: Detection) -> Target:
    return boxes.resolve_ref(session, layout, ref_of(session, d))


def whole_box(d: Detection, target: Target) -> list[int]:
    """The detection's box in whole source pixels, inside the picture (what a human box may be)."""
    left = min(max(0, math.floor(d.x + 0.5)), target.width - 1)
    top = min(max(0, math.floor(d.y + 0.5)), target.height - 1)
    right = min(max(left + 1, math.floor(d.x + d.w + 0.5)), target.width)
    bottom = min(max(top + 1, math.floor(d.y + d.h + 0.5)), target.height)
    return [left, top, right - left, bottom - top]


def accept(session: Session, layout: DataLayout, user: User, detection_id: int) -> tuple[Detection, Annotation]:
    """The detection as a human box by `user`, linked to it; 409 if it is accepted already (its box exists)."""
    d = _get(session, detection_id)
    target = target_of(session, layout, d)
    if d.status == "accepted" and d.annotation_id is not None and session.get(Annotation, d.annotation_id):
        raise AnnotationError(f"detection {detection_id} is accepted already: it is box {d.annotation_id}", 409)
    a = boxes.create(session, layout, user, {"item": target.name, "box": whole_box(d, target), "label": d.label,
                                             "note": ""}, commit=False)
    session.flush()
    # Only one accept wins: the row changes only if it is still not accepted (or its box is gone) at this moment.
    done = session.execute(update(Detection).where(Detection.id == detection_id, not_(_accepted()))
                           .values(status="accepted", annotation_id=a.id).execution_options(synchronize_session=False))
    if done.rowcount != 1:
        session.rollback()
        raise AnnotationError(f"detection {detection_id} was accepted meanwhile by someone else; reload", 409)
    session.commit()
    session.refresh(d)
    return d, a


def reject(session: Session, detection_id: int) -> Detection:
    """A machine box judged wrong: kept (greyed, hidden by default), restorable. An accepted one is a human box now:
    delete or correct that box instead (409)."""
    d = _get(session, detection_id)
    done = session.execute(update(Detection).where(Detection.id == detection_id, not_(_accepted()))
                           .values(status="rejected", annotation_id=None)
                           .execution_options(synchronize_session=False))
    if done.rowcount != 1:
        session.rollback()
        raise AnnotationError(f"detection {detection_id} is accepted: it is box {d.annotation_id} now; delete or "
                              f"correct that box instead", 409)
    session.commit()
    session.refresh(d)
    return d


def restore(session: Session, detection_id: int) -> Detection:
    """A rejected detection back to new (a no-op for one that is not rejected)."""
    d = _get(session, detection_id)
    session.execute(update(Detection).where(Detection.id == detection_id, Detection.status == "rejected")
                    .values(status="new").execution_options(synchronize_session=False))
    session.commit()
    session.refresh(d)
    return d


# The categories page


def label_counts(session: Session) -> dict[str, int]:
    """Detections per label, rejected ones left out."""
    rows = session.execute(select(Detection.label, func.count(Detection.id))
                           .where(or_(Detection.status.is_(None), Detection.status != "rejected"))
                           .group_by(Detection.label))
    return {label: int(n) for label, n in rows}


def best_per_label(session: Session, per_label: int = SAMPLES) -> dict[str, list[tuple[int, float]]]:
    """The best-scoring detections (id, score) of every label, rejected ones left out."""
    rank = func.row_number().over(partition_by=Detection.label,
                                  order_by=(Detection.score.desc(), Detection.id)).label("rank")
    inner = (select(Detection.id, Detection.label, Detection.score, rank)
             .where(or_(Detection.status.is_(None), Detection.status != "rejected")).subquery())
    out: dict[str, list[tuple[int, float]]] = {}
    for row in session.execute(select(inner.c.id, inner.c.label, inner.c.score).where(inner.c.rank <= per_label)
                               .order_by(inner.c.label, inner.c.score.desc(), inner.c.id)):
        out.setdefault(row.label, []).append((row.id, float(row.score)))
    return out


def add_samples(nodes: list[dict], best: dict[str, list[tuple[int, float]]], per_node: int = SAMPLES) -> None:
    """Each node of a categories.tree gets `samples`, its subtree's best detections (id, score), and `own_samples`,
    its own label's."""
    def walk(node: dict) -> list[tuple[int, float]]:
        node["own_samples"] = best.get(node["name"], [])[:per_node]
        pool = list(node["own_samples"])
        for child in node["children"]:
            pool.extend(walk(child))
        pool.sort(key=lambda p: (-p[1], p[0]))
        node["samples"] = pool[:per_node]
        return node["samples"]

    for n in nodes:
        walk(n)
