"""Reading a query from a request (page or API) and running it: one path for both."""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from flask import current_app, g, request, url_for
from PIL import Image as PILImage
from sqlalchemy import select

from app import boxes, query_images, services
from app.boxes import image_row
from app.items import BadItemRef, ItemRef
from app.models import Keyframe, Video
from app.numbers import finite
from app.query_images import query_image_dir
from app.safe_files import UnsafeFile
from app.search import (
    Hit,
    Options,
    Outcome,
    QueryError,
    format_time,
    parse_box,
    parse_k,
    parse_min_score,
    parse_weight,
)
from app.store import files_match
from app.uploads import read_image
from app.words import parse as parse_words

log = logging.getLogger("framefinder.query")


@dataclass
class QueryInfo:
    """What the user asked, echoed back on the results page."""

    kind: str = ""
    text: str = ""
    events: list[str] = field(default_factory=list)
    like: str = ""
    box: str = ""
    image_id: str = ""  # a kept query image (app.query_images): ?image=<id> reproduces the query
    image_url: str = ""  # where the page shows it
    options: Options = field(default_factory=Options)
    text_weight: float = 0.5
    gap: float = 10.0
    target: str = "frames"  # a region searches whole frames, or the detected objects (target=objects)


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


MAX_PERSON_CHARS = 100


def read_person() -> str | None:
    person = (request.values.get("person") or "").strip() or None
    if person is not None and len(person) > MAX_PERSON_CHARS:
        raise QueryError(f"person is {len(person)} characters long; names are at most {MAX_PERSON_CHARS}")
    return person


def check_person(opts: Options) -> None:
    """An unknown person named as a filter is a clear error, not an empty page."""
    if opts.person:
        from app.face_search import check_person as known

        with services.sessions()() as session:
            known(session, opts.person)


def read_objects() -> tuple:
    """`objects=person>=2,car>=1`: conditions on the detected objects (app.object_filter)."""
    raw = request.values.get("objects") or ""
    if not raw.strip():
        return ()
    if len(raw) > 1000:
        raise QueryError("objects: at most 1,000 characters")
    from app.object_filter import ObjectFilterError, parse_conditions

    with services.sessions()() as session:
        try:
            return parse_conditions(raw, session)
        except ObjectFilterError as exc:
            raise QueryError(str(exc)) from None


def read_options() -> Options:
    if request.values.get("score_mode", "abs") not in ("abs", "rel"):
        raise QueryError("score_mode must be abs (cosine x 100) or rel (relative to the best result)")
    return Options(objects=read_objects(), k=parse_k(request.values.get("k")),
                   min_score=parse_min_score(request.values.get("min_score")),
                   relative=request.values.get("score_mode", "abs") == "rel",
                   video=request.values.get("video") or None, folder=request.values.get("folder") or None,
                   label=request.values.get("label") or None, person=read_person(),
                   group_by_video=_flag("group"), collapse_shots=_flag("collapse"),
                   index_params=read_index_params(),
                   picture_weight=parse_weight(request.values.get("picture_weight"), "picture_weight"),
                   words_weight=parse_weight(request.values.get("words_weight"), "words_weight"))


def parse_ref(text: str, what: str) -> ItemRef:
    try:
        return ItemRef.parse(text)
    except BadItemRef as exc:
        raise QueryError(f"{what}: {exc}") from None


def _like_vector(like: str):
    """The stored vector of a collection item ('<video_id>@<frame_idx>' or 'image:<content_hash>')."""
    ref = parse_ref(like, "more like this")
    snap = services.collection().snapshot()
    if snap is None:
        raise QueryError("the collection has no index yet")
    entry = snap.find(ref)
    if entry is None:
        raise QueryError(f"unknown item '{ref}' for 'more like this'")
    return snap.vector(entry)


def has_query() -> bool:
    return any(request.values.get(k) for k in ("q", "like", "q1", "region_of", "image", "image_id", "person")) \
        or "image" in request.files


