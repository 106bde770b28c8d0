"""The search page: text, image (upload, webcam, paste, region), combined and sequence queries."""
from __future__ import annotations

import json

from flask import Blueprint, redirect, render_template, request, url_for

from app import services
from app.search import QueryError
from app.uploads import read_image
from app.views.api import submission_csv
from app.views.faces import box_pct, face_hit_json, face_query
from app.views.query import (
    QueryInfo,
    has_query,
    hit_json,
    kept_image,
    moment_json,
    prefetch_labels,
    query_url,
    read_options,
    run_query,
)

bp = Blueprint("search", __name__)


@bp.route("/", methods=["GET", "POST"])
def index():
    """GET runs the query in the URL. A POSTed form (it may carry an image file) is turned into that URL: the
    image is kept under its id, then a redirect (303) shows the results at an address that can be reloaded,
    bookmarked and shared."""
    if request.method == "POST" and has_query():
        try:
            return redirect(query_url(), code=303)
        except QueryError as exc:
            return render_template("index.html", info=QueryInfo(text=request.form.get("q", "")), outcome=None,
                                   results=[], error=str(exc)), 400
    if not has_query():
        return render_template("index.html", info=QueryInfo(), outcome=None, results=[], error=None)
    if request.values.get("mode") == "faces":
        return face_page()
    try:
        outcome, info = run_query()
    except QueryError as exc:
        try:
            options = read_options()
        except QueryError:
            options = QueryInfo().options
        info = QueryInfo(text=request.values.get("q", ""), options=options)
        return render_template("index.html", info=info, outcome=None, results=[], error=str(exc)), 400
    prefetch_labels(outcome.hits + [h for m in outcome.moments for h in m.hits])
    results = [hit_json(h) for h in outcome.hits]
    for r in results:
        if r["item"] in outcome.faces:  # person: NAME alone: where the person is in each picture
            r["face_boxes"] = _face_boxes(face_hit_json(outcome.faces[r["item"]], [0]), outcome.faces[r["item"]])
    moments = [moment_json(m) for m in outcome.moments]
    export = {"csv": submission_csv(outcome.hits or [h for m in outcome.moments for h in m.hits[:1]]),
              "json": json.dumps({"results": results, "moments": moments, "timing_ms": outcome.timing_ms})}
    groups = group_results(results) if info.options.group_by_video else []
    if info.image_id:
        info.image_url = url_for("media.query_image", image_id=info.image_id)
    return render_template("index.html", info=info, outcome=outcome, results=results, moments=moments,
                           groups=groups, export=export, error=None)


def _face_boxes(r: dict, hit) -> list[dict]:
    """A result's matched faces as boxes to draw over its picture."""
    return [{"pct": box_pct(f["box"], hit.size), "score": f["score"], "query": f["query_face"], "person": f["person"]}
            for f in r["faces"]]


def face_page():
    """Face mode: the kept photo with its faces to pick; once picked, who is where."""
    info = QueryInfo(kind="faces", image_id=request.values.get("image", ""))
    try:
        info.options = read_options()
        if not info.image_id:
            raise QueryError("choose a photo (file, webcam or paste), then 'Find these faces'")
        image = read_image(kept_image(info.image_id))
        chosen_raw = ",".join(v for v in request.values.getlist("face") if v)
        out = face_query(image, info.image_id, chosen_raw, None, pick_first=False)
    except QueryError as exc:
        return render_template("index.html", info=info, outcome=None, results=[], error=str(exc)), 400
    info.image_url = url_for("media.query_image", image_id=info.image_id)
    if not out.chosen:  # the slider shows the level the search will start from
        info.options.min_score = round(services.face_searcher().model().match_threshold * 100)
    elif request.values.get("min_score") in (None, "") and not info.options.relative:
        info.options.min_score = round(out.floor * 100)
    results = []
    prefetch_labels([h.hit for h in out.hits])
    for h in out.hits:
        r = face_hit_json(h, out.chosen)
        r["face_boxes"] = _face_boxes(r, h)
        if len(out.chosen) > 1:
            r["page_url"] = url_for("media.item_page", ref=h.hit.entry.ref, face_query=info.image_id,
                                    faces=",".join(map(str, out.chosen)))
        results.append(r)
    out.timing_ms["encode"] = out.timing_ms.get("detect", 0) + out.timing_ms.get("embed", 0)  # the page's timing line
    photo = out.photo
    picker = [{"index": f.index, "pct": box_pct(f.box, photo.size), "chosen": f.index in out.chosen}
              for f in photo.faces]
    export = {"csv": submission_csv([h.hit for h in out.hits]),
              "json": json.dumps({"results": results, "timing_ms": out.timing_ms})}
    return render_template("index.html", info=info, outcome=out, results=results, moments=[], groups=[],
                           export=export, error=None, picker=picker, face_mode=True)


def group_results(results: list[dict]) -> list[dict]:
    """Results under one header per video (or image), in the order of each group's best result."""
    groups: dict[str, dict] = {}
    for r in results:
        key = r["video_id"] or r["name"]
        g = groups.setdefault(key, {"key": key, "is_video": r["video_id"] is not None, "results": [],
                                    "best": r["score"]})
        g["results"].append(r)
        g["best"] = max(g["best"], r["score"])
    return list(groups.values())
