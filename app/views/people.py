"""People: the clusters of faces, named by annotators (page and API).

Anyone who may search sees the page; naming, merging, taking a face out and clustering again need the admin or
annotator role (forms with a CSRF token). Every change keeps the people's centroids current, so a name finds its
person again after a re-index. Bad input answers 4xx with the reason on the page, never a 500.
"""
from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from app import people as people_ops
from app import services
from app.models import Face, FaceData, Person
from app.numbers import is_id
from app.people import PeopleError, person_label
from app.views.auth import require_role

bp = Blueprint("people", __name__)
FACES_PER_PAGE = 200  # on one person's page
API_THUMBS = 6
API_MAX_PER_PAGE = 500


def _can_edit() -> bool:
    return current_user.is_authenticated and current_user.role in people_ops.WRITERS


def _page_number(raw: str | None) -> int:
    return int(raw) if raw and is_id(raw, 9) else 1


def _listing_page(error: str | None = None, status: int = 200):
    with services.sessions()() as session:
        listing = people_ops.listing(session, _page_number(request.args.get("page") or request.form.get("page")))
    return render_template("people.html", listing=listing, error=error, can_edit=_can_edit(),
                           person_label=person_label), status


@bp.get("/people")
def index():
    return _listing_page()


@bp.get("/people/<int:person_id>")
def person(person_id: int):
    page = _page_number(request.args.get("page"))
    with services.sessions()() as session:
        row = session.get(Person, person_id)
        if row is None:
            abort(404, description=f"there is no person {person_id} (clustered again meanwhile?)")
        count = session.scalar(select(func.count(Face.id)).where(Face.person_id == person_id)) or 0
        pages = max(1, -(-count // FACES_PER_PAGE))
        page = min(page, pages)
        faces = people_ops.person_faces(session, person_id, FACES_PER_PAGE, (page - 1) * FACES_PER_PAGE)
        name = row.name
    return render_template("person.html", person_id=person_id, name=name, label=person_label(person_id, name),
                           count=count, faces=faces, page=page, pages=pages, can_edit=_can_edit())


@bp.get("/faces/<int:face_id>/thumb.jpg")
def face_thumb(face_id: int):
    with services.sessions()() as session:
        thumb = session.get(FaceData, face_id)
        data = thumb.thumb if thumb is not None else None
    if data is None:
        abort(404, description=f"there is no face {face_id}")
    # face ids are never reused, so a face's thumbnail never changes
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


def _change(action):
    """Run a change; on success flash its message and go back where the form was, else show the reason (4xx)."""
    try:
        with services.sessions()() as session:
            message = action(session)
    except PeopleError as exc:
        return _listing_page(str(exc), exc.status)
    flash(message)
    back = request.form.get("back", "")
    if back.startswith("/people") and not back.startswith("//") and "\\" not in back:
        return redirect(back, 303)
    return redirect(url_for("people.index", page=request.form.get("page") or None), 303)


@bp.post("/people/name")
@require_role(*people_ops.WRITERS)
def name():
    return _change(lambda s: people_ops.name_person(s, people_ops.parse_id(request.form.get("person"), "the person"),
                                                    request.form.get("name")))


@bp.post("/people/merge")
@require_role(*people_ops.WRITERS)
def merge():
    def action(session):
        source = people_ops.parse_id(request.form.get("person"), "the person to merge")
        target = people_ops.find_person(session, request.form.get("into"))
        return people_ops.merge_people(session, source, target.id)
    return _change(action)


@bp.post("/people/remove-face")
@require_role(*people_ops.WRITERS)
def remove_face():
    return _change(lambda s: people_ops.remove_face(s, people_ops.parse_id(request.form.get("face"), "the face")))


@bp.post("/people/recluster")
@require_role(*people_ops.WRITERS)
def recluster():
    from app.indexer import CollectionBusy, collection_lock

    def action(session):
        threshold = people_ops.cluster_threshold(session)
        try:
            with collection_lock(current_app.extensions["layout"]):
                summary = people_ops.recluster(session, threshold)
        except CollectionBusy:
            raise PeopleError("an offline.py run is writing to the collection; cluster again when it is done",
                              409) from None
        return f"Clustered again: {summary.line()}."
    return _change(action)


@bp.get("/api/people")
def api_people():
    """People, most faces first: {"people": [{id, name, label, faces, thumbs, search_url}], "unassigned": n, ...}.
    `page` and `per_page` (1 to 500, default 50) page through them."""
    raw = request.args.get("per_page")
    if raw is not None and not (is_id(raw, 4) and 1 <= int(raw) <= API_MAX_PER_PAGE):
        return jsonify({"error": f"per_page must be a whole number from 1 to {API_MAX_PER_PAGE}", "status": 400}), 400
    raw_page = request.args.get("page")
    if raw_page is not None and not (is_id(raw_page, 9) and int(raw_page) >= 1):
        return jsonify({"error": "page must be a whole number from 1", "status": 400}), 400
    with services.sessions()() as session:
        listing = people_ops.listing(session, int(raw_page or 1), int(raw or people_ops.PAGE_SIZE), API_THUMBS)
    return jsonify({
        "people": [{"id": p.id, "name": p.name, "label": p.label, "faces": p.faces,
                    "thumbs": [url_for("people.face_thumb", face_id=f) for f in p.thumbs],
                    "url": url_for("people.person", person_id=p.id),
                    "search_url": url_for("search.index", person=p.name) if p.name else None}
                   for p in listing.people],
        "unassigned": listing.unassigned, "faces": listing.faces, "total": listing.total, "named": listing.named,
        "page": listing.page, "pages": listing.pages})