# What a search page URL carries: every option of the form, and the kept image's id instead of its bytes.
URL_KEYS = ("q", "k", "min_score", "score_mode", "video", "folder", "label", "person", "objects", "target", "mode",
            "group", "collapse", "text_weight", "box",
            "like", "region_of", "nprobe", "ef", "rerank", "q1", "q2", "q3", "q4", "q5", "gap", "picture_weight",
            "words_weight")


URL_DEFAULTS = {"k": "100", "min_score": "0", "score_mode": "abs", "text_weight": "0.5", "picture_weight": "1",
                "words_weight": "1"}  # left out of URLs


def _query_images_root():
    return query_image_dir(current_app.extensions["layout"].data_dir)


def keep_upload() -> str | None:
    """An uploaded query image, checked and kept; its id (None when no file came)."""
    upload = request.files.get("image")
    if upload is None or not (upload.filename or upload.content_length):
        return None
    data = upload.read()
    read_image(data)  # a bad file is a 400 here, before anything is kept
    return query_images.put(_query_images_root(), data)


def query_url() -> str:
    """The GET address of the query a form POSTed (post/redirect/get: reload, bookmark, back and forward)."""
    params = {k: request.form[k] for k in URL_KEYS if request.form.get(k) and request.form[k] != URL_DEFAULTS.get(k)}
    image_id = keep_upload() or request.form.get("image_id")
    if image_id:
        params["image"] = image_id
    return url_for("search.index", **params)


def kept_image(image_id: str) -> bytes:
    try:
        return query_images.get(_query_images_root(), image_id)
    except query_images.QueryImageGone as exc:
        raise QueryError(str(exc)) from None


PERSON_IN_TEXT = re.compile(r'(?:^|\s)person:\s*(?:"([^"]{1,100})"|(\S{1,100}))', re.IGNORECASE)


def split_person(text: str) -> tuple[str, str | None]:
    """'person:Ana' (or person:"Ana Lima") in the query text is the person filter; the rest is the query."""
    match = PERSON_IN_TEXT.search(text)
    if match is None:
        return text, None
    return (text[:match.start()] + " " + text[match.end():]).strip(), (match.group(1) or match.group(2)).strip()


def run_query() -> tuple[Outcome, QueryInfo]:
    searcher = services.searcher()
    text, person = split_person((request.values.get("q") or "").strip())
    info = QueryInfo(options=read_options(), text=text, like=request.values.get("like", ""),
                     box=request.values.get("box", ""))
    info.options.person = person or info.options.person
    check_person(info.options)
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
        searcher.sequence(events if len(events) >= 2 else [], info.gap, info.options, outcome)
    else:
        t0 = time.perf_counter()
        text_vec = image_vec = None
        upload = request.files.get("image")
        kept = request.values.get("image") or request.values.get("image_id")
        if upload is not None and (upload.filename or upload.content_length):
            image = read_image(upload.read())
            image_vec = searcher.encode_image(image, parse_box(info.box, image.width, image.height))
            info.kind = "image"
        elif kept:
            image = read_image(kept_image(kept))
            image_vec = searcher.encode_image(image, parse_box(info.box, image.width, image.height))
            info.kind, info.image_id = "image", kept
        elif request.values.get("region_of"):
            image_vec = searcher.encode_image(region_pixels(parse_ref(request.values["region_of"], "region_of"),
                                                            info.box))
            info.kind = "image"
        elif info.like:
            image_vec = _like_vector(info.like)
            info.kind = "like"
        if not info.text and image_vec is None and info.options.person:
            return _person_only(info, outcome, started)
        target = request.values.get("target") or "frames"
        if target not in ("frames", "objects"):
            raise QueryError("target must be frames (whole frames) or objects (the detected objects)")
        if target == "objects":
            if image_vec is None or info.text:
                raise QueryError("searching objects takes an image or a region, without text")
            info.kind, info.target = "objects", "objects"
            outcome.timing_ms["encode"] = (time.perf_counter() - t0) * 1000
            services.region_searcher().search(image_vec, info.options, allowed_refs(info.options), outcome)
            outcome.timing_ms["total"] = (time.perf_counter() - started) * 1000
            return outcome, info
        if image_vec is None:  # words and picture, fused (app.fusion)
            info.kind = "text"
            searcher.search_text(info.text, info.options, outcome)
            return _finished(outcome, info, started)
        if info.text:
            text_vec = searcher.encode_text(info.text, outcome.notices)
            info.kind = "combined"
            if parse_words(info.text).required:
                outcome.notices.append("With an image, the words are mixed into the picture query: quoted phrases, "
                                       "ocr: and asr: are searched as words only without an image.")
        try:
            info.text_weight = min(1.0, max(0.0, float(request.values.get("text_weight", 0.5))))
        except ValueError:
            raise QueryError("text_weight must be a number between 0 and 1") from None
        query = searcher.combine(text_vec, image_vec, info.text_weight)
        outcome.timing_ms["encode"] = (time.perf_counter() - t0) * 1000
        searcher.search(query, info.options, outcome)
    return _finished(outcome, info, started)


