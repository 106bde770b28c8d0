"""Serving keyframes, images and videos: always looked up in the catalogue, never a user path."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, current_app, render_template, send_file
from sqlalchemy import select

from app import services
from app.models import Image, Video
from app.views.query import keyframe_file, keyframe_record

bp = Blueprint("media", __name__)
CACHE_SECONDS = 7 * 24 * 3600


@bp.get("/keyframes/<video_id>/<int:n>.jpg")
def keyframe_image(video_id: str, n: int):
    path = keyframe_file(video_id, n)
    if path is None:
        abort(404, description=f"no keyframe {n} in video '{video_id}'")
    return send_file(path, max_age=CACHE_SECONDS)


@bp.get("/images/<int:image_id>")
def image_file(image_id: int):
    with services.sessions()() as session:
        row = session.get(Image, image_id)
    if row is None or not Path(row.path).is_file():
        abort(404, description="no such image")
    return send_file(row.path, max_age=CACHE_SECONDS)


@bp.get("/video/<video_id>")
def video_file(video_id: str):
    """The video, with HTTP Range support (conditional=True) so players can seek: the browser-playable
    proxy where the indexer made one (the original's codec is one browsers lack), else the original."""
    with services.sessions()() as session:
        row = session.scalar(select(Video).where(Video.video_id == video_id))
    if row is None or row.source != "video":
        abort(404, description=f"no playable video '{video_id}'")
    proxy = current_app.extensions["layout"].proxy_path(row.video_id)
    if proxy.is_file():
        return send_file(proxy, mimetype="video/mp4", conditional=True, max_age=CACHE_SECONDS)
    if not Path(row.path).is_file():
        abort(404, description=f"the file of video '{video_id}' is gone")
    return send_file(row.path, conditional=True, max_age=CACHE_SECONDS)


@bp.get("/keyframe/<video_id>/<int:n>")
def keyframe_page(video_id: str, n: int):
    try:
        record = keyframe_record(video_id, n)
    except LookupError as exc:
        abort(404, description=str(exc))
    return render_template("keyframe.html", kf=record)
