"""Searching the words of the collection: text clauses in, items (frames and images) ranked by their words out,
each with the lines that matched (why) and, for speech, the second the words were said.

SQLite matches with FTS5 (`text_fts`), PostgreSQL with its GIN-indexed tsvector (`tsv`); both see the folded
tokens of app.words, and every token reaches the engine quoted (FTS5) or as a bare lexeme (tsquery) made of word
characters only, so no user text is ever read as an operator.
"""
from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.items import ItemRef
from app.models import Image, Keyframe, TextLine, Video
from app.words import Clause, WordsQuery, ocr_tokens

LINES_PER_CLAUSE = 500  # best lines fetched per clause: a very common word is ranked among these
RANKED_AT_MOST = 10_000  # matches of one clause that are ranked at all
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al.): 1 / (RRF_K + rank)
WHY_PER_ITEM = 3


@dataclass
class WordMatch:
    """An item whose words match, its fused text score, and what to show for it."""

    ref: ItemRef
    score: float = 0.0
    why: list[dict] = field(default_factory=list)
    time: float | None = None  # speech: when the matched words were said
    clauses: set[int] = field(default_factory=set)  # which required clauses it meets


def _fts5(clause: Clause | None, words: list[str], source: str | None) -> str:
    match = '"' + " ".join(clause.words) + '"' if clause is not None else \
        " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
    return f"source : {source} AND folded : ({match})" if source else f"folded : ({match})"


def _tsquery(clause: Clause | None, words: list[str]) -> str:
    if clause is not None:
        return " <-> ".join(clause.words)
    return " | ".join(dict.fromkeys(words))


def matching_lines(session: Session, clause: Clause | None, words: list[str] = (), source: str | None = None,
                   limit: int = LINES_PER_CLAUSE) -> list[int]:
    """Ids of the lines that match a clause (or any of `words`), best first. Only the first RANKED_AT_MOST
    matches are ranked: a word in a quarter of a million lines tells little, and ranking them all took 250 ms
    at 1M lines."""
    source = clause.source if clause is not None else source
    params = {"limit": limit, "cap": RANKED_AT_MOST}
    if session.get_bind().dialect.name == "sqlite":
        params["q"] = _fts5(clause, list(words), source)
        sql = ("SELECT rowid FROM (SELECT rowid, bm25(text_fts, 1.0, 0.0) AS score FROM text_fts "
               "WHERE text_fts MATCH :q LIMIT :cap) ORDER BY score, rowid LIMIT :limit")
    else:
        params["q"], params["source"] = _tsquery(clause, list(words)), source
        where_source = " AND l.source = :source" if source else ""
        sql = ("SELECT id FROM (SELECT l.id, ts_rank(l.tsv, q) AS score FROM text_lines l, "
               f"to_tsquery('simple', :q) q WHERE l.tsv @@ q{where_source} LIMIT :cap) m "
               "ORDER BY score DESC, id LIMIT :limit")
    return [row[0] for row in session.execute(text(sql), params)]


def _said_at(line: TextLine, wanted: list[str], phrase: bool) -> float:
    """When the matched words start in a speech line: the phrase's first word, else the first wanted word."""
    words = [w for w, _, _ in json.loads(line.words_json or "[]")]
    times = [s for _, s, _ in json.loads(line.words_json or "[]")]
    if phrase and wanted:
        for i in range(len(words) - len(wanted) + 1):
            if words[i:i + len(wanted)] == wanted:
                return times[i]
    for word, at in zip(words, times, strict=True):
        if word in wanted:
            return at
    return line.start_s or 0.0




def why_of(line: TextLine, wanted: list[str], at: float | None) -> dict:
    """What a result shows of a matched line: OCR with its box, speech with its times; `words` are the query's
    words the line holds."""
    held = set(ocr_tokens(line.text))
    wanted = [w for w in dict.fromkeys(wanted) if w in held]
    if line.source == "ocr":
        return {"source": "ocr", "text": line.text, "box": [line.x, line.y, line.w, line.h], "words": wanted}
    return {"source": "asr", "text": line.text, "start": line.start_s, "end": line.end_s, "time": at,
            "words": wanted}


# what a matched line is read as (plain rows, not ORM objects: a clause reads hundreds of them)
LINE_COLUMNS = (TextLine.id, TextLine.source, TextLine.text, TextLine.keyframe_id, TextLine.image_id,
                TextLine.video_pk, TextLine.x, TextLine.y, TextLine.w, TextLine.h, TextLine.start_s, TextLine.end_s,
                TextLine.words_json)