def _finished(outcome: Outcome, info: QueryInfo, started: float) -> tuple[Outcome, QueryInfo]:
    outcome.timing_ms["total"] = (time.perf_counter() - started) * 1000
    log.info("query kind=%s text=%r k=%d results=%d encode_ms=%.1f search_ms=%.1f total_ms=%.1f", info.kind,
             info.text[:80], info.options.k, len(outcome.hits) or len(outcome.moments),
             outcome.timing_ms.get("encode", 0), outcome.timing_ms.get("search", 0), outcome.timing_ms["total"])
    return outcome, info


def _person_only(info: QueryInfo, outcome: Outcome, started: float) -> tuple[Outcome, QueryInfo]:
    """Just 'person: NAME': that person's frames and images, closest to the person's average face first."""
    from app.face_search import FaceOutcome, person_centroid

    faces = services.face_searcher()
    with services.sessions()() as session:
        centroid = person_centroid(session, info.options.person)
    model = faces.model()
    found = faces.search_vectors(centroid, info.options, allowed_refs(info.options), True, model, FaceOutcome())
    outcome.hits = [h.hit for h in found.hits]
    outcome.faces = {h.hit.entry.item: h for h in found.hits}
    outcome.timing_ms.update(found.timing_ms)
    outcome.timing_ms["total"] = (time.perf_counter() - started) * 1000
    info.kind = "person"
    return outcome, info


def allowed_refs(opts: Options) -> set[ItemRef] | None:
    """The items the filters of `opts` let through (None: no filter), for searches outside the CLIP index."""
    snap = services.collection().snapshot()
    if snap is None:
        return None
    rows = services.searcher()._allowed(snap, opts)
    return None if rows is None else {snap.entry(int(r)).ref for r in rows}


def item_url(item: ItemRef | str) -> str:
    """The picture of an item: the keyframe of a frame, or the image."""
    return ref_url("media.item_picture", item)


def ref_url(endpoint: str, ref: ItemRef | str) -> str:
    """url_for(endpoint, ref=ref) for the hundreds of results of one answer: url_for costs about 40 µs a call (200
    of them were 4 ms of a 1M-keyframe text query), so the route is built once a request and each ref is quoted by
    the route's own converter, as url_for would."""
    parts = g.setdefault("ref_url_parts", {})
    if endpoint not in parts:
        sentinel = "REFURL0"
        prefix, found, suffix = url_for(endpoint, ref=sentinel).partition(sentinel)
        converter = current_app.url_map.converters["item"](current_app.url_map)
        parts[endpoint] = (prefix, suffix, converter) if found else None
    built = parts[endpoint]
    if built is None:  # the route has no plain <item:ref> part to fill in
        return url_for(endpoint, ref=ref)
    prefix, suffix, converter = built
    return prefix + converter.to_url(ref) + suffix


