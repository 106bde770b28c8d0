"""The served collection: the current FAISS generation plus a catalogue aligned with its ids.

Loaded once and swapped atomically when offline.py publishes a new generation, so
queries never touch a half-written index and never wait on the database per result.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import vectors
from app.models import Image, Keyframe, Video
from app.paths import DataLayout


@dataclass
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
    source_path: str  # the original video or image file
    feature_key: str = ""  # video id (row n-1 of feature/<id>.npy) or image content hash
    row: int = -1  # FAISS row in the generation

    @property
    def item(self) -> str:
        """How pages and the API name an item: '<video_id>/<n>' or 'image:<id>'."""
        return f"image:{self.db_id}" if self.video_id is None else f"{self.video_id}/{self.n}"


@dataclass
class Snapshot:
    bundle: vectors.IndexBundle
    entries: list[Entry]
    video_of_row: np.ndarray  # (N,) video id string per FAISS row ('' for images)
    folders: np.ndarray  # distinct source folders
    folder_of_row: np.ndarray  # (N,) index into `folders` per FAISS row

    def find(self, item: str) -> Entry | None:
        """The live entry named by `item` ('<video_id>/<n>' or 'image:<id>')."""
        if item.startswith("image:"):
            candidates = np.flatnonzero(self.video_of_row == "")
        else:
            candidates = np.flatnonzero(self.video_of_row == item.rpartition("/")[0])
        for row in candidates:
            entry = self.entries[row]
            if entry.kind >= 0 and entry.item == item:
                return entry
        return None

    def vector(self, entry: Entry) -> np.ndarray:
        """The vector of an entry ("more like this") from this generation itself, so it always belongs to
        the same revision as the index (a re-index may be rewriting the .npy files meanwhile)."""
        return vectors.vector_of(self.bundle, entry.row).reshape(1, -1)

    def rows_of(self, names: set[str]) -> np.ndarray:
        """Rows whose item ('<video_id>/<n>') or image path is in `names`."""
        return np.array([i for i, e in enumerate(self.entries) if e.kind >= 0 and
                         (e.item if e.video_id is not None else e.source_path) in names], dtype=np.int64)

    def rows_in_folder(self, folder: str) -> np.ndarray:
        """FAISS rows whose source file lies in `folder` or below (a path prefix, not a substring)."""
        folder = folder.rstrip("/")
        wanted = [i for i, f in enumerate(self.folders) if f == folder or f.startswith(folder + "/")]
        return np.isin(self.folder_of_row, wanted)


def _load_entries(session: Session, ids: np.ndarray) -> list[Entry]:
    kf_rows = {row.id: row for row in session.execute(
        select(Keyframe.id, Keyframe.n, Keyframe.frame_idx, Keyframe.pts_time, Keyframe.shot_id,
               Keyframe.image_path, Video.video_id, Video.path).join(Video, Keyframe.video_pk == Video.id))}
    img_rows = {row.id: row for row in session.execute(select(Image.id, Image.path, Image.content_hash))}
    entries = []
    for row_number, (kind, db_id) in enumerate(ids.tolist()):
        if kind == vectors.KIND_KEYFRAME and db_id in kf_rows:
            r = kf_rows[db_id]
            entries.append(Entry(kind, db_id, r.video_id, r.n, r.frame_idx, r.pts_time, r.shot_id, r.image_path,
                                 r.path, r.video_id, row_number))
        elif kind == vectors.KIND_IMAGE and db_id in img_rows:
            r = img_rows[db_id]
            entries.append(Entry(kind, db_id, None, None, None, None, None, None, r.path, r.content_hash,
                                 row_number))
        else:  # catalogue changed under an older index: keep alignment, never show it
            entries.append(Entry(-1, db_id, None, None, None, None, None, None, ""))
    return entries


_NOTHING_LOADED = object()


class Collection:
    """Thread-safe access to the newest complete index generation."""

    def __init__(self, layout: DataLayout, sessions: sessionmaker, check_every_s: float = 1.0) -> None:
        self.layout = layout
        self.sessions = sessions
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._checked = 0.0
        self._loaded_for: object = _NOTHING_LOADED  # what CURRENT said when the snapshot was loaded

    def snapshot(self) -> Snapshot | None:
        """The served generation; reloaded when CURRENT names another one. A damaged current generation
        falls back to the newest intact one (vectors.load_current), loaded once, not on every request."""
        now = time.monotonic()
        if now - self._checked >= self.check_every_s or self._loaded_for is _NOTHING_LOADED:
            self._checked = now
            pointer = vectors.pointer(self.layout.index_dir)
            if pointer != self._loaded_for or self._snapshot is None:
                with self._lock:
                    if pointer != self._loaded_for or self._snapshot is None:
                        self._snapshot = self._load()
                        self._loaded_for = pointer
        return self._snapshot

    def _load(self) -> Snapshot | None:
        bundle = vectors.load_current(self.layout.index_dir)
        if bundle is None:
            return None
        with self.sessions() as session:
            entries = _load_entries(session, bundle.ids)
        videos = np.array([e.video_id or "" for e in entries], dtype=object)
        folders, folder_of_row = np.unique(
            np.array([str(Path(e.source_path).parent) if e.source_path else "" for e in entries], dtype=object),
            return_inverse=True)
        return Snapshot(bundle, entries, videos, folders, folder_of_row)

    def annotated_with(self, label: str) -> set[str]:
        """Targets ('<video_id>/<n>' or image paths) that carry a box with this label."""
        from app.boxes import search

        with self.sessions() as session:
            return {a.target for a in search(session, label=label, limit=1_000_000)}

    def live_keyframes(self, db_ids: list[int]) -> set[int]:
        """Which of these keyframe rows still exist: a re-indexed video's old rows are gone, and the served
        generation's entries for them are hidden until the new generation is published."""
        if not db_ids:
            return set()
        with self.sessions() as session:
            return set(session.scalars(select(Keyframe.id).where(Keyframe.id.in_(db_ids))))
