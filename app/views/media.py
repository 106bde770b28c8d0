"""Serving keyframes, images and videos: always looked up in the catalogue, never a user path."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, current_app, render_template, request, url_for
from sqlalchemy import select

from app import query_images, services
from app.boxes import image_row
from app.items import ItemRef
from app.models import Video
from app.query_images import query_image_dir
from app.safe_files import UnsafeFile, open_beneath, open_source, send_opened
from app.views.query import item_record, item_words, keyframe_relpath

bp = Blueprint("media", __name__)
CACHE_SECONDS = 7 * 24 * 3600


def _layout():
    return current_app.extensions["layout"]


def _opened(opener, *args):
    try:
        return opener(*args)
    except UnsafeFile as exc:
        abort(404, description=str(exc))


@bp.get("/item/<item:ref>/picture")
def item_picture(ref: ItemRef):
    """The keyframe JPEG of a frame, or the image file of an image."""
    if ref.is_frame:
        rel = keyframe_relpath(ref)
        if rel is None:
            abort(404, description=f"no keyframe at frame {ref.frame_idx} of video '{ref.video_id}'")
        handle, st = _opened(open_beneath, _layout().data_dir, rel)
        return send_opened(handle, st, Path(rel).name, CACHE_SECONDS)
    with services.sessions()() as session:
        row = image_row(session, ref)
    if row is None:
        abort(404, description="no such image")
    handle, st = _opened(open_source, row)
    return send_opened(handle, st, Path(row.path).name, CACHE_SECONDS)


@bp.get("/query-image/<image_id>")
def query_image(image_id: str):
    """A kept query image (see app.query_images), for the search page's preview."""
    try:
        data = query_images.get(query_image_dir(_layout().data_dir), image_id)
    except query_images.QueryImageGone as exc:
        abort(404, description=str(exc))
    return Response(data, mimetype=_sniff(data),
                    headers={"Cache-Control": "private, max-age=3600"})


def _sniff(data: bytes) -> str:
    """The picture's type from its first bytes (the kept file has no name)."""
    for magic, mime in ((b"\xff\xd8", "image/jpeg"), (b"\x89PNG", "image/png"), (b"RIFF", "image/webp"),
                        (b"BM", "image/bmp"), (b"GIF8", "image/gif")):
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


@bp.get("/video/<video_id>")
def video_file(video_id: str):
    """The video, with HTTP Range support (conditional=True) so players can seek: the browser-playable
    proxy where the indexer made one (the original's codec is one browsers lack), else the original."""
    with services.sessions()() as session:
        row = session.scalar(select(Video).where(Video.video_id == video_id))
    if row is None or row.source != "video":
        abort(404, description=f"no playable video '{video_id}'")
    layout = _layout()
    proxy = layout.proxy_path(row.video_id)
    if proxy.exists():
        handle, st = _opened(open_beneath, layout.data_dir, proxy.relative_to(layout.data_dir))
        return send_opened(handle, st, proxy.name, CACHE_SECONDS, mimetype="video/mp4")
    handle, st = _opened(open_source, row)
    return send_opened(handle, st, Path(row.path).name, CACHE_SECONDS)


@bp.get("/item/<item:ref>")
def item_page(ref: ItemRef):
    try:
        record = item_record(ref)
    except LookupError as exc:
        abort(404, description=str(exc))
    return render_template("keyframe.html", kf=record, matrix=_face_matrix(ref, record), objects=_objects(ref, record),
                           words=_item_words(ref, record))


def _item_words(ref: ItemRef, record: dict) -> dict:
    """`?t=SECONDS` (a speech match's link) is the moment the page starts the video at and marks in the speech."""
    try:
        return item_words(ref, record, request.args.get("t"))
    except ValueError as exc:
        abort(400, description=str(exc))


def _objects(ref: ItemRef, record: dict) -> list[dict]:
    """The detector's boxes on this item (not rejected), each a link that searches the collection's objects for it."""
    import math

    from app.models import Detection, on_item
    from app.views.faces import box_pct

    with services.sessions()() as session:
        rows = session.execute(select(Detection.label, Detection.score, Detection.x, Detection.y, Detection.w,
                                      Detection.h).where(on_item(Detection, ref), Detection.status != "rejected")
                               .order_by(Detection.score.desc()).limit(30)).all()
    size = (record["video"]["width"], record["video"]["height"]) if record.get("video") else \
        (record["width"], record["height"])
    out = []
    for r in rows:
        left, top = math.floor(r.x), math.floor(r.y)
        right, bottom = min(math.ceil(r.x + r.w), size[0] or 10**6), min(math.ceil(r.y + r.h), size[1] or 10**6)
        box = [left, top, max(1, right - left), max(1, bottom - top)]
        out.append({"label": r.label, "score": r.score, "pct": box_pct((r.x, r.y, r.w, r.h), size),
                    "search_url": url_for("search.index", region_of=str(ref), box=",".join(map(str, box)),
                                          target="objects")})
    return out


def _face_matrix(ref: ItemRef, record: dict) -> dict | None:
    """With ?face_query=<kept photo>&faces=0,1 (a several-people result's link): the similarity of each chosen face of
    the photo to each face of this item, and the pairs the search matched."""
    from app.face_search import item_matrix, parse_choice, read_photo
    from app.search import QueryError
    from app.uploads import read_image
    from app.views.faces import box_pct
    from app.views.query import kept_image

    image_id, raw = request.args.get("face_query"), request.args.get("faces")
    if not image_id or not raw:
        return None
    faces = services.face_searcher()
    try:
        model = faces.model()
        photo = faces.photos.get(image_id, lambda: read_photo(model, read_image(kept_image(image_id))))
        chosen = parse_choice(raw, photo, [])
    except QueryError as exc:
        return {"error": str(exc)}
    query = model.embed(photo.rgb, [photo.faces[i].detected for i in chosen])
    with services.sessions()() as session:
        m = item_matrix(session, ref, query)
    size = (record["video"]["width"], record["video"]["height"]) if record.get("video") else \
        (record["width"], record["height"])
    return {"chosen": chosen, "similarity": m.similarity, "assigned": set(m.assigned),
            "faces": [{"pct": box_pct(f.box, size), "person": f.person} for f in m.faces]}
