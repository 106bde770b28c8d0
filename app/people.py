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
from dataclasses import dataclass

import faiss
import numpy as np
from scipy.sparse import csr_matrix
from sklearn.cluster import DBSCAN
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
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    lims, sims, cols = index.range_search(np.ascontiguousarray(vecs, dtype=np.float32), float(threshold))
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sims, 0.0)) + 1e-6  # explicit entries, never a stored zero
    graph = csr_matrix((dist, cols, lims), shape=(n, n))
    eps = math.sqrt(max(2.0 - 2.0 * threshold, 0.0)) + 2e-6
    return DBSCAN(eps=eps, min_samples=min_faces, metric="precomputed").fit(graph).labels_


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def update_centroids(session: Session) -> None:
    """Each person's centroid from its faces now (a person with no faces keeps its last one)."""
    members: dict[int, list[int]] = {}
    for face_id, person_id in session.execute(select(Face.id, Face.person_id).where(Face.person_id.is_not(None))):
        members.setdefault(person_id, []).append(face_id)
    for person in session.scalars(select(Person)).all():
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
