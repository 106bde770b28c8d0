"""People: the collection's faces clustered into persons, and the names annotators give them.

Clustering is scikit-learn's DBSCAN over a sparse neighbour graph that FAISS builds (a range search at the face
model's same-person similarity), so it never forms the n x n matrix. A new clustering keeps what people did:
a cluster takes the person most of its faces already belonged to (a named one first), or a named person whose
centroid it matches; faces an annotator placed or removed (`locked`) stay where they were put.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.models import Face, FaceData, Person

log = logging.getLogger(__name__)
MIN_FACES = 2  # a person is at least this many faces (DBSCAN's min_samples); a lone face stays unassigned


@dataclass
class ClusterSummary:
    faces: int = 0
    people: int = 0
    named: int = 0
    unassigned: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"people: {self.people} ({self.named} named) from {self.faces} faces, "
                f"{self.unassigned} faces in no person, {self.seconds:.1f} s")


def face_vectors(session: Session, face_ids: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(face ids, (n, dim) unit vectors) of all faces, or of the given ones, in id order."""
    query = select(FaceData.face_id, FaceData.vector).order_by(FaceData.face_id)
    if face_ids is not None:
        query = query.where(FaceData.face_id.in_(face_ids))
    rows = session.execute(query).all()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return (np.array([r[0] for r in rows], np.int64),
            np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]))


def cluster_labels(vecs: np.ndarray, threshold: float, min_faces: int = MIN_FACES) -> np.ndarray:
    """DBSCAN labels (-1: in no cluster) of unit vectors; neighbours are pairs with cosine >= threshold."""
    n = len(vecs)
    if n == 0:
        return np.zeros(0, np.int64)
    from scipy.sparse import csr_matrix  # imported here: every index run and server start would pay for them
    from sklearn.cluster import DBSCAN

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    lims, sims, cols = index.range_search(np.ascontiguousarray(vecs, dtype=np.float32), float(threshold))
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sims, 0.0)) + 1e-6  # explicit entries, never a stored zero
    graph = csr_matrix((dist, cols, lims), shape=(n, n))
    eps = math.sqrt(max(2.0 - 2.0 * threshold, 0.0)) + 2e-6
    return DBSCAN(eps=eps, min_samples=min_faces, metric="precomputed").fit(graph).labels_


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def update_centroids(session: Session, person_ids: Iterable[int] | None = None) -> None:
    """Each person's centroid from its faces now (a person with no faces keeps its last one); only the given
    people's when `person_ids` is set (what a page's change touched)."""
    members: dict[int, list[int]] = {}
    faces = select(Face.id, Face.person_id).where(Face.person_id.is_not(None))
    people = select(Person)
    if person_ids is not None:
        wanted = sorted(set(person_ids))
        if not wanted:
            return
        faces = faces.where(Face.person_id.in_(wanted))
        people = people.where(Person.id.in_(wanted))
    for face_id, person_id in session.execute(faces):
        members.setdefault(person_id, []).append(face_id)
    for person in session.scalars(people).all():
        ids = members.get(person.id)
        if ids:
            _, vecs = face_vectors(session, ids)
            person.centroid = _unit(vecs.mean(axis=0)).tobytes()


def recluster(session: Session, threshold: float, min_faces: int = MIN_FACES) -> ClusterSummary:
    """Cluster every face again and commit the people it gives (see the module docstring for what is kept)."""
    import time

    start = time.monotonic()
    ids, vecs = face_vectors(session)
    info = {r.id: r for r in session.execute(select(Face.id, Face.person_id, Face.locked))}
    labels = cluster_labels(vecs, threshold, min_faces)
    people = {p.id: p for p in session.scalars(select(Person)).all()}
    named = [p for p in people.values() if p.name and p.centroid]
    named_matrix = np.stack([np.frombuffer(p.centroid, np.float32) for p in named]) if named else None
    assign: dict[int, int | None] = {}
    for label in sorted(set(labels.tolist()) - {-1}):
        at = np.flatnonzero(labels == label)
        person_id = _person_for(at, ids, vecs, info, people, named, named_matrix, threshold)
        if person_id is None:
            person = Person()
            session.add(person)
            session.flush()
            people[person.id] = person
            person_id = person.id
        for i in at.tolist():
            assign[int(ids[i])] = person_id
    unassigned = 0
    for face_id, row in info.items():
        if row.locked:
            continue
        target = assign.get(face_id)
        unassigned += target is None
        if row.person_id != target:
            session.execute(Face.__table__.update().where(Face.id == face_id).values(person_id=target))
    session.flush()
    used = set(session.scalars(select(Face.person_id).where(Face.person_id.is_not(None)).distinct()))
    session.execute(delete(Person).where(Person.name.is_(None), Person.id.not_in(used or {-1})))
    update_centroids(session)
    session.commit()
    summary = ClusterSummary(faces=len(ids), people=len(used), unassigned=unassigned,
                             named=session.scalar(select(func.count(Person.id)).where(Person.name.is_not(None),
                                                                                        Person.id.in_(used or {-1}))),
                             seconds=time.monotonic() - start)
    log.info("%s", summary.line())
    return summary


