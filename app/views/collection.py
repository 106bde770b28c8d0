"""What the collection holds, and taking items out of it or indexing them again.

    GET    /collection                    videos and images with their counts, the model and the index
    GET    /collection/videos/<video_id>  one video's shots and keyframes
    POST   /collection/delete, /collection/reindex    (forms; a job, then its page)
    DELETE /api/items/<target>            target: video:<video_id> or image:<content_hash> -> 202 {"job": id}
    POST   /api/items/<target>/reindex

Anyone who may search sees the listing; deleting and re-indexing need a role upload_roles names. Both run as jobs
(app.job_run) so they wait their turn behind an ingest and take the collection lock like one.
"""
from __future__ import annotations

from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from app import jobs, services
from app.job_worker import job_worker
from app.jobs import FileResult, JobError
from app.models import Annotation, Image, Keyframe, Shot, TextLine, Video
from app.numbers import is_id
from app.removal import RemovalError, Target, find, owned_copy
from app.views.auth import can_upload, require_uploader
from app.views.uploads import job_json

bp = Blueprint("collection", __name__)
PER_PAGE = 100


def _page(name: str) -> int:
    raw = request.args.get(name, "1")
    return int(raw) if is_id(raw, 6) and int(raw) > 0 else 1


def _index_facts() -> dict:
    snap = services.collection().snapshot()
    if snap is None:
        return {}
    meta = snap.bundle.meta
    files = [p for p in (current_app.extensions["layout"].index_dir / str(snap.bundle.generation)).glob("*")
             if p.is_file()] if snap.bundle.generation else []
    return {"model": meta.get("model"), "pretrained": meta.get("pretrained"),
            "type": meta.get("params", {}).get("type", "flat"), "vectors": snap.size,
            "generation": snap.bundle.generation, "bytes": sum(p.stat().st_size for p in files)}


