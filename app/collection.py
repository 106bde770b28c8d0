"""The served collection: the current FAISS generation plus the catalogue facts of its rows, as column arrays.

A generation is loaded once, in the background, and swapped in atomically when offline.py publishes a new one:
a request never waits for a load and never touches a half-written index. Per row the snapshot holds a few numpy
columns (kind, database id, video, frame, keyframe number, time, shot, folder), not one Python object per vector;
the `Entry` a page shows is made from them for the hits only.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app import vectors
from app.items import ItemRef
from app.models import Annotation, Image, Keyframe, Video, display_name
from app.paths import DataLayout
from app.store import MarkerCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """What a result shows; video fields are None for plain images."""

    kind: int
    db_id: int
    video_id: str | None
    n: int | None
    frame_idx: int | None
    pts_time: float | None
    shot_id: int | None
    rel_path: str | None  # keyframe path relative to the data directory
    source_path: str  # the original video or image file (server side only: pages show `name`)
    feature_key: str = ""  # video id (row n-1 of feature/<id>.npy) or image content hash
    row: int = -1  # FAISS row in the generation
    name: str = ""  # what pages show: the video id, or the image's path below the folder that was indexed

    @property
    def ref(self) -> ItemRef:
        return ItemRef.frame(self.video_id, self.frame_idx) if self.video_id is not None \
            else ItemRef.image(self.feature_key)

    @property
    def item(self) -> str:
        """How pages and the API name an item (see app.items)."""
        return str(self.ref)


HIDDEN = Entry(-1, -1, None, None, None, None, None, None, "")


@dataclass
class Columns:
    """Per FAISS row: what the catalogue says of it. -1 (or '') where a field does not apply."""

    kind: np.ndarray  # int8: 0 keyframe, 1 image, -1 unknown to the catalogue (never shown)
    db_id: np.ndarray  # int64
    video: np.ndarray  # int32 index into Snapshot.videos, -1 for images
    frame: np.ndarray  # int64 frame_idx
    n: np.ndarray  # int32 keyframe number in this revision
    pts: np.ndarray  # float64 seconds
    shot: np.ndarray  # int64 shot row id
    folder: np.ndarray  # int32 index into Snapshot.folders
    image_key: np.ndarray  # object: image content hash ('' for keyframes)
    image_path: np.ndarray  # object: image file (None for keyframes)
    image_name: np.ndarray  # object: image display name


@dataclass
class VideoFacts:
    video_id: str
    path: str
    content_hash: str


class EntryView(Sequence):
    """The snapshot's rows as Entry objects, made on access (for code that walks every row, like evaluation)."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def __len__(self) -> int:
        return len(self._snap.cols.kind)

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [self._snap.entry(i) for i in range(*row.indices(len(self)))]
        return self._snap.entry(int(row))

    def __iter__(self) -> Iterator[Entry]:
        return (self._snap.entry(i) for i in range(len(self)))


