"""Query logic: text, image, region, combined and sequence queries over the served collection.

Everything here works on unit vectors and FAISS rows; the web layer only parses input
and renders what comes back.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from app import vectors
from app.collection import Collection, Entry, Snapshot
from app.encoders import ClipEncoder
from app.numbers import finite

MAX_K = 1000
MAX_QUERY_CHARS = 2000


class QueryError(ValueError):
    """Bad query input: shown to the user as a 4xx with this message."""


@dataclass
class Hit:
    row: int
    score: float  # cosine with the picture query; for a words-only query, the fused score scaled to 0..1
    entry: Entry
    why: list[dict] = field(default_factory=list)  # the matched OCR lines or speech (app.text_search.why_of)
    time: float | None = None  # speech: when the matched words were said (else the keyframe's time)
    fused: float | None = None  # reciprocal rank fusion score scaled to 0..1, when words took part

    @property
    def moment(self) -> float | None:
        """The second this hit stands for: when its words were said, else its keyframe's time."""
        return self.time if self.time is not None else self.entry.pts_time


@dataclass
class Moment:
    """A sequence match: one hit per event, in order, in one video."""

    video_id: str
    hits: list[Hit]
    score: float


@dataclass
class Options:
    k: int = 100
    min_score: float = 0.0  # percent
    relative: bool = False  # min_score relative to the best score of this query
    video: str | None = None
    folder: str | None = None
    label: str | None = None  # only items that carry a saved box with this label
    person: str | None = None  # only items showing this named person (People page)
    objects: tuple = ()  # app.object_filter conditions: at least N detected objects of a class or category
    group_by_video: bool = False
    collapse_shots: bool = False
    index_params: dict | None = None  # per-query nprobe / efSearch / rerank overrides
    picture_weight: float = 1.0  # reciprocal rank fusion: weight of the CLIP ranking
    words_weight: float = 1.0  # and of the words ranking (OCR and speech)


@dataclass
class Outcome:
    hits: list[Hit] = field(default_factory=list)
    moments: list[Moment] = field(default_factory=list)
    timing_ms: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    filtered_out: bool = False  # results existed but none passed min_score
    faces: dict = field(default_factory=dict)  # item -> face search hit (a person search draws its faces)


def format_time(seconds: float | None) -> str:
    """A moment's time as hh:mm:ss.s, as pages and the terminal show it."""
    if seconds is None:
        return ""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:04.1f}"


def parse_k(raw: str | int | None, default: int = 100) -> int:
    try:
        k = int(raw) if raw not in (None, "") else default
    except (TypeError, ValueError):
        raise QueryError("k must be a whole number") from None
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}")
    return k


def parse_min_score(raw: str | float | None) -> float:
    try:
        value = float(raw) if raw not in (None, "") else 0.0
    except (TypeError, ValueError):
        raise QueryError("min_score must be a number (percent)") from None
    if not 0 <= value <= 100:
        raise QueryError("min_score must be between 0 and 100 (percent)")
    return value


def parse_weight(raw: str | float | None, name: str) -> float:
    """A fusion weight (app.fusion): 0 leaves that ranking out, 10 at most; empty means 1."""
    if raw in (None, ""):
        return 1.0
    try:
        return finite(raw, name, 0, 10)
    except ValueError as exc:
        raise QueryError(str(exc)) from None


MAX_BOX = 1_000_000  # pixels: far beyond any image, far below any overflow