@bp.get("/collection")
@bp.get("/api/collection")
def index():
    """The page, or the same listing as JSON (`/api/collection?vpage=&ipage=`, 100 videos and 100 images a page)."""
    vpage, ipage = _page("vpage"), _page("ipage")
    with services.sessions()() as session:
        kf_count = (select(Keyframe.video_pk, func.count(Keyframe.id).label("n")).group_by(Keyframe.video_pk)
                    .subquery())
        shot_count = select(Shot.video_pk, func.count(Shot.id).label("n")).group_by(Shot.video_pk).subquery()
        totals = {"videos": session.scalar(select(func.count(Video.id))) or 0,
                  "images": session.scalar(select(func.count(Image.id))) or 0,
                  "keyframes": session.scalar(select(func.count(Keyframe.id))) or 0,
                  "hours": (session.scalar(select(func.sum(Video.duration))) or 0.0) / 3600,
                  "words": _words_facts(session)}
        rows = session.execute(
            select(Video.video_id, Video.path, Video.duration, Video.size, Video.indexed_at,
                   func.coalesce(kf_count.c.n, 0), func.coalesce(shot_count.c.n, 0))
            .outerjoin(kf_count, kf_count.c.video_pk == Video.id)
            .outerjoin(shot_count, shot_count.c.video_pk == Video.id)
            .order_by(Video.indexed_at.desc(), Video.id.desc()).limit(PER_PAGE).offset((vpage - 1) * PER_PAGE)).all()
        videos = [{"video_id": v[0], "origin": _origin(v[1]), "duration": v[2] or 0.0, "size": v[3],
                   "indexed_at": v[4], "keyframes": v[5], "shots": v[6]} for v in rows]
        images = session.scalars(select(Image).order_by(Image.indexed_at.desc(), Image.id.desc())
                                 .limit(PER_PAGE).offset((ipage - 1) * PER_PAGE)).all()
        image_rows = [{"ref": str(i.ref), "name": i.display_name, "size": i.size, "width": i.width,
                       "height": i.height, "indexed_at": i.indexed_at, "hash": i.content_hash,
                       "origin": _origin(i.path)} for i in images]
    listing = {"totals": totals, "index": _index_facts(), "videos": videos, "images": image_rows,
               "vpage": vpage, "ipage": ipage, "vpages": max(1, -(-totals["videos"] // PER_PAGE)),
               "ipages": max(1, -(-totals["images"] // PER_PAGE))}
    if request.path.startswith("/api/"):
        for row in videos + image_rows:
            row["indexed_at"] = row["indexed_at"].isoformat(timespec="seconds") if row["indexed_at"] else None
        return jsonify(listing)
    return render_template("collection.html", **listing, can_edit=can_upload())


def _words_facts(session) -> dict:
    """What OCR and speech have read: lines, items read, and by which models (app.text_ingest)."""
    lines = dict(session.execute(select(TextLine.source, func.count(TextLine.id)).group_by(TextLine.source)).all())
    read = (session.scalar(select(func.count(Video.id)).where(Video.ocr_model.is_not(None))) or 0) + \
        (session.scalar(select(func.count(Image.id)).where(Image.ocr_model.is_not(None))) or 0)
    models = {source: sorted({m for m in session.scalars(select(TextLine.model).where(TextLine.source == source)
                                                           .distinct().limit(5))})
              for source in ("ocr", "asr")}
    return {"ocr_lines": lines.get("ocr", 0), "asr_segments": lines.get("asr", 0), "items_read": read,
            "videos_heard": session.scalar(select(func.count(Video.id)).where(Video.asr_model.is_not(None))) or 0,
            "ocr_models": models["ocr"], "asr_models": models["asr"]}


def _origin(path: str) -> str:
    """'upload' when the file is our copy (deleting the item deletes it), 'folder' when it is the user's own."""
    return "upload" if owned_copy(current_app.extensions["layout"], path) is not None else "folder"


@bp.get("/collection/videos/<video_id>")
def video(video_id: str):
    with services.sessions()() as session:
        row = session.scalar(select(Video).where(Video.video_id == video_id))
        if row is None:
            abort(404, description=f"there is no video {video_id[:100]} in the collection (deleted?)")
        shots = [(s.shot, s.start_frame, s.end_frame) for s in row.shots]
        keyframes = [{"n": k.n, "frame": k.frame_idx, "time": k.pts_time, "shot": k.shot.shot if k.shot else None,
                      "ref": str(k.ref)} for k in row.keyframes]
        boxes = session.scalar(select(func.count(Annotation.id)).where(Annotation.video_id == video_id)) or 0
        facts = {"video_id": row.video_id, "duration": row.duration, "fps": row.fps, "frames": row.frames,
                 "size": row.size, "width": row.width, "height": row.height, "indexed_at": row.indexed_at,
                 "source": row.source, "boxes": boxes, "origin": _origin(row.path)}
    return render_template("collection_video.html", video=facts, shots=shots, keyframes=keyframes,
                           can_edit=can_upload())


def _queue(kind: str, text: str) -> int:
    target = Target.parse(text)
    with services.sessions()() as session:
        if find(session, target) is None:
            raise RemovalError(f"there is no {target.kind} {target.key[:100]} in the collection (deleted already?)")
    jobs.refuse_repeat(services.sessions(), kind, [str(target)])
    job_id = jobs.create(services.sessions(), kind, current_user.id, targets=[str(target)],
                         files=[FileResult(str(target), "waiting")])
    worker = job_worker(current_app)
    if worker is not None:
        worker.wake()
    return job_id


def _api(kind: str, target: str):
    try:
        job_id = _queue(kind, target)
    except RemovalError as exc:
        status = 404 if "there is no" in str(exc) else 400
        return jsonify({"error": str(exc), "status": status}), status
    except JobError as exc:
        return jsonify({"error": str(exc), "status": exc.status}), exc.status
    body = job_json(jobs.get(services.sessions(), job_id), True)
    body["url"] = url_for("uploads.job_page", job_id=job_id)
    return jsonify(body), 202


@bp.route("/api/items/<target>", methods=["GET", "DELETE"])
def delete_api(target: str):
    """DELETE here; a GET is the item API's (GET /api/items/<item>), which this rule shadows: it answers as that view
    does, and a name that is no item is a 404 (as without this rule), not a 405."""
    if request.method != "DELETE":  # GET, and the HEAD Flask adds to every GET rule: never a delete
        from app.items import BadItemRef, ItemRef
        from app.views.api import item as item_view

        try:
            ref = ItemRef.parse(target)
        except BadItemRef:
            abort(404, description=f"no item '{target[:100]}'")
        return item_view(ref)
    return _delete(target)


@require_uploader
def _delete(target: str):
    return _api("delete", target)


@bp.post("/api/items/<target>/reindex")
@require_uploader
def reindex_api(target: str):
    return _api("reindex", target)


def _form(kind: str):
    from app import csrf

    csrf.protect()  # the blueprint is exempt from the global check for its bearer-token API; its forms are not
    try:
        job_id = _queue(kind, request.form.get("target", ""))
    except (RemovalError, JobError) as exc:
        status = getattr(exc, "status", 400)
        return render_template("error.html", status=status, message=str(exc)), status
    return redirect(url_for("uploads.job_page", job_id=job_id))


@bp.post("/collection/delete")
@require_uploader
def delete_form():
    return _form("delete")


@bp.post("/collection/reindex")
@require_uploader
def reindex_form():
    return _form("reindex")