@dataclass
class Snapshot:
    bundle: vectors.IndexBundle
    cols: Columns
    videos: list[VideoFacts]
    folders: np.ndarray  # distinct source folders
    layout: DataLayout
    hidden: np.ndarray = field(default=None)  # bool per row: its video was re-indexed after this generation
    _video_index: dict[str, int] = field(default_factory=dict)
    _by_frame: np.ndarray = field(default=None)  # keyframe rows sorted by (video, frame)
    _by_frame_video: np.ndarray = field(default=None)  # their video and frame columns, in that order, so a
    _by_frame_frame: np.ndarray = field(default=None)  # lookup is two binary searches, with no copy
    _image_row: dict[str, int] = field(default_factory=dict)
    _label_rows: dict[tuple, np.ndarray] = field(default_factory=dict)
    _db_index: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # kind -> (ids, rows) sorted

    def __post_init__(self) -> None:
        c = self.cols
        self.hidden = np.zeros(len(c.kind), dtype=bool) if self.hidden is None else self.hidden
        self._video_index = {v.video_id: i for i, v in enumerate(self.videos)}
        keyframe_rows = np.flatnonzero(c.kind == vectors.KIND_KEYFRAME)
        order = np.lexsort((c.frame[keyframe_rows], c.video[keyframe_rows]))
        self._by_frame = keyframe_rows[order]
        self._by_frame_video, self._by_frame_frame = c.video[self._by_frame], c.frame[self._by_frame]
        self._image_row = {}
        for row in np.flatnonzero(c.kind == vectors.KIND_IMAGE).tolist():
            self._image_row.setdefault(c.image_key[row], row)

    @property
    def size(self) -> int:
        return len(self.cols.kind)

    @functools.cached_property
    def content_hashes(self) -> dict[str, str]:
        """Each video's content hash in this generation (what its files on disk must say they were made from)."""
        return {v.video_id: v.content_hash for v in self.videos}

    @property
    def entries(self) -> EntryView:
        return EntryView(self)

    def visible(self, row: int) -> bool:
        return self.cols.kind[row] >= 0 and not self.hidden[row]

    def entry(self, row: int) -> Entry:
        c = self.cols
        kind = int(c.kind[row])
        if kind == vectors.KIND_KEYFRAME:
            video = self.videos[int(c.video[row])]
            n = int(c.n[row])
            return Entry(kind, int(c.db_id[row]), video.video_id, n, int(c.frame[row]), float(c.pts[row]),
                         int(c.shot[row]) if c.shot[row] >= 0 else None,
                         self.layout.keyframe_relpath(video.video_id, n), video.path, video.video_id, row,
                         video.video_id)
        if kind == vectors.KIND_IMAGE:
            return Entry(kind, int(c.db_id[row]), None, None, None, None, None, None, c.image_path[row],
                         c.image_key[row], row, c.image_name[row])
        return HIDDEN

    def row_of(self, ref: ItemRef) -> int | None:
        """The row of an item, through the precomputed maps (no scan)."""
        if not ref.is_frame:
            row = self._image_row.get(ref.image_hash)
            return row if row is not None and self.visible(row) else None
        vidx = self._video_index.get(ref.video_id)
        if vidx is None:
            return None
        lo = np.searchsorted(self._by_frame_video, vidx, side="left")
        hi = np.searchsorted(self._by_frame_video, vidx, side="right")
        at = lo + np.searchsorted(self._by_frame_frame[lo:hi], ref.frame_idx)
        if at < hi and self._by_frame_frame[at] == ref.frame_idx and self.visible(int(self._by_frame[at])):
            return int(self._by_frame[at])
        return None

    def rows_of_db(self, kind: int, ids: np.ndarray) -> np.ndarray:
        """The rows of catalogue ids of one kind (keyframe or image ids, as text lines name their owners); -1
        where this generation has no visible row for the id. Two binary searches, the sorted ids made once."""
        if kind not in self._db_index:
            rows = np.flatnonzero(self.cols.kind == kind)
            order = np.argsort(self.cols.db_id[rows], kind="stable")
            self._db_index[kind] = (self.cols.db_id[rows][order], rows[order])
        known, rows = self._db_index[kind]
        ids = np.asarray(ids, dtype=np.int64)
        if not len(known) or not len(ids):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(known, ids), len(known) - 1)
        found = np.where(known[at] == ids, rows[at], -1)
        return np.where((found >= 0) & ~self.hidden[np.maximum(found, 0)], found, -1)  # kind is known >= 0 here

    def find(self, ref: ItemRef) -> Entry | None:
        row = self.row_of(ref)
        return None if row is None else self.entry(row)

    def vector(self, entry: Entry) -> np.ndarray:
        """The vector of an entry ("more like this") from this generation itself, so it always belongs to
        the same revision as the index (a re-index may be rewriting the .npy files meanwhile)."""
        return vectors.vector_of(self.bundle, entry.row).reshape(1, -1)

    def rows_of(self, refs: set[ItemRef]) -> np.ndarray:
        return np.array(sorted(r for r in (self.row_of(ref) for ref in refs) if r is not None), dtype=np.int64)

    def has_video(self, video_id: str) -> bool:
        return video_id in self._video_index

    def rows_of_video(self, video_id: str) -> np.ndarray:
        vidx = self._video_index.get(video_id, -2)
        return self.cols.video == vidx

    def rows_in_folder(self, folder: str) -> np.ndarray:
        """FAISS rows whose source file lies in `folder` or below (a path prefix, not a substring)."""
        folder = folder.rstrip("/")
        wanted = [i for i, f in enumerate(self.folders) if f == folder or f.startswith(folder + "/")]
        return np.isin(self.cols.folder, wanted)

    def folders_under(self, folder: str) -> tuple[str, ...]:
        """The distinct source folders `folder` covers (itself and below): what a vector database that stores each
        vector's folder filters on (app.milvus_store), the same rows as rows_in_folder."""
        folder = folder.rstrip("/")
        return tuple(str(f) for f in self.folders if f == folder or f.startswith(folder + "/"))

    def label_rows(self, key: tuple, load) -> np.ndarray:
        """Rows carrying a label, cached per (label, state of the boxes); `load` gives the refs on a miss."""
        rows = self._label_rows.get(key)
        if rows is None:
            if len(self._label_rows) > 256:
                self._label_rows.clear()
            rows = self._label_rows[key] = self.rows_of(load())
        return rows


