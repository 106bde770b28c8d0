"""Face search: `POST /api/faces/search`, and the search page's face mode (pick faces on a photo, see who is where)."""
from __future__ import annotations

import time

from flask import Blueprint, jsonify, request

from app import services
from app.face_search import FaceOutcome, parse_choice, photo_with_box, read_photo
from app.search import QueryError
from app.uploads import read_image
from app.views.query import allowed_refs, check_person, hit_json, prefetch_labels, read_options

bp = Blueprint("faces", __name__, url_prefix="/api/faces")


def face_query(image, cache_key: str | None, raw_choice: str | None, raw_box: str | None,
               pick_first: bool = True) -> FaceOutcome:
    """Detect the photo's faces (kept for a few queries when the photo has an id), choose, search. `pick_first`:
    with several faces and none chosen, search for the largest (the API); otherwise only list the faces (the page
    asks the user to choose)."""
    faces = services.face_searcher()
    model = faces.model()
    started = time.perf_counter()
    if raw_box:
        photo = photo_with_box(model, image, raw_box)
    elif cache_key:
        photo = faces.photos.get(cache_key, lambda: read_photo(model, image))
    else:
        photo = read_photo(model, image)
    detect_ms = (time.perf_counter() - started) * 1000
    opts = read_options()
    check_person(opts)
    if not photo.faces:
        raise QueryError("no face found in this image")
    if not raw_choice and not raw_box and len(photo.faces) > 1 and not pick_first:
        return FaceOutcome(photo=photo, notices=list(photo.notices), timing_ms={"detect": detect_ms})
    notices: list[str] = []
    chosen = parse_choice(raw_choice, photo, notices)
    floor_given = request.values.get("min_score") not in (None, "")
    outcome = faces.search(photo, chosen, opts, allowed_refs(opts), floor_given)
    outcome.notices += notices
    outcome.timing_ms["detect"] = detect_ms
    outcome.timing_ms["total"] = (time.perf_counter() - started) * 1000
    return outcome


def box_pct(box, size) -> str:
    """A box as percentages of its picture (the page places it over the picture, whatever size it is shown at)."""
    w, h = max(size[0], 1), max(size[1], 1)
    return ",".join(f"{v:.3f}" for v in (box[0] / w * 100, box[1] / h * 100, box[2] / w * 100, box[3] / h * 100))


def face_hit_json(h, chosen: list[int]) -> dict:
    """A result with the faces it matched (boxes in the item's source pixels; `query_face` is the number of the query
    photo's face it matched, as in `faces`) and, for several people, the matrix."""
    body = {**hit_json(h.hit), "size": list(h.size),
            "faces": [{"face_id": m.face_id, "box": [round(v, 1) for v in m.box], "score": round(m.score, 6),
                       "query_face": chosen[m.query], "person": m.person, "person_id": m.person_id}
                      for m in h.faces]}
    if h.matrix is not None:
        body["matrix"] = {"rows": "query faces, in the order chosen", "columns": h.item_faces, "similarity": h.matrix}
    return body


def _results(out: FaceOutcome) -> list[dict]:
    prefetch_labels([h.hit for h in out.hits])
    return [face_hit_json(h, out.chosen) for h in out.hits]


def outcome_json(out: FaceOutcome) -> dict:
    photo = out.photo
    return {"faces": [{"index": f.index, "box": [round(v, 1) for v in f.box], "score": round(f.score, 4)}
                      for f in photo.faces] if photo else [],
            "chosen": out.chosen, "floor": round(out.floor, 4),
            "results": _results(out),
            "not_found": not out.hits and bool(out.chosen), "notices": out.notices,
            "timing_ms": {k: round(v, 1) for k, v in out.timing_ms.items()}}


@bp.post("/search")
def search():
    """multipart `image`; optional `face` (0, 0,1 or all) or `box` (x,y,w,h); `k`, `min_score`, `score_mode` and the
    search filters (video, folder, label, person)."""
    upload = request.files.get("image")
    try:
        if upload is None or not (upload.filename or upload.content_length):
            raise QueryError("send the photo as the multipart field 'image'")
        image = read_image(upload.read())
        out = face_query(image, None, request.values.get("face"), request.values.get("box"))
    except QueryError as exc:
        return jsonify({"error": str(exc), "status": 400}), 400
    return jsonify(outcome_json(out))
