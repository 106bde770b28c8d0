"""Machine boxes (detections): the API the annotation page uses to accept, reject and restore them, each detection's
crop, and /categories (the label hierarchy with counts and sample crops).

Authentication as /api/annotations: the session cookie with a CSRF token in X-CSRFToken, or a personal token
(Authorization: Bearer ...). POSTs need the admin or annotator role.
"""
from __future__ import annotations

import io

from flask import Blueprint, current_app, jsonify, render_template, request, send_file
from flask_login import current_user
from werkzeug.exceptions import NotFound

from app import boxes, categories, csrf, detections, services
from app.boxes import AnnotationError
from app.models import Detection, User
from app.safe_files import UnsafeFile
from app.settings import TRUE_WORDS
from app.views.auth import require_role

bp = Blueprint("detections", __name__)
csrf.exempt(bp)  # checked per call by require_role: session calls need the token, bearer-token calls do not
WRITERS = ("admin", "annotator")


@bp.errorhandler(AnnotationError)
def detection_error(exc: AnnotationError):
    if not request.path.startswith("/api/"):
        raise NotFound(str(exc))
    return jsonify({"error": str(exc), "status": exc.status}), exc.status


def _layout():
    return current_app.extensions["layout"]


def _user(session) -> User:
    return session.get(User, current_user.id)


@bp.get("/api/detections")
def listing():
    if current_app.config.get("SEARCH_REQUIRES_LOGIN") and not current_user.is_authenticated:
        return jsonify({"error": "log in, or send Authorization: Bearer <token>", "status": 401}), 401
    if not request.args.get("item"):
        raise AnnotationError("say which item: ?item=<video_id>@<frame_idx> or ?item=image:<content_hash>")
    ref = boxes.parse_item(request.args["item"])
    with services.sessions()() as session:
        boxes.resolve_ref(session, _layout(), ref)  # 404 for an item that is not catalogued
        rows = detections.for_item(session, ref)
    return jsonify({"item": str(ref), "detections": rows, "count": len(rows)})


@bp.post("/api/detections/<int:detection_id>/accept")
@require_role(*WRITERS)
def accept(detection_id: int):
    with services.sessions()() as session:
        d, a = detections.accept(session, _layout(), _user(session), detection_id)
        item = a.target
        return jsonify({"detection": detections.as_json(d, item), "annotation": boxes.as_json(a)}), 201


@bp.post("/api/detections/<int:detection_id>/reject")
@require_role(*WRITERS)
def reject(detection_id: int):
    with services.sessions()() as session:
        d = detections.reject(session, detection_id)
        return jsonify({"detection": detections.as_json(d, str(detections.ref_of(session, d)))})


@bp.post("/api/detections/<int:detection_id>/restore")
@require_role(*WRITERS)
def restore(detection_id: int):
    with services.sessions()() as session:
        d = detections.restore(session, detection_id)
        return jsonify({"detection": detections.as_json(d, str(detections.ref_of(session, d)))})


@bp.get("/detections/<int:detection_id>/crop.jpg")
def crop(detection_id: int):
    with services.sessions()() as session:
        d = session.get(Detection, detection_id)
        if d is None:
            raise NotFound(f"no detection {detection_id}")
        try:
            target = detections.target_of(session, _layout(), d)
        except AnnotationError as exc:
            raise NotFound(str(exc)) from None
        box = target.on_picture(tuple(detections.whole_box(d, target)))
    try:
        piece = target.pixels().crop(box)
    except UnsafeFile as exc:
        raise NotFound(str(exc)) from None
    piece.thumbnail((320, 320))
    buf = io.BytesIO()
    piece.convert("RGB").save(buf, "JPEG", quality=85)
    buf.seek(0)
    return send_file(buf, mimetype="image/jpeg", max_age=60)


def _visible(nodes: list[dict]) -> list[dict]:
    """Only the categories with detections (in themselves or below)."""
    return [{**n, "children": _visible(n["children"])} for n in nodes if n["total"] > 0]


def _count_nodes(nodes: list[dict]) -> int:
    return sum(1 + _count_nodes(n["children"]) for n in nodes)


@bp.get("/categories")
def index():
    show_empty = (request.args.get("empty") or "").lower() in TRUE_WORDS
    with services.sessions()() as session:
        parents = categories.hierarchy(session)
        counts = detections.label_counts(session)
        best = detections.best_per_label(session)
    nodes = categories.tree(parents, counts)
    detections.add_samples(nodes, best)
    all_nodes, shown = _count_nodes(nodes), _visible(nodes)
    return render_template("categories.html", nodes=nodes if show_empty else shown, show_empty=show_empty,
                           empty_count=all_nodes - _count_nodes(shown), total=sum(counts.values()),
                           labels=len(counts))