def _columns(session: Session, ids: np.ndarray) -> tuple[Columns, list[VideoFacts], np.ndarray]:
    n_rows = len(ids)
    kinds, db_ids = (ids[:, 0], ids[:, 1]) if n_rows else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    cols = Columns(np.full(n_rows, -1, np.int8), db_ids.astype(np.int64), np.full(n_rows, -1, np.int32),
                   np.full(n_rows, -1, np.int64), np.full(n_rows, -1, np.int32), np.zeros(n_rows, np.float64),
                   np.full(n_rows, -1, np.int64), np.full(n_rows, -1, np.int32), np.full(n_rows, "", object),
                   np.full(n_rows, None, object), np.full(n_rows, "", object))
    videos = [VideoFacts(*r) for r in session.execute(select(Video.video_id, Video.path, Video.content_hash)
                                                       .order_by(Video.id))]
    video_index = {v.video_id: i for i, v in enumerate(videos)}
    source_folder = [str(Path(v.path).parent) for v in videos]
    folder_text = np.full(n_rows, "", object)

    kf_rows = np.flatnonzero(kinds == vectors.KIND_KEYFRAME)
    if len(kf_rows):
        kf = session.execute(select(Keyframe.id, Video.video_id, Keyframe.frame_idx, Keyframe.n, Keyframe.pts_time,
                                    Keyframe.shot_id).join(Video, Keyframe.video_pk == Video.id)).all()
        if kf:
            table = np.array([(r[0], video_index[r[1]], r[2], r[3], r[5] if r[5] is not None else -1) for r in kf],
                             dtype=np.int64)
            pts = np.array([r[4] for r in kf], dtype=np.float64)
            order = np.argsort(table[:, 0])
            pos = np.searchsorted(table[order, 0], db_ids[kf_rows])
            pos = np.minimum(pos, len(order) - 1)
            found = table[order[pos], 0] == db_ids[kf_rows]
            rows, src = kf_rows[found], order[pos[found]]
            cols.kind[rows] = vectors.KIND_KEYFRAME
            cols.video[rows], cols.frame[rows], cols.n[rows] = table[src, 1], table[src, 2], table[src, 3]
            cols.shot[rows], cols.pts[rows] = table[src, 4], pts[src]
            folder_text[rows] = [source_folder[v] for v in table[src, 1].tolist()]

    img_rows = np.flatnonzero(kinds == vectors.KIND_IMAGE)
    if len(img_rows):
        images = {r.id: r for r in session.execute(select(Image.id, Image.path, Image.content_hash, Image.name))}
        for row in img_rows.tolist():
            r = images.get(int(db_ids[row]))
            if r is not None:
                cols.kind[row] = vectors.KIND_IMAGE
                cols.image_key[row], cols.image_path[row] = r.content_hash, r.path
                cols.image_name[row] = display_name(r.name, r.path)
                folder_text[row] = str(Path(r.path).parent)
    folders, cols.folder[:] = np.unique(folder_text, return_inverse=True) if n_rows else (np.zeros(0, object), [])
    return cols, videos, folders


