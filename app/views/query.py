"""Reading a query from a request (page or API) and running it: one path for both."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from flask import current_app, request, url_for
from PIL import Image as PILImage
from sqlalchemy import select

from app import services
from app.models import Image, Keyframe, Video
from app.numbers import MAX_ID, is_id
from app.safe_files import UnsafeFile, open_beneath, open_source, read_picture
from app.search import Hit, Options, Outcome, QueryError, parse_box, parse_k, parse_min_score
from app.store import files_match
from app.uploads import read_image

log = logging.getLogger("framefinder.query")


@dataclass
class QueryInfo:
    """What the user asked, echoed back on the results page."""

    kind: str = ""
    text: str = ""
    events: list[str] = field(default_factory=list)
    like: str = ""
    box: str = ""
    options: Options = field(default_factory=Options)
    text_weight: float = 0.5
    gap: float = 10.0


def _flag(name: str) -> bool:
    return request.values.get(name, "").lower() in ("1", "on", "true", "yes")


# Query-time index knobs (IVF lists probed, HNSW breadth, IVF-PQ candidates re-ranked) and their bounds.
INDEX_KNOBS = {"nprobe": ("nprobe", 1, 65536), "ef": ("efSearch", 1, 4096), "rerank": ("rerank", 0, 10000)}


def read_index_params() -> dict | None:
    params = {}
    for name, (key, low, high) in INDEX_KNOBS.items():
        raw = request.values.get(name)
        if raw in (None, ""):
            continue
        try:
            value = int(raw)
        except ValueError:
            raise QueryError(f"{name} must be a whole number") from None
        if not low <= value <= high:
            raise QueryError(f"{name} must be between {low} and {high}")
        params[key] = value
    return params or None


def read_options() -> Options:
    return Options(k=parse_k(request.values.get("k")), min_score=parse_min_score(request.values.get("min_score")),
                   relative=request.values.get("score_mode", "abs") == "rel",
                   video=request.values.get("video") or None, folder=request.values.get("folder") or None,
                   label=request.values.get("label") or None,
                   group_by_video=_flag("group"), collapse_shots=_flag("collapse"),
                   index_params=read_index_params())


def _like_vector(like: str):
    """'<video_id>/<n>' or 'image:<id>': the stored vector of a collection item."""
    snap = services.collection().snapshot()
    if snap is None:
        raise QueryError("the collection has no index yet")
    entry = snap.find(like)
    if entry is None:
        raise QueryError(f"unknown item '{like}' for 'more like this'")
    return snap.vector(entry)


def has_query() -> bool:
    return any(request.values.get(k) for k in ("q", "like", "q1", "region_of")) or "image" in request.files


def run_query() -> tuple[Outcome, QueryInfo]:
    searcher = services.searcher()
    info = QueryInfo(options=read_options(), text=(request.values.get("q") or "").strip(),
                     like=request.values.get("like", ""), box=request.values.get("box", ""))
    outcome = Outcome()
    started = time.perf_counter()
    events = [request.values.get(f"q{i}", "").strip() for i in range(1, 6)]
    events = [e for e in events if e]
    if events or request.values.get("q1") is not None:
        info.kind, info.events = "sequence", events
        try:
            info.gap = float(request.values.get("gap", 10))
        except ValueError:
            raise QueryError("the maximum gap must be a number of seconds") from None
        t0 = time.perf_counter()
        vecs = [searcher.encode_text(e, outcome.notices) for e in events] if len(events) >= 2 else []
        outcome.timing_ms["encode"] = (time.perf_counter() - t0) * 1000
        searcher.sequence(vecs, info.gap, info.options, outcome)
    else:
        t0 = time.perf_counter()
        text_vec = image_vec = None
        upload = request.files.get("image")
        if upload is not None and (upload.filename or upload.content_length):
            image = read_image(upload.read())
            image_vec = searcher.encode_image(image, parse_box(info.box, image.width, image.height))
            info.kind = "image"
        elif request.values.get("region_of"):
            image = keyframe_pixels(request.values["region_of"])
            image_vec = searcher.encode_image(image, parse_box(info.box, image.width, image.height))
            info.kind = "image"
        elif info.like:
            image_vec = _like_vector(info.like)
            info.kind = "like"
        if info.text or image_vec is None:
            text_vec = searcher.encode_text(info.text, outcome.notices)
            info.kind = "combined" if image_vec is not None else "text"
        try:
            info.text_weight = min(1.0, max(0.0, float(request.values.get("text_weight", 0.5))))
        except ValueError:
            raise QueryError("text_weight must be a number between 0 and 1") from None
        query = searcher.combine(text_vec, image_vec, info.text_weight)
        outcome.timing_ms["encode"] = (time.perf_counter() - t0) * 1000
        searcher.search(query, info.options, outcome)
    outcome.timing_ms["total"] = (time.perf_counter() - started) * 1000
    log.info("query kind=%s text=%r k=%d results=%d encode_ms=%.1f search_ms=%.1f total_ms=%.1f", info.kind,
             info.text[:80], info.options.k, len(outcome.hits) or len(outcome.moments),
             outcome.timing_ms.get("encode", 0), outcome.timing_ms.get("search", 0), outcome.timing_ms["total"])
    return outcome, info


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:04.1f}"


def item_url(item: str) -> str:
    """The picture of an item named '<video_id>/<n>' or 'image:<id>'."""
    if item.startswith("image:"):
        return url_for("media.image_file", image_id=int(item.split(":", 1)[1]))
    video_id, _, n = item.rpartition("/")
    return url_for("media.keyframe_image", video_id=video_id, n=int(n))


def hit_json(hit: Hit) -> dict:
    e = hit.entry
    url = item_url(e.item)
    return {"video_id": e.video_id, "n": e.n, "frame_idx": e.frame_idx, "pts_time": e.pts_time,
            "timestamp": format_time(e.pts_time), "score": round(hit.score, 6), "keyframe_url": url,
            "image_path": e.rel_path if e.video_id is not None else e.source_path,
            "item": e.item}


def keyframe_record(video_id: str, n: int) -> dict:
    """A keyframe with its video, shot and neighbours (previous and next keyframes)."""
    with services.sessions()() as session:
        video = session.scalar(select(Video).where(Video.video_id == video_id))
        if video is None:
            raise LookupError(f"unknown video id '{video_id}'")
        kf = session.scalar(select(Keyframe).where(Keyframe.video_pk == video.id, Keyframe.n == n))
        if kf is None:
            raise LookupError(f"video '{video_id}' has no keyframe {n}")
        near = session.scalars(select(Keyframe).where(Keyframe.video_pk == video.id,
                                                      Keyframe.n.between(n - 6, n + 6)).order_by(Keyframe.n)).all()
        shot = kf.shot

        def brief(k: Keyframe) -> dict:
            return {"n": k.n, "frame_idx": k.frame_idx, "pts_time": k.pts_time, "timestamp": format_time(k.pts_time),
                    "keyframe_url": url_for("media.keyframe_image", video_id=video_id, n=k.n)}

        return {"video_id": video_id, **brief(kf), "image_path": kf.image_path,
                "video": {"fps": video.fps, "frames": video.frames, "duration": video.duration,
                          "source": video.source, "width": video.width, "height": video.height,
                          "name": Path(video.path).name,
                          "url": url_for("media.video_file", video_id=video_id) if video.source == "video" else None},
                "shot": {"shot": shot.shot, "start_frame": shot.start_frame, "end_frame": shot.end_frame}
                if shot else None,
                "previous": [brief(k) for k in near if k.n < n], "next": [brief(k) for k in near if k.n > n]}


MAX_DB_ID = MAX_ID


def keyframe_relpath(video_id: str, n: int) -> str | None:
    """A keyframe's JPEG path relative to the data directory, found through the catalogue; None also while
    the files on disk are of another revision than the catalogue's (a re-index is switching them)."""
    if not 0 < n <= MAX_DB_ID:
        return None
    with services.sessions()() as session:
        row = session.execute(select(Keyframe.image_path, Video.content_hash).join(Video)
                              .where(Video.video_id == video_id, Keyframe.n == n)).first()
    if row is None or not files_match(current_app.extensions["layout"], video_id, row.content_hash):
        return None
    return row.image_path


def keyframe_pixels(item: str) -> PILImage.Image:
    """The stored keyframe '<video_id>/<n>' (or collection image 'image:<id>'), for a region drawn on it."""
    try:
        if item.startswith("image:") and is_id(item[6:]):
            with services.sessions()() as session:
                row = session.get(Image, int(item[6:])) if int(item[6:]) <= MAX_DB_ID else None
            if row is None:
                raise QueryError(f"unknown image '{item}'")
            return read_picture(open_source(row))
        video_id, _, n = item.rpartition("/")
        rel = keyframe_relpath(video_id, int(n)) if is_id(n) else None
        if rel is None:
            raise QueryError(f"unknown keyframe '{item}'")
        return read_picture(open_beneath(current_app.extensions["layout"].data_dir, rel))
    except UnsafeFile as exc:
        raise QueryError(f"the picture of '{item}' cannot be read: {exc}") from None
