"""A text query over pictures and words together: CLIP ranks the frames by what they show, the text indexes rank
them by the words on screen and in speech, and reciprocal rank fusion merges the two rankings.

Fusion works on ranks, not scores, because a cosine and a BM25 score are not comparable:
    fused(item) = picture_weight / (60 + rank by CLIP) + words_weight / (60 + rank by words)
An item missing from one ranking gets nothing from it, so an item both rankings like comes above either alone.
With required clauses (a quoted phrase, ocr:, asr:) only items that meet them are results; the plain words then
order them by picture and words. The score each hit shows stays the CLIP cosine (the slider keeps its meaning),
or, for a query with no plain words, the fused score scaled so the best possible is 1.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from app import vectors
from app.text_search import (
    IMAGE,
    KEYFRAME,
    OPTIONAL_ITEMS,
    REQUIRED_ITEMS,
    RRF_K,
    WordMatch,
    explain,
    rank_items,
)
from app.words import WordsQuery, parse

if TYPE_CHECKING:
    from app.collection import Snapshot
    from app.search import Hit, Options, Outcome, Searcher

PICTURE_DEPTH = 1000  # CLIP results fused with the words (the words' own results all take part)
MAX_QUERY_CHARS = 2000  # as app.search's: an evaluation's longer query text is read up to here


def _word_hits(snap: Snapshot, matches: list[WordMatch], allowed: np.ndarray | None,
               ) -> list[tuple[int, WordMatch]]:
    """The matches the served index holds and the filters let through, as (row, match), best first."""
    from app.vectors import KIND_IMAGE, KIND_KEYFRAME

    rows = np.full(len(matches), -1, dtype=np.int64)
    for kind, letter in ((KIND_KEYFRAME, KEYFRAME), (KIND_IMAGE, IMAGE)):
        at = [i for i, m in enumerate(matches) if m.key[0] == letter]
        if at:
            rows[at] = snap.rows_of_db(kind, np.array([matches[i].key[1] for i in at], dtype=np.int64))
    keep = rows >= 0
    if allowed is not None:
        keep &= np.isin(rows, allowed)
    return [(int(rows[i]), matches[i]) for i in np.flatnonzero(keep).tolist()]


def fused_hits(searcher: Searcher, query: WordsQuery, opts: Options, outcome: Outcome, depth: int) -> list[Hit]:
    """Every hit of a words query, best first (not yet cut to k, collapsed or filtered by score)."""
    from app.search import Hit, QueryError

    if not query.has_words and not query.picture_text:
        raise QueryError("the query has no words to search for")
    if opts.picture_weight == 0 and opts.words_weight == 0:
        raise QueryError("picture_weight and words_weight are both 0: nothing would rank the results")
    snap = searcher._snapshot()
    searcher.check_video(snap, opts, outcome)
    allowed = searcher._allowed(snap, opts)
    t0 = time.perf_counter()
    if query.required and opts.words_weight == 0:
        raise QueryError("words_weight is 0, but quoted phrases, ocr: and asr: are words: give them a weight")
    matches = []
    if opts.words_weight > 0 and query.has_words:
        with searcher.collection.sessions() as session:
            lone = len(query.required) <= 1 and allowed is None  # nothing else to meet: the shown ones suffice
            matches = rank_items(session, query, max(OPTIONAL_ITEMS, depth) if lone else REQUIRED_ITEMS)
            if not matches and query.required:
                outcome.notices.extend(unread_sources(session, query))
    words = _word_hits(snap, matches, allowed)
    outcome.timing_ms["words"] = (time.perf_counter() - t0) * 1000
    picture = None
    if query.picture_text and opts.picture_weight > 0:
        t1 = time.perf_counter()
        picture = searcher.encode_text(query.picture_text, outcome.notices)
        outcome.timing_ms["encode"] = (time.perf_counter() - t1) * 1000
    fused: dict[int, float] = {}
    cosine: dict[int, float] = {}
    if picture is not None:
        t2 = time.perf_counter()
        if query.required:  # only items meeting the clauses: rank those by picture
            rows = np.array([row for row, _ in words], dtype=np.int64)
            scores = [float(vectors.vector_of(snap.bundle, int(r)) @ picture.reshape(-1)) for r in rows]
            ranked = sorted(zip(rows.tolist(), scores, strict=True), key=lambda rs: (-rs[1], rs[0]))
        else:
            # deep only when there are word matches to fuse with: alone, the picture's own top `depth` is the answer
            want = max(depth, PICTURE_DEPTH) if words else depth
            found, rows = vectors.search(snap.bundle, picture, min(snap.bundle.size, want), allowed,
                                         opts.index_params)
            ranked = [(int(r), float(s)) for s, r in zip(found[0], rows[0], strict=True)
                      if r >= 0 and snap.visible(int(r))]
        outcome.timing_ms["search"] = (time.perf_counter() - t2) * 1000
        for rank, (row, score) in enumerate(ranked, start=1):
            fused[row] = opts.picture_weight / (RRF_K + rank)
            cosine[row] = score
    by_row = {}
    for rank, (row, match) in enumerate(words, start=1):
        fused[row] = fused.get(row, 0.0) + opts.words_weight / (RRF_K + rank)
        by_row[row] = match
        if picture is not None and row not in cosine:
            cosine[row] = float(vectors.vector_of(snap.bundle, row) @ picture.reshape(-1))
    best = (opts.picture_weight if picture is not None else 0.0) + (opts.words_weight if matches else 0.0)
    order = sorted(fused, key=lambda r: (-fused[r], r))[:max(depth, 1)]
    shown = [by_row[row] for row in order if row in by_row]
    with searcher.collection.sessions() as session:
        why = explain(session, shown)
    hits = []
    for row in order:
        match = by_row.get(row)
        scaled = fused[row] * (RRF_K + 1) / max(best, 1e-9)  # 1: first in every ranking that took part
        hits.append(Hit(row, cosine[row] if picture is not None else scaled, snap.entry(row),
                        why=why.get(match.key, []) if match else [], time=match.time if match else None,
                        fused=scaled))
    return searcher.settled_hits(snap, hits)


READ_BY = {"ocr": ("on-screen text", "--ocr"), "asr": ("speech", "--asr")}


def unread_sources(session, query: WordsQuery) -> list[str]:
    """Why a words query may have found nothing: the collection has no lines of the kind it asks for."""
    from sqlalchemy import select

    from app.models import TextLine

    asked = {c.source for c in query.required} | ({"ocr", "asr"} if any(c.source is None for c in query.required)
                                                    else set())
    notices = []
    for source in sorted(asked - {None}):
        if session.scalar(select(TextLine.id).where(TextLine.source == source).limit(1)) is None:
            what, flag = READ_BY[source]
            notices.append(f"No {what} has been read in this collection yet: index it with {flag} (on by default "
                           f"when its model loads), e.g. `offline.py index PATHS {flag}`.")
    return notices


def search_text(searcher: Searcher, text: str, opts: Options, outcome: Outcome) -> Outcome:
    """The search box's text: words (OCR, speech) and picture (CLIP) fused, then shaped as every search is."""
    from app.search import MAX_QUERY_CHARS, QueryError

    text = (text or "").strip()
    if not text:
        raise QueryError("the query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    query = parse(text)
    outcome.notices.extend(query.notices)
    hits = fused_hits(searcher, query, opts, outcome, opts.k * (4 if opts.collapse_shots else 1))
    outcome.hits = searcher._shape(hits, opts, outcome)
    return outcome


class _Pinned:
    """A collection that always answers with one snapshot: an evaluation ranks against the generation it named
    its items by, even if a newer one is published meanwhile."""

    def __init__(self, snap: Snapshot, sessions) -> None:
        self.snap, self.sessions = snap, sessions

    def snapshot(self) -> Snapshot:
        return self.snap

    def settled(self, snap: Snapshot, videos: set[str]) -> set[str]:
        return videos


def has_words(sessions) -> bool:
    """Whether OCR or speech has put any words in the catalogue."""
    from sqlalchemy import select

    from app.models import TextLine

    with sessions() as session:
        return session.scalar(select(TextLine.id).limit(1)) is not None


def pinned_ranking(snap: Snapshot, sessions, encoder):
    """A text query's fused ranking over `snap` as (rows, scores), best first: what the search box gives, for the
    evaluation of moments whose queries are words."""
    from app.search import Options, Outcome, Searcher

    searcher = Searcher(_Pinned(snap, sessions), encoder)  # type: ignore[arg-type]

    def rank(text: str, depth: int) -> tuple[np.ndarray, np.ndarray] | None:
        """None when the text is no words query (no words in it, too many clauses): CLIP alone ranks it then."""
        from app.search import QueryError

        try:
            hits = fused_hits(searcher, parse(text[:MAX_QUERY_CHARS]), Options(k=depth), Outcome(), depth)[:depth]
        except QueryError:
            return None
        return (np.array([h.row for h in hits], dtype=np.int64),
                np.array([h.fused if h.fused is not None else h.score for h in hits], dtype=np.float32))

    return rank