class Collection:
    """Thread-safe access to the newest complete index generation.

    `snapshot()` never loads inside a request once something is served: a changed CURRENT (checked at most
    every `check_every_s`) starts a background load, and the new snapshot replaces the old in one assignment.
    The same background step hides rows of videos re-indexed since the generation was built (their new
    keyframes come with the next generation), one small query per interval instead of one per search.
    """

    def __init__(self, layout: DataLayout, sessions: sessionmaker, check_every_s: float = 1.0) -> None:
        self.layout = layout
        self._markers = MarkerCache(layout)  # the settled check of every search (files_match, cached by lstat)
        self.sessions = sessions
        self.check_every_s = check_every_s
        self._lock = threading.Lock()  # one loader at a time
        self._snapshot: Snapshot | None = None
        self._loaded_for: str | None = None  # what CURRENT said when the snapshot was loaded
        self._checked = float("-inf")
        self._worker: threading.Thread | None = None
        self.load_error: BaseException | None = None

    def load_now(self) -> Snapshot | None:
        """Load (or reload) in the calling thread: at start-up, and in tools that need the newest generation."""
        with self._lock:
            self._refresh()
        if self.load_error is not None:
            raise self.load_error
        return self._snapshot

    def catch_up(self) -> None:
        """Serve the newest published generation before returning (a job that says 'done' is searchable at once);
        a cheap look at CURRENT when nothing changed."""
        if vectors.pointer(self.layout.index_dir) != self._loaded_for:
            self.load_now()

    def snapshot(self) -> Snapshot | None:
        """The served generation. The first call of a process loads it (start-up); later ones only look."""
        if self._snapshot is None and self._loaded_for is None and self._worker is None:
            return self.load_now()
        now = time.monotonic()
        if now - self._checked >= self.check_every_s:
            self._checked = now
            self._start_background()
        if self._snapshot is None and self.load_error is not None:
            raise self.load_error
        return self._snapshot

    def wait(self, timeout_s: float = 30.0) -> Snapshot | None:
        """Until a background load that is under way has finished (tests and tools)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout_s)
        return self._snapshot

    def _start_background(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        self._worker = threading.Thread(target=self._background, name="collection-refresh", daemon=True)
        self._worker.start()

    def _background(self) -> None:
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._refresh()
        except Exception:  # noqa: BLE001 - a failed refresh keeps serving the previous snapshot
            log.exception("refreshing the served collection failed; the previous generation stays served")
        finally:
            self._lock.release()

    def _refresh(self) -> None:
        current = vectors.pointer(self.layout.index_dir)
        if current != self._loaded_for or self._snapshot is None:
            try:
                snap = self._load()
            except vectors.IndexDamaged as exc:
                self.load_error = exc
                return
            self.load_error = None
            self._snapshot, self._loaded_for = snap, current
        elif self._snapshot is not None:
            self._hide_reindexed(self._snapshot)

    def _load(self) -> Snapshot | None:
        bundle = vectors.load_current(self.layout.index_dir)
        if bundle is None:
            return None
        with self.sessions() as session:
            cols, videos, folders = _columns(session, bundle.ids)
        return Snapshot(bundle, cols, videos, folders, self.layout)

    def _hide_reindexed(self, snap: Snapshot) -> None:
        with self.sessions() as session:
            now = {r[0]: r[1] for r in session.execute(select(Video.video_id, Video.content_hash))}
        changed = [i for i, v in enumerate(snap.videos) if now.get(v.video_id) != v.content_hash]
        hidden = np.isin(snap.cols.video, changed) if changed else np.zeros(snap.size, dtype=bool)
        if not np.array_equal(hidden, snap.hidden):
            snap.hidden = hidden  # one assignment: a search sees the old mask or the new one

    def settled(self, snap: Snapshot, video_ids: set[str]) -> set[str]:
        """Those of `video_ids` whose files on disk are the revision `snap` was built from, with no re-index
        switching them: a staged revision, or keyframes of another revision, means the catalogue may already
        name other frames. Two small file checks per video, no database query (a search calls this)."""
        try:
            staged = set(os.listdir(self.layout.data_dir / ".staging"))
        except OSError:
            staged = set()
        known = snap.content_hashes
        return {vid for vid in video_ids if vid in known and vid not in staged
                and self._markers.matches(vid, known[vid])}

    def boxes_state(self) -> tuple:
        """Changes whenever a box is added, edited or removed (by any process): the label cache's key."""
        with self.sessions() as session:
            return tuple(session.execute(select(func.count(Annotation.id), func.max(Annotation.id),
                                                func.max(Annotation.updated_at))).one())

    def labelled_rows(self, snap: Snapshot, label: str) -> np.ndarray:
        """Rows that carry a box with this label, or whose shot (or image) has it among its best three action and
        concept labels, any case (app.concepts); cached until the boxes or the concept labels change."""
        from app.boxes import search
        from app.concepts import labelled_refs, labels_state

        def refs() -> set[ItemRef]:
            with self.sessions() as session:
                boxed = {a.ref for a in search(session, label=label, limit=10_000_000) if a.ref is not None}
                return boxed | labelled_refs(session, label)

        with self.sessions() as session:
            concepts = labels_state(session)
        return snap.label_rows((label, self.boxes_state(), concepts), refs)

    def object_rows(self, snap: Snapshot, conditions: tuple) -> np.ndarray:
        """Rows meeting object conditions (detections change only at ingest or when an annotator rejects one)."""
        from app.object_filter import matching_refs

        with self.sessions() as session:
            return snap.rows_of(matching_refs(session, conditions))

    def person_rows(self, snap: Snapshot, name: str) -> np.ndarray:
        """Rows showing a named person (asked each time: naming and merging change it at any moment)."""
        from app.face_search import person_refs

        with self.sessions() as session:
            return snap.rows_of(person_refs(session, name))
