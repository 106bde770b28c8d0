"""The search page: text, image (upload, webcam, paste, region), combined and sequence queries."""
from __future__ import annotations

import json

from flask import Blueprint, render_template, request

from app.search import QueryError
from app.views.api import submission_csv
from app.views.query import QueryInfo, has_query, hit_json, read_options, run_query

bp = Blueprint("search", __name__)


@bp.route("/", methods=["GET", "POST"])
def index():
    if not has_query():
        return render_template("index.html", info=QueryInfo(), outcome=None, results=[], error=None)
    try:
        outcome, info = run_query()
    except QueryError as exc:
        try:
            options = read_options()
        except QueryError:
            options = QueryInfo().options
        info = QueryInfo(text=request.values.get("q", ""), options=options)
        return render_template("index.html", info=info, outcome=None, results=[], error=str(exc)), 400
    results = [hit_json(h) for h in outcome.hits]
    moments = [{"video_id": m.video_id, "score": m.score, "hits": [hit_json(h) for h in m.hits]}
               for m in outcome.moments]
    export = {"csv": submission_csv(outcome.hits or [h for m in outcome.moments for h in m.hits[:1]]),
              "json": json.dumps({"results": results, "moments": moments, "timing_ms": outcome.timing_ms})}
    return render_template("index.html", info=info, outcome=outcome, results=results, moments=moments,
                           export=export, error=None)
