"""JSON API used by the pages' JavaScript, the tests and other tools. Errors are JSON 4xx."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app import services, weights_notice
from app.items import ItemRef
from app.search import QueryError
from app.views.query import hit_json, item_record, item_words, moment_json, prefetch_labels, run_query

bp = Blueprint("api", __name__, url_prefix="/api")


def submission_csv(hits: list) -> str:
    """AI Challenge submission lines: video_id,frame_idx, no header (video keyframes only)."""
    return "".join(f"{h.entry.video_id},{h.entry.frame_idx}\n" for h in hits if h.entry.video_id is not None)


@bp.route("/search", methods=["GET", "POST"])
def search():
    try:
        outcome, info = run_query()
    except QueryError as exc:
        return jsonify({"error": str(exc), "status": 400}), 400
    if request.values.get("format") == "csv":
        return Response(submission_csv(outcome.hits), mimetype="text/csv",
                        headers={"Content-Disposition": "attachment; filename=submission.csv"})
    snap = services.collection().snapshot()
    notice = weights_notice(snap.bundle.meta) if snap is not None else None
    prefetch_labels(outcome.hits + [h for m in outcome.moments for h in m.hits])
    results = [hit_json(h) for h in outcome.hits]
    for r in results:  # an objects search (or person: NAME) says where in each picture it matched
        boxed = outcome.faces.get(r["item"])
        if boxed is not None:
            key = "objects" if info.kind == "objects" else "faces"
            r[key] = [{"box": [round(v, 1) for v in m.box], "score": round(m.score, 6),
                       ("detection_id" if key == "objects" else "face_id"): m.face_id,
                       ("label" if key == "objects" else "person"): m.person} for m in boxed.faces]
    body = {"results": results, "timing_ms": outcome.timing_ms,
            "notices": outcome.notices + ([notice] if notice else []), "kind": info.kind}
    if info.kind == "sequence":
        body["moments"] = [moment_json(m) for m in outcome.moments]
    return jsonify(body)


@bp.get("/items/<item:ref>")
def item(ref: ItemRef):
    try:
        record = item_record(ref)
        return jsonify({**record, "words": item_words(ref, record)})
    except LookupError as exc:
        return jsonify({"error": str(exc), "status": 404}), 404