def _person_for(at: np.ndarray, ids: np.ndarray, vecs: np.ndarray, info: dict, people: dict, named: list,
                named_matrix: np.ndarray | None, threshold: float) -> int | None:
    """Which existing person a cluster is: most of its faces' current person (named ones first), else the named
    person whose centroid is nearest above the threshold; None: a new person."""
    votes = Counter(info[int(ids[i])].person_id for i in at.tolist() if info[int(ids[i])].person_id is not None)
    for want_name in (True, False):
        for person_id, _ in votes.most_common():
            if person_id in people and bool(people[person_id].name) == want_name:
                return person_id
    if named_matrix is not None:
        sims = named_matrix @ _unit(vecs[at].mean(axis=0))
        best = int(np.argmax(sims))
        if sims[best] >= threshold:
            return named[best].id
    return None


# --- what the People page and GET /api/people do -------------------------------------------------------------------

NAME_MAX = 100
PAGE_SIZE = 50  # people per page, biggest first
THUMBS = 12  # faces shown per person on the listing
WRITERS = ("admin", "annotator")


class PeopleError(ValueError):
    """A change the page refuses, with the HTTP status to answer (400 bad input, 404 unknown, 409 not now)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def person_label(person_id: int, name: str | None) -> str:
    """What pages call a person: its name, else 'Unnamed person N' (N its id, which never changes)."""
    return name or f"Unnamed person {person_id}"


def clean_name(raw: object) -> str:
    """A person's name from a form: trimmed, 1 to 100 characters, one line."""
    if not isinstance(raw, str):
        raise PeopleError("give the person a name")
    name = " ".join(raw.split())  # no tabs, newlines or runs of spaces
    if not name:
        raise PeopleError("the name is empty: give the person a name of 1 to 100 characters")
    if len(name) > NAME_MAX:
        raise PeopleError(f"the name is {len(name)} characters long; the limit is {NAME_MAX}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise PeopleError("the name contains control characters")
    if name.lstrip("#").isdigit():
        raise PeopleError("a name cannot be only a number: forms read a number as a person's id")
    return name


def parse_id(raw: object, what: str) -> int:
    """A row id from a form field ('12' or '#12'), or a PeopleError that names the field."""
    from app.numbers import is_id

    text = raw.strip().lstrip("#") if isinstance(raw, str) else ""
    if not text:
        raise PeopleError(f"{what} is missing")
    if not is_id(text):
        raise PeopleError(f"{what} must be a number (got {str(raw)[:40]!r})")
    return int(text)


def get_person(session: Session, person_id: int) -> Person:
    person = session.get(Person, person_id)
    if person is None:
        raise PeopleError(f"there is no person {person_id} (clustered again meanwhile? reload the page)", 404)
    return person


def find_person(session: Session, raw: object, what: str = "the person to merge into") -> Person:
    """A person by id ('12', '#12') or by exact name (case-insensitive), as typed in a form."""
    text = raw.strip() if isinstance(raw, str) else ""
    if not text:
        raise PeopleError(f"{what} is missing: give its number or its name")
    if text.lstrip("#").isdigit():
        return get_person(session, parse_id(text, what))
    found = session.scalars(select(Person).where(func.lower(Person.name) == text.lower())).all()
    exact = [p for p in found if p.name == text]
    if exact or len(found) == 1:
        return (exact or found)[0]
    raise PeopleError(f"no person is named {text[:NAME_MAX]!r}", 404)


def _face_count(session: Session, person_id: int) -> int:
    return session.scalar(select(func.count(Face.id)).where(Face.person_id == person_id)) or 0


def merge_people(session: Session, source_id: int, target_id: int) -> str:
    """Every face of person `source_id` becomes `target_id`'s; the source goes. The target keeps its name, or takes
    the source's when it has none. Commits; returns what happened, in words."""
    if source_id == target_id:
        raise PeopleError("a person cannot be merged into itself: choose another person")
    source, target = get_person(session, source_id), get_person(session, target_id)
    before = person_label(source.id, source.name)
    moved = session.execute(Face.__table__.update().where(Face.person_id == source.id)
                            .values(person_id=target.id)).rowcount
    name = source.name
    session.delete(source)
    session.flush()
    if target.name is None and name:
        target.name = name
    update_centroids(session, [target.id])
    session.commit()
    return f"Merged {before} ({moved} face{'s' if moved != 1 else ''}) into {person_label(target.id, target.name)}."


def name_person(session: Session, person_id: int, raw_name: object) -> str:
    """Name (or rename) a person. A name another person has already merges this person into that one. Commits."""
    name = clean_name(raw_name)
    person = get_person(session, person_id)
    other = next((p for p in session.scalars(select(Person).where(func.lower(Person.name) == name.lower(),
                                                                   Person.id != person.id))), None)
    if other is not None:
        merged = merge_people(session, person.id, other.id)
        if other.name != name:  # the same name typed in other letter case: the new spelling
            other.name = name
            session.commit()
        return f"{name} was already a person's name, so the two are one person now: {merged}"
    old = person.name
    if old == name:
        return f"{person_label(person.id, old)} keeps the name {name}."
    person.name = name
    update_centroids(session, [person.id])
    session.commit()
    return f"Renamed {old} to {name}." if old else f"{person_label(person.id, None)} is now named {name}."


def remove_face(session: Session, face_id: int) -> str:
    """Take a face out of its person for good: no person, and `locked` so clustering leaves it out. Commits."""
    face = session.get(Face, face_id)
    if face is None:
        raise PeopleError(f"there is no face {face_id}", 404)
    person = session.get(Person, face.person_id) if face.person_id is not None else None
    face.person_id, face.locked = None, True
    session.flush()
    if person is None:
        session.commit()
        return f"Face {face_id} is in no person; clustering leaves it out."
    label = person_label(person.id, person.name)
    if person.name is None and _face_count(session, person.id) == 0:
        session.delete(person)  # an unnamed person with no face is nobody
    else:
        update_centroids(session, [person.id])
    session.commit()
    return f"Took face {face_id} out of {label}; clustering leaves it out."


def cluster_threshold(session: Session) -> float:
    """The collection's face model's same-person similarity (the model named by `face_model_spec`)."""
    from app.face_model import DEFAULT_FACE_MODEL, FaceModelUnavailable, load_face_model
    from app.models import Setting

    if session.get(Setting, "face_model") is None:
        raise PeopleError("the collection has no faces yet: run `python offline.py index PATH` with --faces", 409)
    spec = session.get(Setting, "face_model_spec")
    try:
        return float(load_face_model(spec.value if spec else DEFAULT_FACE_MODEL).match_threshold)
    except FaceModelUnavailable as exc:
        raise PeopleError(f"the face model does not load on this server: {exc}", 409) from None


@dataclass
class PersonRow:
    id: int
    name: str | None
    faces: int
    thumbs: list[int]  # face ids, best detections first

    @property
    def label(self) -> str:
        return person_label(self.id, self.name)


@dataclass
class PeoplePage:
    people: list[PersonRow]
    page: int
    pages: int
    total: int  # people
    named: int
    unassigned: int  # faces in no person
    faces: int  # all faces


def _counts():
    return (select(Face.person_id, func.count(Face.id).label("n")).where(Face.person_id.is_not(None))
            .group_by(Face.person_id).subquery())


def _thumbs(session: Session, person_id: int, limit: int) -> list[int]:
    return list(session.scalars(select(Face.id).where(Face.person_id == person_id)
                                .order_by(Face.score.desc(), Face.id).limit(limit)))


def listing(session: Session, page: int = 1, per_page: int = PAGE_SIZE, thumbs: int = THUMBS) -> PeoplePage:
    """One page of people, most faces first (then oldest), each with its first faces."""
    total = session.scalar(select(func.count(Person.id))) or 0
    pages = max(1, -(-total // per_page))
    page = min(max(page, 1), pages)
    counts = _counts()
    n = func.coalesce(counts.c.n, 0)
    rows = session.execute(select(Person.id, Person.name, n).outerjoin(counts, counts.c.person_id == Person.id)
                           .order_by(n.desc(), Person.id).limit(per_page).offset((page - 1) * per_page)).all()
    return PeoplePage(
        people=[PersonRow(pid, name, int(count), _thumbs(session, pid, thumbs)) for pid, name, count in rows],
        page=page, pages=pages, total=total,
        named=session.scalar(select(func.count(Person.id)).where(Person.name.is_not(None))) or 0,
        unassigned=session.scalar(select(func.count(Face.id)).where(Face.person_id.is_(None))) or 0,
        faces=session.scalar(select(func.count(Face.id))) or 0)


def person_faces(session: Session, person_id: int, limit: int, offset: int = 0) -> list[tuple[int, str | None]]:
    """(face id, item name of its keyframe or image) of a person's faces, best detections first."""
    from app.items import ItemRef
    from app.models import Image, Keyframe, Video

    rows = session.execute(select(Face.id, Video.video_id, Keyframe.frame_idx, Image.content_hash)
                           .outerjoin(Keyframe, Keyframe.id == Face.keyframe_id)
                           .outerjoin(Video, Video.id == Keyframe.video_pk)
                           .outerjoin(Image, Image.id == Face.image_id)
                           .where(Face.person_id == person_id)
                           .order_by(Face.score.desc(), Face.id).limit(limit).offset(offset)).all()
    out = []
    for face_id, video_id, frame_idx, content_hash in rows:
        ref = (ItemRef.frame(video_id, frame_idx) if video_id is not None else
               ItemRef.image(content_hash) if content_hash is not None else None)
        out.append((face_id, str(ref) if ref else None))
    return out
