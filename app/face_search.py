"""Searching by face: the faces of a query photo, then the frames and images where that person (or all of several
people) appear.

One person: the face index's nearest faces, best face per item. Several people: each chosen face's candidates, the
items every one of them reached, and for each such item the n x m matrix of query faces against its faces, matched
one to one by the Hungarian assignment (scipy's linear_sum_assignment); the item's score is its weakest matched
pair, so a result passes the similarity floor only when every chosen person is in it.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app import vectors
from app.collection import Collection
from app.face_index import KIND_FACE
from app.face_model import MAX_FACES, MIN_FACE_PX, DetectedFace, FaceModel, analysed, load_face_model
from app.items import ItemRef
from app.models import Face, FaceData, Keyframe, Person, Setting, Video
from app.models import Image as ImageRow
from app.search import Hit, Options, QueryError, parse_box

MAX_PEOPLE = 5  # chosen faces per query: the n x m matrices stay small and the query fast
DEPTH_PER_K = 10  # faces fetched per wanted result (a person shows up on many frames of one shot)
MIN_DEPTH = 500
FILTERED_DEPTH = 5000  # deeper when filters may drop most candidates


@dataclass
class QueryFace:
    """A face of the query photo, in the photo's own pixels."""

    index: int
    box: tuple[float, float, float, float]
    score: float
    detected: DetectedFace  # in the analysed picture's pixels (for embedding)


@dataclass
class QueryPhoto:
    rgb: np.ndarray  # what the model looks at
    scale: float  # analysed pixels per photo pixel
    size: tuple[int, int]
    faces: list[QueryFace]
    notices: list[str] = field(default_factory=list)


@dataclass
class MatchedFace:
    face_id: int
    box: tuple[float, float, float, float]  # source pixels of the item
    score: float
    query: int  # which chosen face it matched: its position in FaceOutcome.chosen
    person: str | None = None
    person_id: int | None = None  # its cluster (named or not: GET /api/people lists them)


@dataclass
class FaceHit:
    hit: Hit
    faces: list[MatchedFace]
    size: tuple[int, int]  # the item's source pixels (boxes are in them)
    matrix: list[list[float]] | None = None  # query faces x the item's faces (several people)
    item_faces: list[int] | None = None  # the matrix's columns: face ids


@dataclass
class FaceOutcome:
    photo: QueryPhoto | None = None
    chosen: list[int] = field(default_factory=list)
    hits: list[FaceHit] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    timing_ms: dict[str, float] = field(default_factory=dict)
    filtered_out: bool = False
    floor: float = 0.0  # the similarity a result needed (0-1)


class ServedIndex:
    """The served generation of a row index (faces, objects), reloaded when offline.py publishes a new one (checked at
    most once a second)."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        self._bundle: vectors.IndexBundle | None = None
        self._loaded_for: str | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def bundle(self) -> vectors.IndexBundle | None:
        now = time.monotonic()
        if now - self._checked >= 1.0 or self._bundle is None:
            with self._lock:
                self._checked = now
                current = vectors.pointer(self.index_dir)
                if current != self._loaded_for:
                    self._bundle = vectors.load_current(self.index_dir)
                    self._loaded_for = current
        return self._bundle


def collection_face_model(session: Session) -> FaceModel:
    """The model the collection's faces were found with (the query's faces must be embedded by the same)."""
    rows = {k: v for k, v in session.execute(select(Setting.key, Setting.value)
                                             .where(Setting.key.in_(("face_model", "face_model_spec"))))}
    if "face_model" not in rows:
        raise QueryError("this collection has no faces yet: index it with faces on "
                         "(`python offline.py index PATHS --faces`)")
    model = load_face_model(rows.get("face_model_spec", "dlib"))
    if model.name != rows["face_model"]:
        raise QueryError(f"the collection's faces come from {rows['face_model']}, but {model.name} is what loads here")
    return model


class PhotoCache:
    """The last few query photos' detections, by kept image id: picking faces on the page does not detect again."""

    def __init__(self, size: int = 8) -> None:
        self._items: OrderedDict[str, QueryPhoto] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str, make) -> QueryPhoto:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        photo = make()
        with self._lock:
            self._items[key] = photo
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return photo


def read_photo(model: FaceModel, image: Image.Image) -> QueryPhoto:
    """Detect the faces of a query photo; too-small ones and those past MAX_FACES are left out, with a notice."""
    rgb, scale = analysed(image)
    found = model.detect(rgb)
    notices = []
    usable = [f for f in found if f.side >= MIN_FACE_PX]
    if len(usable) < len(found):
        small = len(found) - len(usable)
        notices.append(f"{small} face{'s' if small > 1 else ''} too small to embed (under {MIN_FACE_PX} pixels) "
                       f"{'were' if small > 1 else 'was'} skipped.")
    if len(usable) > MAX_FACES:
        notices.append(f"{len(usable)} faces found; the {MAX_FACES} largest are offered.")
        usable = usable[:MAX_FACES]
    faces = [QueryFace(i, tuple(v / scale for v in f.box), f.score, f) for i, f in enumerate(usable)]
    return QueryPhoto(rgb, scale, image.size, faces, notices)