def parse_box(raw: str | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """'x,y,w,h' in the image's own pixels; must lie inside the image with a positive size."""
    if not raw:
        return None
    parts = raw.split(",")
    if len(parts) != 4:
        raise QueryError("box must be four numbers: x,y,w,h")
    try:
        x, y, w, h = (round(finite(v, "each box number", -MAX_BOX, MAX_BOX)) for v in parts)
    except ValueError as exc:
        raise QueryError(f"box must be four finite numbers x,y,w,h ({exc})") from None
    if w <= 0 or h <= 0:
        raise QueryError("box must have a positive width and height")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise QueryError(f"box {x},{y},{w},{h} lies outside the {width}x{height} image")
    return x, y, w, h


class Searcher:
    def __init__(self, collection: Collection, encoder: ClipEncoder) -> None:
        self.collection = collection
        self.encoder = encoder
        self._text_cache: dict[str, np.ndarray] = {}

    # -- encoding -----------------------------------------------------------------------------
    def encode_text(self, text: str, notices: list[str]) -> np.ndarray:
        """The query's unit vector (1, D), from the per-text cache or the encoder's warm text engine (ONNX Runtime
        or torch, app.text_onnx)."""
        text = (text or "").strip()
        if not text:
            raise QueryError("the query is empty")
        if len(text) > MAX_QUERY_CHARS:
            raise QueryError(f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
        tokenizer = self.encoder.tokenizer
        if hasattr(tokenizer, "encode") and len(tokenizer.encode(text)) + 2 > self.encoder.context_length:
            notices.append(f"The query is longer than the model's {self.encoder.context_length} tokens; "
                           f"only its beginning was used.")
        vec = self._text_cache.get(text)
        if vec is None:  # held in a local: another request thread may clear the cache meanwhile
            vec = self.encoder.encode_text([text])
            if len(self._text_cache) > 512:
                self._text_cache.clear()
            self._text_cache[text] = vec
        return vec

    def encode_image(self, image: Image.Image, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        if box is not None:
            x, y, w, h = box
            image = image.crop((x, y, x + w, y + h))
        return self.encoder.encode_images([image.convert("RGB")])

    @staticmethod
    def combine(text_vec: np.ndarray | None, image_vec: np.ndarray | None, text_weight: float) -> np.ndarray:
        """Weighted sum of the normalised embeddings, normalised again."""
        if text_vec is None:
            return image_vec
        if image_vec is None:
            return text_vec
        mixed = text_weight * text_vec + (1 - text_weight) * image_vec
        return (mixed / max(float(np.linalg.norm(mixed)), 1e-12)).astype(np.float32)

    # -- searching ------------------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        snap = self.collection.snapshot()
        if snap is None:
            raise QueryError("the collection has no index yet: run `python offline.py index PATH` first")
        if snap.bundle.meta.get("dim") != self.encoder.dim:
            raise QueryError("the index was built with another model than the server's; restart the server")
        return snap

    def _allowed(self, snap: Snapshot, opts: Options) -> np.ndarray | None:
        """Filters restrict the search itself, so a filtered query still gets K results."""
        if not opts.video and not opts.folder and not opts.label and not opts.person and not opts.objects:
            return None
        mask = np.ones(snap.size, dtype=bool)
        if opts.objects:
            meeting = np.zeros(snap.size, dtype=bool)
            meeting[self.collection.object_rows(snap, opts.objects)] = True
            mask &= meeting
        if opts.person:
            shown = np.zeros(snap.size, dtype=bool)
            shown[self.collection.person_rows(snap, opts.person)] = True
            mask &= shown
        if opts.label:
            labelled = np.zeros(snap.size, dtype=bool)
            labelled[self.collection.labelled_rows(snap, opts.label)] = True
            mask &= labelled
        remote = snap.bundle.remote is not None  # Milvus filters video and folder itself, on fields of each vector
        listed = np.flatnonzero(mask) if remote and (opts.objects or opts.person or opts.label) else None
        if opts.video:
            mask &= snap.rows_of_video(opts.video)
        if opts.folder:
            mask &= snap.rows_in_folder(opts.folder)
        if remote:
            return vectors.Filter(np.flatnonzero(mask).astype(np.int64), opts.video or None,
                                  snap.folders_under(opts.folder) if opts.folder else None, listed)
        return np.flatnonzero(mask).astype(np.int64)

    def search(self, query: np.ndarray, opts: Options, outcome: Outcome) -> Outcome:
        snap = self._snapshot()
        self.check_video(snap, opts, outcome)
        t0 = time.perf_counter()
        fetch = min(snap.bundle.size, opts.k * (4 if opts.collapse_shots else 1))
        scores, rows = vectors.search(snap.bundle, query, fetch, self._allowed(snap, opts), opts.index_params)
        outcome.timing_ms["search"] = (time.perf_counter() - t0) * 1000
        hits = [Hit(int(r), float(s), snap.entry(int(r))) for s, r in zip(scores[0], rows[0], strict=True)
                if r >= 0 and snap.visible(int(r))]
        outcome.hits = self._shape(self.settled_hits(snap, hits), opts, outcome)
        return outcome

    @staticmethod
    def check_video(snap: Snapshot, opts: Options, outcome: Outcome) -> None:
        if opts.video and not snap.has_video(opts.video):
            outcome.notices.append(f"There is no video '{opts.video[:100]}' in the collection (video ids are file "
                                   f"names without extension, as results show them).")

    def settled_hits(self, snap: Snapshot, hits: list[Hit]) -> list[Hit]:
        """A re-index may be switching a video's files right now: its hits wait for the next generation."""
        videos = {h.entry.video_id for h in hits if h.entry.video_id is not None}
        if not videos:
            return hits
        settled = self.collection.settled(snap, videos)
        return [h for h in hits if h.entry.video_id is None or h.entry.video_id in settled]

    def search_text(self, text: str, opts: Options, outcome: Outcome) -> Outcome:
        """Words and picture together (app.fusion): what the search box runs for text."""
        from app.fusion import search_text

        return search_text(self, text, opts, outcome)

    def _shape(self, hits: list[Hit], opts: Options, outcome: Outcome) -> list[Hit]:
        if opts.collapse_shots:
            seen: set = set()
            kept = []
            for h in hits:
                key = ("shot", h.entry.shot_id) if h.entry.shot_id is not None else ("row", h.row)
                if key not in seen:
                    seen.add(key)
                    kept.append(h)
            hits = kept
        hits = hits[:opts.k]
        if opts.min_score > 0 and hits:
            floor = opts.min_score / 100 * (max(h.score for h in hits) if opts.relative else 1.0)
            passed = [h for h in hits if h.score >= floor or h.why]  # the slider is for pictures; words matched
            outcome.filtered_out = not passed
            hits = passed
        if opts.group_by_video:
            order: dict[str, int] = {}
            for h in hits:
                order.setdefault(h.entry.video_id or h.entry.name, len(order))
            hits = sorted(hits, key=lambda h: order[h.entry.video_id or h.entry.name])
        return hits

    def sequence(self, queries: list[np.ndarray | str], max_gap_s: float, opts: Options,
                 outcome: Outcome) -> Outcome:
        """Event A then event B (then C...) in one video, each within max_gap_s of the previous. An event is a
        vector (CLIP alone) or the search box's text (words and picture, app.fusion); a spoken event's moment is
        when its words were said."""
        if len(queries) < 2:
            raise QueryError("a sequence needs at least two events")
        if not 0 < max_gap_s <= 3600:
            raise QueryError("the maximum gap must be between 0 and 3600 seconds")
        per_event = []
        wide = Options(k=min(MAX_K * 2, max(opts.k * 10, 200)), video=opts.video, folder=opts.folder,
                       label=opts.label, person=opts.person, objects=opts.objects,
                       picture_weight=opts.picture_weight, words_weight=opts.words_weight)
        t0 = time.perf_counter()
        for query in queries:
            found = (self.search_text(query, wide, outcome) if isinstance(query, str)
                     else self.search(query, wide, Outcome())).hits
            per_event.append([h for h in found if h.entry.video_id is not None])
            outcome.hits = []
        chains: list[Moment] = [Moment(h.entry.video_id, [h], _strength(h)) for h in per_event[0]]
        for hits in per_event[1:]:
            by_video: dict[str, list[Hit]] = {}
            for h in hits:
                by_video.setdefault(h.entry.video_id, []).append(h)
            extended = []
            for chain in chains:
                t_prev = chain.hits[-1].moment
                nexts = [h for h in by_video.get(chain.video_id, []) if t_prev < h.moment <= t_prev + max_gap_s]
                if nexts:
                    best = max(nexts, key=_strength)
                    extended.append(Moment(chain.video_id, chain.hits + [best], chain.score + _strength(best)))
            chains = extended
        chains.sort(key=lambda m: -m.score)
        used: set[int] = set()
        distinct = []
        for chain in chains:  # each frame belongs to one moment: the best one it is part of
            rows = {h.row for h in chain.hits}
            if not rows & used:
                used |= rows
                distinct.append(chain)
        outcome.moments = distinct[:opts.k]
        outcome.timing_ms["search"] = (time.perf_counter() - t0) * 1000
        return outcome


def _strength(hit: Hit) -> float:
    """How well a hit answers its event: the fused score (0..1) when words took part, else the cosine."""
    return hit.fused if hit.fused is not None else hit.score