def _label_key(entry) -> tuple[str, int] | None:
    """Whose action and concept labels a result shows: its shot's, or the image's."""
    if entry.video_id is None:
        return ("image", entry.db_id)
    return ("shot", entry.shot_id) if entry.shot_id is not None else None


def prefetch_labels(hits) -> None:
    """The labels of all these hits in one query, kept for this request: hit_json then asks nothing more (call it
    before turning a list of hits into JSON; a hit not prefetched costs one query of its own)."""
    from app.concepts import top_labels

    known = g.setdefault("concept_labels", {})
    keys = {k for k in (_label_key(h.entry) for h in hits) if k is not None and k not in known}
    if not keys:
        return
    with services.sessions()() as session:
        by_shot, by_image = top_labels(session, [i for kind, i in keys if kind == "shot"],
                                       [i for kind, i in keys if kind == "image"])
    for kind, i in keys:
        known[(kind, i)] = (by_shot if kind == "shot" else by_image).get(i, [])


def hit_json(hit: Hit) -> dict:
    """A result as the API and pages show it. `n` is the keyframe's number in the current revision (the AI
    Challenge file name); `item` is what stays the same across re-indexing. `labels`: the best three action and
    concept labels of its shot (or image), with their scores (app.concepts)."""
    e = hit.entry
    key = _label_key(e)
    if key is not None and key not in g.get("concept_labels", {}):
        prefetch_labels([hit])
    return {"item": e.item, "video_id": e.video_id, "frame_idx": e.frame_idx, "n": e.n, "pts_time": e.pts_time,
            "timestamp": format_time(e.pts_time), "score": round(hit.score, 6), "name": e.name,
            "picture_url": item_url(e.ref), "page_url": ref_url("media.item_page", e.ref),
            "labels": g.concept_labels.get(key, []) if key is not None else [],
            "why": [_why_json(w, e) for w in hit.why], "moment": hit.moment,
            "moment_timestamp": format_time(hit.moment)}


def _why_json(why: dict, entry) -> dict:
    """A matched line as results show it: speech links to its second in the video."""
    from app.views.faces import box_pct  # (faces imports this module)

    out = dict(why)
    if why["source"] == "ocr":
        out["pct"] = box_pct(why["box"], (1, 1))  # the box is in fractions of the picture
    if why["source"] == "asr" and entry.video_id is not None:
        out["timestamp"] = format_time(why.get("time"))
        out["page_url"] = url_for("media.item_page", ref=entry.ref, t=round(why.get("time") or 0.0, 2))
    return out


def moment_json(m) -> dict:
    """A sequence match: its events in order, and the seconds between consecutive ones."""
    hits = [hit_json(h) for h in m.hits]
    gaps = [round(b["moment"] - a["moment"], 2) for a, b in zip(hits, hits[1:], strict=False)]
    return {"video_id": m.video_id, "score": round(m.score / len(hits), 6), "hits": hits, "gaps_s": gaps}


def _brief(video_id: str, k: Keyframe) -> dict:
    ref = ItemRef.frame(video_id, k.frame_idx)
    return {"item": str(ref), "n": k.n, "frame_idx": k.frame_idx, "pts_time": k.pts_time,
            "timestamp": format_time(k.pts_time), "picture_url": item_url(ref),
            "page_url": url_for("media.item_page", ref=ref)}


NEIGHBOURS = 6