def photo_with_box(model: FaceModel, image: Image.Image, raw_box: str) -> QueryPhoto:
    """A query photo whose face the user boxed by hand (x,y,w,h in the photo's pixels): the largest face the detector
    finds inside the box (a loose box is fine); none there is a clear error."""
    box = parse_box(raw_box, image.width, image.height)
    rgb, scale = analysed(image)
    x, y, w, h = (v * scale for v in box)
    if min(w, h) < MIN_FACE_PX:
        raise QueryError(f"the box is too small to hold a face (under {MIN_FACE_PX} pixels a side)")
    left, top = int(x), int(y)
    crop = np.ascontiguousarray(rgb[top:int(y + h), left:int(x + w)])  # what is embedded: the face in the box
    inside = [f for f in model.detect(crop) if f.side >= MIN_FACE_PX]
    if not inside:
        raise QueryError("no face found in the box")
    face = inside[0]
    shown = ((face.box[0] + left) / scale, (face.box[1] + top) / scale, face.box[2] / scale, face.box[3] / scale)
    return QueryPhoto(crop, scale, image.size, [QueryFace(0, shown, face.score, face)])


def parse_choice(raw: str | None, photo: QueryPhoto, notices: list[str]) -> list[int]:
    """`face`: an index, a comma list, or 'all'; none given: the largest face (said in a notice when there are more)."""
    n = len(photo.faces)
    if n == 0:
        raise QueryError("no face found in this image")
    raw = (raw or "").strip().lower()
    if not raw:
        if n > 1:
            notices.append(f"{n} faces found; searching for the largest (face 0). Choose others with face=1, "
                           f"a list like 0,1, or all.")
        return [0]
    if raw == "all":
        chosen = list(range(n))
    else:
        try:
            chosen = [int(part) for part in raw.split(",")]
        except ValueError:
            raise QueryError("face must be a face number, a comma list like 0,1, or all") from None
        bad = [c for c in chosen if not 0 <= c < n]
        if bad:
            raise QueryError(f"face {bad[0]} does not exist: this image has {n} face{'s' if n > 1 else ''} "
                             f"(0 to {n - 1})")
        if len(set(chosen)) < len(chosen):
            raise QueryError("a face is chosen twice; choose each face once")
    if len(chosen) > MAX_PEOPLE:
        notices.append(f"{len(chosen)} faces chosen; a query takes at most {MAX_PEOPLE} people: the "
                       f"{MAX_PEOPLE} largest were used.")
        chosen = sorted(chosen)[:MAX_PEOPLE]
    return chosen


@dataclass
class _FaceRow:
    face_id: int
    ref: ItemRef
    box: tuple[float, float, float, float]
    size: tuple[int, int]
    person: str | None
    person_id: int | None = None


def _face_rows(session: Session, where) -> list[_FaceRow]:
    """Faces with the item they are on (a frame of a video, or an image) and that item's source size."""
    rows = []
    frames = session.execute(select(Face.id, Face.x, Face.y, Face.w, Face.h, Video.video_id, Keyframe.frame_idx,
                                    Video.width, Video.height, Person.name, Face.person_id)
                             .join(Keyframe, Face.keyframe_id == Keyframe.id).join(Video, Keyframe.video_pk == Video.id)
                             .outerjoin(Person, Face.person_id == Person.id).where(where))
    for fid, x, y, w, h, video_id, frame_idx, width, height, person, person_id in frames:
        rows.append(_FaceRow(fid, ItemRef.frame(video_id, frame_idx), (x, y, w, h), (width, height), person,
                             person_id))
    images = session.execute(select(Face.id, Face.x, Face.y, Face.w, Face.h, ImageRow.content_hash, ImageRow.width,
                                    ImageRow.height, Person.name, Face.person_id)
                             .join(ImageRow, Face.image_id == ImageRow.id)
                             .outerjoin(Person, Face.person_id == Person.id).where(where))
    for fid, x, y, w, h, content_hash, width, height, person, person_id in images:
        rows.append(_FaceRow(fid, ItemRef.image(content_hash), (x, y, w, h), (width, height), person, person_id))
    return rows


