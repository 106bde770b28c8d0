"""Annotation pages: draw boxes on a keyframe or image, browse boxes by label, author and video."""
from __future__ import annotations

import io

from flask import Blueprint, abort, current_app, render_template, request, send_file, url_for
from flask_login import current_user

from app import boxes, services
from app.boxes import AnnotationError
from app.models import Annotation, Image
from app.safe_files import UnsafeFile
from app.views.auth import require_role
from app.views.query import keyframe_record

bp = Blueprint("annotate", __name__)


def _page(target: boxes.Target, picture_url: str, neighbours: dict, region_item: str):
    with services.sessions()() as session:
        records = [boxes.as_json(a) for a in boxes.search(session, target=target.name)]
        labels = boxes.all_labels(session)
    payload = {"keyframe": target.name} if target.video_id is not None else {"image": target.image_path}
    return render_template("annotate.html", target=target, picture_url=picture_url, boxes=records, labels=labels,
                           region_item=region_item,
                           payload=payload, neighbours=neighbours, me={"name": current_user.name,
                                                                       "role": current_user.role})


@bp.get("/annotate/<video_id>/<int:n>")
@require_role("admin", "annotator")
def keyframe(video_id: str, n: int):
    try:
        record = keyframe_record(video_id, n)
        with services.sessions()() as session:
            target = boxes.resolve_keyframe(session, current_app.extensions["layout"], f"{video_id}/{n}")
    except (LookupError, AnnotationError) as exc:
        abort(404, description=str(exc))
    neighbours = {
        "previous": url_for("annotate.keyframe", video_id=video_id, n=record["previous"][-1]["n"])
        if record["previous"] else None,
        "next": url_for("annotate.keyframe", video_id=video_id, n=record["next"][0]["n"]) if record["next"] else None,
    }
    return _page(target, record["keyframe_url"], neighbours, target.name)


@bp.get("/annotate/image/<int:image_id>")
@require_role("admin", "annotator")
def image(image_id: int):
    with services.sessions()() as session:
        row = session.get(Image, image_id)
        if row is None:
            abort(404, description="no such image")
        target = boxes.resolve_image(session, row.path)
    return _page(target, url_for("media.image_file", image_id=image_id), {"previous": None, "next": None},
                 f"image:{image_id}")


@bp.get("/annotations")
def browse():
    label, author, video = (request.args.get(k) or None for k in ("label", "author", "video_id"))
    with services.sessions()() as session:
        rows = boxes.search(session, video, label, author, limit=1000)
        counts = boxes.label_counts(session)
        items = [boxes.as_json(a) for a in rows]
    return render_template("annotations.html", items=items, counts=counts,
                           filters={"label": label or "", "author": author or "", "video_id": video or ""})


@bp.get("/labels/<path:name>")
def label_page(name: str):
    with services.sessions()() as session:
        items = [boxes.as_json(a) for a in boxes.search(session, label=name, limit=1000)]
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
        box = (a.x, a.y, a.x + a.w, a.y + a.h)
    try:
        piece = target.pixels().crop(box)
    except UnsafeFile as exc:
        abort(404, description=str(exc))
    piece.thumbnail((320, 320))
    buf = io.BytesIO()
    piece.save(buf, "JPEG", quality=85)
    buf.seek(0)
    return send_file(buf, mimetype="image/jpeg", max_age=60)