class LineRefs:
    """Which item a matched line stands for: an OCR line its keyframe or image, a speech line the keyframe nearest
    the moment its words were said. The lines of a clause are looked up together, in one joined query."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._owner: dict[int, ItemRef | None] = {}  # OCR line id -> its item
        self._video: dict[int, str] = {}  # speech line id -> its video id
        self._times: dict[int, tuple[list[float], list[int]]] = {}  # video pk -> its keyframes' times and frames

    def load(self, line_ids: list[int]) -> dict[int, TextLine]:
        """The lines, and what each belongs to."""
        rows = self.session.execute(
            select(*LINE_COLUMNS, Video.video_id, Keyframe.frame_idx, Image.content_hash)
            .outerjoin(Keyframe, Keyframe.id == TextLine.keyframe_id)
            .outerjoin(Image, Image.id == TextLine.image_id)
            .outerjoin(Video, Video.id == func.coalesce(TextLine.video_pk, Keyframe.video_pk))
            .where(TextLine.id.in_(line_ids))).all()
        lines = {}
        for line in rows:
            video_id, frame_idx, digest = line.video_id, line.frame_idx, line.content_hash
            lines[line.id] = line
            if line.keyframe_id is not None and video_id is not None and frame_idx is not None:
                self._owner[line.id] = ItemRef.frame(video_id, frame_idx)
            elif line.image_id is not None and digest is not None:
                self._owner[line.id] = ItemRef.image(digest)
            elif video_id is not None:
                self._video[line.id] = video_id
        return lines

    def ref(self, line: TextLine, at: float | None) -> ItemRef | None:
        if line.id in self._owner:
            return self._owner[line.id]
        if line.id in self._video and line.video_pk is not None and at is not None:
            frame = self._nearest_keyframe(line.video_pk, at)
            return None if frame is None else ItemRef.frame(self._video[line.id], frame)
        return None

    def _nearest_keyframe(self, video_pk: int, seconds: float) -> int | None:
        """The frame of the video's keyframe nearest a moment (its keyframes read once per query)."""
        if video_pk not in self._times:
            rows = self.session.execute(select(Keyframe.pts_time, Keyframe.frame_idx)
                                        .where(Keyframe.video_pk == video_pk).order_by(Keyframe.pts_time)).all()
            self._times[video_pk] = ([r.pts_time for r in rows], [r.frame_idx for r in rows])
        times, frames = self._times[video_pk]
        if not times:
            return None
        at = bisect.bisect_left(times, seconds)
        near = [i for i in (at - 1, at) if 0 <= i < len(times)]
        return frames[min(near, key=lambda i: abs(times[i] - seconds))]


def rank_items(session: Session, query: WordsQuery, limit: int = LINES_PER_CLAUSE) -> list[WordMatch]:
    """Items meeting every required clause, ranked by reciprocal rank fusion over the clauses (and the plain
    words, which only add to the rank); an item's rank in a clause is that of its best line."""
    groups: list[tuple[Clause | None, list[str], bool]] = [(c, list(c.words), True) for c in query.required]
    if query.optional:
        groups.append((None, query.optional, False))
    refs = LineRefs(session)
    found: dict[ItemRef, WordMatch] = {}
    for number, (clause, wanted, required) in enumerate(groups):
        ids = matching_lines(session, clause, wanted, limit=limit)
        lines = refs.load(ids)
        rank = 0
        seen: set[ItemRef] = set()
        for line_id in ids:
            line = lines.get(line_id)
            if line is None:
                continue
            at = _said_at(line, wanted, clause is not None and len(wanted) > 1) if line.source == "asr" else None
            ref = refs.ref(line, at)
            if ref is None:
                continue
            match = found.setdefault(ref, WordMatch(ref))
            if len(match.why) < WHY_PER_ITEM:
                match.why.append(why_of(line, wanted, at))
            if at is not None and match.time is None:  # the best matching speech line's moment
                match.time = at
            if ref in seen:
                continue
            seen.add(ref)
            rank += 1
            match.score += 1 / (RRF_K + rank)
            if required:
                match.clauses.add(number)
    needed = set(range(len(query.required)))
    kept = [m for m in found.values() if needed <= m.clauses]
    kept.sort(key=lambda m: (-m.score, str(m.ref)))
    return kept


TRANSCRIPT_WINDOW_S = 60.0  # a keyframe page shows the speech this far around its moment


def ocr_lines_of(session: Session, ref: ItemRef) -> list[TextLine]:
    """The OCR lines of one frame or image, top to bottom."""
    if ref.is_frame:
        owner = TextLine.keyframe_id.in_(select(Keyframe.id).join(Video).where(
            Video.video_id == ref.video_id, Keyframe.frame_idx == ref.frame_idx))
    else:
        owner = TextLine.image_id.in_(select(Image.id).where(Image.content_hash == ref.image_hash))
    return list(session.scalars(select(TextLine).where(owner, TextLine.source == "ocr")
                                .order_by(TextLine.y, TextLine.x, TextLine.id)))


def transcript_near(session: Session, video_id: str, seconds: float,
                    window: float = TRANSCRIPT_WINDOW_S) -> list[TextLine]:
    """The speech of a video from `window` seconds before a moment to `window` after, in order."""
    return list(session.scalars(select(TextLine).join(Video, Video.id == TextLine.video_pk)
                                .where(Video.video_id == video_id, TextLine.source == "asr",
                                       TextLine.end_s >= seconds - window, TextLine.start_s <= seconds + window)
                                .order_by(TextLine.start_s, TextLine.id).limit(200)))