def _item_filter(refs: set[ItemRef]):
    """A WHERE clause for the faces on these items."""
    frames = [r for r in refs if r.is_frame]
    hashes = [r.image_hash for r in refs if not r.is_frame]
    keyframes = select(Keyframe.id).join(Video).where(or_(*[(Video.video_id == r.video_id) &
                                                            (Keyframe.frame_idx == r.frame_idx) for r in frames]))
    images = select(ImageRow.id).where(ImageRow.content_hash.in_(hashes))
    return or_(Face.keyframe_id.in_(keyframes) if frames else False, Face.image_id.in_(images) if hashes else False)


def _vectors(session: Session, face_ids: list[int]) -> dict[int, np.ndarray]:
    return {fid: np.frombuffer(blob, dtype=np.float32) for fid, blob in
            session.execute(select(FaceData.face_id, FaceData.vector).where(FaceData.face_id.in_(face_ids)))}


def person_refs(session: Session, name: str) -> set[ItemRef]:
    """Items that show a person (by name, case-insensitive): the search filter 'person: NAME'."""
    from sqlalchemy import func

    person_ids = select(Person.id).where(func.lower(Person.name) == name.strip().lower())
    return {r.ref for r in _face_rows(session, Face.person_id.in_(person_ids))}


def check_person(session: Session, name: str) -> None:
    """A filter naming nobody is an error that lists the names there are (not a silent empty result)."""
    from sqlalchemy import func

    if session.scalar(select(Person.id).where(func.lower(Person.name) == name.strip().lower())) is None:
        known = session.scalars(select(Person.name).where(Person.name.is_not(None)).order_by(Person.name)
                                .limit(20)).all()
        raise QueryError(f"no person named '{name[:100]}'" + (f" (named people: {', '.join(known)})" if known else
                                                               " (no one is named yet: see the People page)"))


def person_centroid(session: Session, name: str) -> np.ndarray:
    from sqlalchemy import func

    person = session.scalar(select(Person).where(func.lower(Person.name) == name.strip().lower()))
    if person is None:
        known = session.scalars(select(Person.name).where(Person.name.is_not(None)).order_by(Person.name)
                                .limit(20)).all()
        raise QueryError(f"no person named '{name[:100]}'" + (f" (named people: {', '.join(known)})" if known else
                                                               " (no one is named yet: see the People page)"))
    if person.centroid is None:
        raise QueryError(f"'{person.name}' has no faces in the collection now")
    return np.frombuffer(person.centroid, dtype=np.float32).reshape(1, -1)


