"""/api/annotations: create, list, edit, delete, export and import boxes.

Authentication: the session cookie (with a CSRF token in X-CSRFToken) or a personal
token (Authorization: Bearer ...). No credentials: 401; wrong role or someone else's box: 403.
"""
from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, jsonify, request
from flask_login import current_user

from app import annotation_io, boxes, services
from app.boxes import AnnotationError
from app.models import User
from app.settings import TRUE_WORDS
from app.views.auth import require_role

bp = Blueprint("annotations_api", __name__, url_prefix="/api/annotations")
WRITERS = ("admin", "annotator")


@bp.errorhandler(AnnotationError)
def annotation_error(exc: AnnotationError):
    return jsonify({"error": str(exc), "status": exc.status}), exc.status


def _layout():
    return current_app.extensions["layout"]


def _user(session) -> User:
    return session.get(User, current_user.id)


def _json_body() -> dict:
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        raise AnnotationError("the JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise AnnotationError("send a JSON object (Content-Type: application/json)")
    return data


@bp.post("")
@require_role(*WRITERS)
def create():
    with services.sessions()() as session:
        a = boxes.create(session, _layout(), _user(session), _json_body())
        return jsonify(boxes.as_json(a)), 201


@bp.get("")
def listing():
    if current_app.config.get("SEARCH_REQUIRES_LOGIN") and not current_user.is_authenticated:
        return jsonify({"error": "log in, or send Authorization: Bearer <token>", "status": 401}), 401
    item = boxes.parse_item(request.args["item"]) if request.args.get("item") else None
    with services.sessions()() as session:
        rows = boxes.search(session, request.args.get("video_id"), request.args.get("label"),
                            request.args.get("author"), item, _orphaned_only())
        return jsonify({"annotations": boxes.marked_json(session, rows), "count": len(rows)})


@bp.patch("/<int:annotation_id>")
@require_role(*WRITERS)
def edit(annotation_id: int):
    with services.sessions()() as session:
        a = boxes.update(session, _layout(), _user(session), annotation_id, _json_body())
        return jsonify(boxes.as_json(a))


@bp.delete("/<int:annotation_id>")
@require_role(*WRITERS)
def remove(annotation_id: int):
    version = request.args.get("version")
    with services.sessions()() as session:
        boxes.delete(session, _user(session), annotation_id, version)
    return "", 204


def _orphaned_only() -> bool:
    return (request.args.get("orphaned") or "").lower() in TRUE_WORDS


@bp.get("/export")
def export():
    """Boxes that can be imported back; orphaned ones (frame or image no longer catalogued) only when asked
    for with orphaned=1, and then only them (their list, to re-attach by hand)."""
    fmt = request.args.get("format", "coco")
    with services.sessions()() as session:
        rows = boxes.search(session, request.args.get("video_id"), request.args.get("label"),
                            request.args.get("author"), orphaned=_orphaned_only(), limit=annotation_io.MAX_IMPORT)
        if not _orphaned_only():
            lost = boxes.orphaned_ids(session, [a.id for a in rows])
            rows = [a for a in rows if a.id not in lost]
        if fmt == "csv":
            return Response(annotation_io.to_csv(rows), mimetype="text/csv",
                            headers={"Content-Disposition": "attachment; filename=annotations.csv"})
        if fmt == "coco":
            doc = annotation_io.to_coco(session, _layout(), rows)
        elif fmt == "aic":
            doc = annotation_io.to_aic(session, _layout(), rows)
        else:
            raise AnnotationError("format must be coco, csv or aic")
    return Response(json.dumps(doc, indent=1), mimetype="application/json",
                    headers={"Content-Disposition": f"attachment; filename=annotations-{fmt}.json"})


@bp.post("/import")
@require_role(*WRITERS)
def import_file():
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise AnnotationError("upload a COCO .json or a .csv file as 'file'")
    data = upload.read()
    if upload.filename.lower().endswith(".csv"):
        records, where = annotation_io.records_from_csv(data), "row"
    elif upload.filename.lower().endswith(".json"):
        records, where = annotation_io.records_from_coco(data), "annotation"
    else:
        raise AnnotationError("upload a COCO .json or a .csv file")
    with services.sessions()() as session:
        count = annotation_io.import_records(session, _layout(), _user(session), records, where)
    return jsonify({"imported": count}), 201