def item_record(ref: ItemRef) -> dict:
    """An item with what its page shows: for a frame its video, shot and neighbouring keyframes."""
    with services.sessions()() as session:
        if not ref.is_frame:
            row = image_row(session, ref)
            if row is None:
                raise LookupError(f"no image with content {ref.image_hash} in the collection")
            return {"item": str(ref), "name": row.display_name, "picture_url": item_url(ref),
                    "page_url": url_for("media.item_page", ref=ref), "width": row.width,
                    "height": row.height, "video_id": None, "previous": [], "next": []}
        video = session.scalar(select(Video).where(Video.video_id == ref.video_id))
        if video is None:
            raise LookupError(f"unknown video id '{ref.video_id}'")
        kf = session.scalar(select(Keyframe).where(Keyframe.video_pk == video.id,
                                                   Keyframe.frame_idx == ref.frame_idx))
        if kf is None:
            raise LookupError(f"video '{ref.video_id}' has no keyframe at frame {ref.frame_idx}")
        near = session.scalars(select(Keyframe).where(Keyframe.video_pk == video.id,
                                                      Keyframe.n.between(kf.n - NEIGHBOURS, kf.n + NEIGHBOURS))
                               .order_by(Keyframe.n)).all()
        shot = kf.shot
        return {**_brief(video.video_id, kf), "video_id": video.video_id, "name": video.video_id,
                "video": {"fps": video.fps, "frames": video.frames, "duration": video.duration,
                          "source": video.source, "width": video.width, "height": video.height,
                          "name": Path(video.path).name,
                          "url": url_for("media.video_file", video_id=video.video_id)
                          if video.source == "video" else None},
                "shot": {"shot": shot.shot, "start_frame": shot.start_frame, "end_frame": shot.end_frame}
                if shot else None,
                "previous": [_brief(video.video_id, k) for k in near if k.n < kf.n],
                "next": [_brief(video.video_id, k) for k in near if k.n > kf.n]}


def item_words(ref: ItemRef, record: dict, raw_moment: str | None = None) -> dict:
    """The OCR lines of an item (boxes as fractions and in percent of its picture) and, for a frame, the speech
    from a minute before to a minute after its moment (`raw_moment` seconds, else the keyframe's time); a bad
    moment is a ValueError saying why."""
    from app.text_search import ocr_lines_of, transcript_near
    from app.views.faces import box_pct

    said = moment = record.get("pts_time")
    if raw_moment not in (None, "") and record.get("video"):
        # speech may go on after the last frame, and a stored duration may fall a hair short of its end: the
        # player starts at the end then, and the transcript still marks the line said at that second
        said = finite(raw_moment, "t", 0, 1e7) + 0.0
        moment = min(said, max(record["video"]["duration"] or 0.0, 0.0))
    with services.sessions()() as session:
        ocr = [{"text": line.text, "confidence": round(line.confidence, 4), "box": [line.x, line.y, line.w, line.h],
                "pct": box_pct((line.x, line.y, line.w, line.h), (1, 1))}
               for line in ocr_lines_of(session, ref)]
        speech = [{"text": line.text, "start": line.start_s, "end": line.end_s, "timestamp": format_time(line.start_s),
                   "confidence": round(line.confidence, 4), "now": line.start_s - 0.5 <= said <= line.end_s + 0.5}
                  for line in transcript_near(session, ref.video_id, said)] if ref.is_frame else []
    return {"ocr": ocr, "speech": speech, "moment": moment}


def keyframe_relpath(ref: ItemRef) -> str | None:
    """A frame's keyframe JPEG path relative to the data directory, found through the catalogue; None also
    while the files on disk are of another revision than the catalogue's (a re-index is switching them)."""
    with services.sessions()() as session:
        row = session.execute(select(Keyframe.image_path, Video.content_hash).join(Video)
                              .where(Video.video_id == ref.video_id, Keyframe.frame_idx == ref.frame_idx)).first()
    if row is None or not files_match(current_app.extensions["layout"], ref.video_id, row.content_hash):
        return None
    return row.image_path


def region_pixels(ref: ItemRef, raw_box: str) -> PILImage.Image:
    """The stored picture of an item, cropped to a box given in the item's source pixels (as boxes are)."""
    with services.sessions()() as session:
        try:
            target = boxes.resolve_ref(session, current_app.extensions["layout"], ref)
        except boxes.AnnotationError as exc:
            raise QueryError(str(exc)) from None
    box = parse_box(raw_box, target.width, target.height)
    try:
        picture = target.pixels()
    except UnsafeFile as exc:
        raise QueryError(f"the picture of '{ref}' cannot be read: {exc}") from None
    return picture.crop(target.on_picture(box)) if box else picture