class FaceSearcher:
    def __init__(self, collection: Collection, faces: ServedIndex, sessions) -> None:
        self.collection = collection
        self.faces = faces
        self.sessions = sessions
        self.photos = PhotoCache()

    def model(self) -> FaceModel:
        with self.sessions() as session:
            return collection_face_model(session)

    def _bundle(self, model: FaceModel) -> vectors.IndexBundle:
        bundle = self.faces.bundle()
        if bundle is None or bundle.size == 0:
            raise QueryError("this collection has no faces indexed yet: run `python offline.py index PATHS --faces`")
        if bundle.meta.get("model") != model.name:
            raise QueryError("the face index was built with another face model than the catalogue names; run "
                             "`python offline.py index PATHS` again")
        return bundle

    def search(self, photo: QueryPhoto, chosen: list[int], opts: Options, allowed_refs: set[ItemRef] | None,
               floor_given: bool) -> FaceOutcome:
        """Results for the chosen faces of a photo (see the module docstring)."""
        model = self.model()
        out = FaceOutcome(photo=photo, chosen=chosen, notices=list(photo.notices))
        t0 = time.perf_counter()
        query = model.embed(photo.rgb, [photo.faces[i].detected for i in chosen])
        self._refuse_same_person(query, chosen, model)
        out.timing_ms["embed"] = (time.perf_counter() - t0) * 1000
        return self.search_vectors(query, opts, allowed_refs, floor_given, model, out)

    def search_vectors(self, query: np.ndarray, opts: Options, allowed_refs: set[ItemRef] | None, floor_given: bool,
                       model: FaceModel, out: FaceOutcome) -> FaceOutcome:
        bundle = self._bundle(model)
        t0 = time.perf_counter()
        depth = min(bundle.size, max(opts.k * DEPTH_PER_K, MIN_DEPTH,
                                     FILTERED_DEPTH if allowed_refs is not None else 0))
        scores, rows = vectors.search(bundle, np.ascontiguousarray(query, np.float32), depth)
        per_query = []
        for qi in range(len(query)):
            found = {}
            for s, r in zip(scores[qi], rows[qi], strict=True):
                if r >= 0 and bundle.ids[r, 0] == KIND_FACE:
                    found[int(bundle.ids[r, 1])] = float(s)
            per_query.append(found)
        with self.sessions() as session:
            every = set().union(*per_query)
            rows_by_face = {r.face_id: r for r in _face_rows(session, Face.id.in_(every))} if every else {}
            if allowed_refs is not None:
                rows_by_face = {f: r for f, r in rows_by_face.items() if r.ref in allowed_refs}
            hits = self._single(per_query[0], rows_by_face) if len(query) == 1 else \
                self._several(session, query, per_query, rows_by_face)
        out.timing_ms["search"] = (time.perf_counter() - t0) * 1000
        self._shape(hits, opts, floor_given, model, out)
        return out

    @staticmethod
    def _refuse_same_person(query: np.ndarray, chosen: list[int], model: FaceModel) -> None:
        sims = query @ query.T
        for a in range(len(chosen)):
            for b in range(a + 1, len(chosen)):
                if sims[a, b] >= model.match_threshold:
                    raise QueryError(f"faces {chosen[a]} and {chosen[b]} look like the same person (similarity "
                                     f"{sims[a, b] * 100:.0f}%); choose each person once")

    @staticmethod
    def _single(found: dict[int, float], rows: dict[int, _FaceRow]) -> list[tuple[ItemRef, float, list, tuple]]:
        best: dict[ItemRef, tuple[float, _FaceRow]] = {}
        for face_id, score in found.items():
            row = rows.get(face_id)
            if row is not None and (row.ref not in best or score > best[row.ref][0]):
                best[row.ref] = (score, row)
        return [(ref, score, [MatchedFace(row.face_id, row.box, score, 0, row.person, row.person_id)], row.size,
                 None, None) for ref, (score, row) in best.items()]

    @staticmethod
    def _several(session: Session, query: np.ndarray, per_query: list[dict], rows: dict[int, _FaceRow]) -> list:
        from scipy.optimize import linear_sum_assignment

        reached = [{rows[f].ref for f in found if f in rows} for found in per_query]
        candidates = set.intersection(*reached) if reached else set()
        if not candidates:
            return []
        item_faces: dict[ItemRef, list[_FaceRow]] = {}
        for row in _face_rows(session, _item_filter(candidates)):
            item_faces.setdefault(row.ref, []).append(row)
        vecs = _vectors(session, [r.face_id for rs in item_faces.values() for r in rs])
        results = []
        for ref, faces in item_faces.items():
            faces = [f for f in faces if f.face_id in vecs]
            if len(faces) < len(query):
                continue
            sims = query @ np.stack([vecs[f.face_id] for f in faces]).T  # n x m
            qi, fi = linear_sum_assignment(-sims)
            matched = [MatchedFace(faces[j].face_id, faces[j].box, float(sims[i, j]), int(i), faces[j].person,
                                   faces[j].person_id)
                       for i, j in zip(qi.tolist(), fi.tolist(), strict=True)]
            results.append((ref, min(m.score for m in matched), matched, faces[0].size,
                            [[round(float(v), 4) for v in row] for row in sims], [f.face_id for f in faces]))
        return results

    def _shape(self, found: list, opts: Options, floor_given: bool, model: FaceModel, out: FaceOutcome) -> None:
        """Best first, the similarity floor (the model's same-person level unless the user set one), top k."""
        found.sort(key=lambda r: -r[1])
        if opts.relative and found:
            out.floor = opts.min_score / 100 * found[0][1]
        else:
            out.floor = opts.min_score / 100 if floor_given else model.match_threshold
        passed = [r for r in found if r[1] >= out.floor]
        out.filtered_out = bool(found) and not passed
        snap = self.collection.snapshot()
        for ref, score, matched, size, matrix, columns in passed:
            entry = snap.find(ref) if snap is not None else None
            if entry is None:
                continue  # catalogued after the served CLIP generation: it comes with the next one
            out.hits.append(FaceHit(Hit(entry.row, score, entry), matched, size, matrix, columns))
            if len(out.hits) >= opts.k:
                break


@dataclass
class ItemMatrix:
    """Query faces (rows) against one item's faces (columns), and the one-to-one matching the search used."""

    faces: list[MatchedFace]  # the item's faces, in column order
    similarity: list[list[float]]
    assigned: list[tuple[int, int]]  # (row, column) pairs


def item_matrix(session: Session, ref: ItemRef, query: np.ndarray) -> ItemMatrix:
    from scipy.optimize import linear_sum_assignment

    rows = _face_rows(session, _item_filter({ref}))
    vecs = _vectors(session, [r.face_id for r in rows])
    rows = [r for r in rows if r.face_id in vecs]
    if not rows:
        return ItemMatrix([], [], [])
    sims = query @ np.stack([vecs[r.face_id] for r in rows]).T
    qi, fi = linear_sum_assignment(-sims)
    faces = [MatchedFace(r.face_id, r.box, 0.0, -1, r.person) for r in rows]
    return ItemMatrix(faces, [[round(float(v), 4) for v in row] for row in sims],
                      list(zip(qi.tolist(), fi.tolist(), strict=True)))
