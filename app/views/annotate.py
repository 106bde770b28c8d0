"""Annotation pages: draw boxes on a keyframe or image, browse boxes by label, author and video."""
from __future__ import annotations

import io

from flask import Blueprint, abort, current_app, render_template, request, send_file, url_for
from flask_login import current_user

from app import boxes, detections, services
from app.boxes import AnnotationError
from app.items import ItemRef
from app.models import Annotation
from app.safe_files import UnsafeFile
from app.settings import TRUE_WORDS
from app.views.auth import require_role
from app.views.query import item_record, item_url

bp = Blueprint("annotate", __name__)


def _page(target: boxes.Target, neighbours: dict):
    with services.sessions()() as session:
        records = [boxes.as_json(a) for a in boxes.search(session, item=target.ref)]
        machine = detections.for_item(session, target.ref)  # machine boxes, beside (never instead of) human ones
        labels = boxes.all_labels(session)
    return render_template("annotate.html", target=target, picture_url=item_url(target.ref), boxes=records,
                           detections=machine, labels=labels, payload={"item": target.name}, neighbours=neighbours,
                           me={"name": current_user.name, "role": current_user.role})


@bp.get("/annotate/<item:ref>")
@require_role("admin", "annotator")
def item(ref: ItemRef):
    try:
        record = item_record(ref)
        with services.sessions()() as session:
            target = boxes.resolve_ref(session, current_app.extensions["layout"], ref)
    except (LookupError, AnnotationError) as exc:
        abort(404, description=str(exc))
    neighbours = {
        "previous": url_for("annotate.item", ref=record["previous"][-1]["item"]) if record["previous"] else None,
        "next": url_for("annotate.item", ref=record["next"][0]["item"]) if record["next"] else None,
    }
    return _page(target, neighbours)


@bp.get("/annotations")
def browse():
    label, author, video = (request.args.get(k) or None for k in ("label", "author", "video_id"))
    orphaned = (request.args.get("orphaned") or "").lower() in TRUE_WORDS
    with services.sessions()() as session:
        rows = boxes.search(session, video, label, author, orphaned=orphaned, limit=1000)
        counts = boxes.label_counts(session)
        items = boxes.marked_json(session, rows)
        orphan_count = boxes.count_orphaned(session)
    return render_template("annotations.html", items=items, counts=counts, orphan_count=orphan_count,
                           filters={"label": label or "", "author": author or "", "video_id": video or "",
                                    "orphaned": "1" if orphaned else ""})


@bp.get("/labels/<path:name>")
def label_page(name: str):
    with services.sessions()() as session:
        items = boxes.marked_json(session, boxes.search(session, label=name, limit=1000))
    return render_template("label.html", name=name, items=items)


@bp.get("/annotations/<int:annotation_id>/crop.jpg")
def crop(annotation_id: int):
    with services.sessions()() as session:
        a = session.get(Annotation, annotation_id)
        if a is None:
            abort(404, description=f"no annotation {annotation_id}")
        try:
            target = boxes.target_of(session, current_app.extensions["layout"], a)
        except AnnotationError as exc:
            abort(404, description=str(exc))
        box = target.on_picture((a.x, a.y, a.w, a.h))
    try:
        piece = target.pixels().crop(box)
    except UnsafeFile as exc:
        abort(404, description=str(exc))
    piece.thumbnail((320, 320))
    buf = io.BytesIO()
    piece.save(buf, "JPEG", quality=85)
    buf.seek(0)
    return send_file(buf, mimetype="image/jpeg", max_age=60)
