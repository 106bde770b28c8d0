"""Searching the words of the collection: text clauses in, items (keyframes and images) ranked by their words out,
each with the lines that matched (why) and, for speech, the second the words were said.

SQLite matches with FTS5 (`text_fts`), PostgreSQL with its GIN-indexed tsvector (`tsv`); both see the folded
tokens of app.words, and every token reaches the engine quoted (FTS5) or as a bare lexeme (tsquery) made of word
characters only, so no user text is ever read as an operator.

A clause ranks items, not lines: each picture (or each stretch of speech) counts once, by its best line, so a
picture holding a word 120 times does not crowd out the others. An item is named by its catalogue id (a keyframe
or an image); a speech line stands for the keyframe nearest the second its words were said.
"""
from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.items import ItemRef
from app.models import Keyframe, TextLine, Video, on_item
from app.words import Clause, WordsQuery, ocr_tokens

OPTIONAL_ITEMS = 500  # items the plain words rank (they only add to the order)
REQUIRED_ITEMS = 10_000  # items a required clause may name: every one is checked against the other clauses
RANKED_AT_MOST = 10_000  # matches of one clause that are ranked at all: a word in a quarter of a million lines
# tells little, and ranking them all took 250 ms at 1M lines
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al.): 1 / (RRF_K + rank)
WHY_PER_ITEM = 3
KEYFRAME, IMAGE = "k", "i"


@dataclass
class WordMatch:
    """An item whose words match (`key`: ("k", keyframe id) or ("i", image id)), its fused text score, the lines
    that matched it and, for speech, when the words were said."""

    key: tuple[str, int]
    score: float = 0.0
    lines: list[tuple[int, list[str]]] = field(default_factory=list)  # (line id, the clause's words)
    time: float | None = None
    clauses: set[int] = field(default_factory=set)  # which clauses it meets (the plain words are the last)


def _fts5(clause: Clause | None, words: list[str], source: str | None) -> str:
    match = '"' + " ".join(clause.words) + '"' if clause is not None else \
        " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
    return f"source : {source} AND folded : ({match})" if source else f"folded : ({match})"


def _tsquery(clause: Clause | None, words: list[str]) -> str:
    if clause is not None:
        return " <-> ".join(clause.words)
    return " | ".join(dict.fromkeys(words))


LINES_PER_ITEM = 4  # lines read per item wanted, before grouping them by item
_BEST_LINES = ("SELECT l.id, l.keyframe_id, l.image_id, l.video_pk, l.source, l.start_s, l.words_json "
               "FROM m JOIN text_lines l ON l.id = m.id ORDER BY m.score{desc}, l.id LIMIT :limit")
# the best line of each owner (a keyframe, an image, or the speech line itself), best owners first
_BEST_PER_OWNER = ("SELECT id, keyframe_id, image_id, video_pk, source, start_s, words_json FROM ("
                   "SELECT l.id, l.keyframe_id, l.image_id, l.video_pk, l.source, l.start_s, l.words_json, m.score, "
                   "ROW_NUMBER() OVER (PARTITION BY l.keyframe_id, l.image_id, "
                   "CASE WHEN l.source = 'asr' THEN l.id END ORDER BY m.score{desc}, l.id) AS place "
                   "FROM m JOIN text_lines l ON l.id = m.id) owners WHERE place = 1 "
                   "ORDER BY score{desc}, id LIMIT :limit")


def matching_lines(session: Session, clause: Clause | None, words: list[str] = (), source: str | None = None,
                   limit: int = OPTIONAL_ITEMS) -> list:
    """The best line of each item that matches a clause (or any of `words`), best items first (rows of id,
    keyframe_id, image_id, video_pk, source, start_s, words_json)."""
    source = clause.source if clause is not None else source
    params = {"limit": limit * LINES_PER_ITEM, "cap": RANKED_AT_MOST}
    if session.get_bind().dialect.name == "sqlite":
        params["q"] = _fts5(clause, list(words), source)
        matched = ("WITH m AS (SELECT rowid AS id, bm25(text_fts, 1.0, 0.0) AS score FROM text_fts "
                   "WHERE text_fts MATCH :q LIMIT :cap) ")
        desc = ""
    else:
        params["q"], params["source"] = _tsquery(clause, list(words)), source
        where_source = " AND l.source = :source" if source else ""
        matched = ("WITH m AS (SELECT l.id, ts_rank(l.tsv, q) AS score FROM text_lines l, "
                   f"to_tsquery('simple', :q) q WHERE l.tsv @@ q{where_source} LIMIT :cap) ")
        desc = " DESC"
    # the best lines first (a top-N, cheap), kept one per item; only when a few items hold most of them is every
    # match grouped by item (a sort of all of them)
    lines = list(session.execute(text(matched + _BEST_LINES.format(desc=desc)), params))
    seen: set[tuple] = set()
    best = []
    for row in lines:
        if _owner(row) not in seen:
            seen.add(_owner(row))
            best.append(row)
    if len(best) >= limit or len(lines) < params["limit"]:
        return best[:limit]
    params["limit"] = limit
    return list(session.execute(text(matched + _BEST_PER_OWNER.format(desc=desc)), params))


def _owner(row) -> tuple:
    return row.keyframe_id, row.image_id, row.id if row.source == "asr" else None


def _said_at(words_json: str | None, start_s: float | None, wanted: list[str], phrase: bool) -> float:
    """When the matched words start in a speech line: the phrase's first word, else the first wanted word."""
    timed = json.loads(words_json or "[]")
    words, times = [w for w, _, _ in timed], [s for _, s, _ in timed]
    if phrase and wanted:
        for i in range(len(words) - len(wanted) + 1):
            if words[i:i + len(wanted)] == wanted:
                return times[i]
    for word, at in zip(words, times, strict=True):
        if word in wanted:
            return at
    return start_s or 0.0


class NearestKeyframe:
    """The keyframe of a video nearest a second (each video's keyframes read once per query)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._videos: dict[int, tuple[list[float], list[int]]] = {}

    def __call__(self, video_pk: int, seconds: float) -> int | None:
        if video_pk not in self._videos:
            rows = self.session.execute(select(Keyframe.pts_time, Keyframe.id).where(Keyframe.video_pk == video_pk)
                                        .order_by(Keyframe.pts_time, Keyframe.n)).all()
            self._videos[video_pk] = ([r.pts_time for r in rows], [r.id for r in rows])
        times, ids = self._videos[video_pk]
        if not times:
            return None
        at = bisect.bisect_left(times, seconds)
        near = [i for i in (at - 1, at) if 0 <= i < len(times)]
        return ids[min(near, key=lambda i: abs(times[i] - seconds))]


def rank_items(session: Session, query: WordsQuery, required_items: int = REQUIRED_ITEMS) -> list[WordMatch]:
    """Items meeting every required clause, ranked by reciprocal rank fusion over the clauses (and the plain
    words, which only add to the rank); an item's rank in a clause is that of its best line. A required clause
    that matches nothing ends the search at once. `required_items`: how many items a required clause may name
    (all of REQUIRED_ITEMS when they must be checked against other clauses or filters; a lone clause with no
    filter needs only as many as will be shown)."""
    groups: list[tuple[Clause | None, list[str], bool]] = [(c, list(c.words), True) for c in query.required]
    if query.optional:
        groups.append((None, query.optional, False))
    nearest = NearestKeyframe(session)
    found: dict[tuple[str, int], WordMatch] = {}
    for number, (clause, wanted, required) in enumerate(groups):
        rows = matching_lines(session, clause, wanted, limit=required_items if required else OPTIONAL_ITEMS)
        if required and not rows:
            return []
        rank = 0
        for row in rows:
            at = None
            if row.source == "asr":
                at = _said_at(row.words_json, row.start_s, wanted, clause is not None and len(wanted) > 1)
                keyframe = nearest(row.video_pk, at) if row.video_pk is not None else None
                key = (KEYFRAME, keyframe) if keyframe is not None else None
            else:
                key = (KEYFRAME, row.keyframe_id) if row.keyframe_id is not None else \
                    (IMAGE, row.image_id) if row.image_id is not None else None
            if key is None:
                continue
            match = found.setdefault(key, WordMatch(key))
            if number in match.clauses:
                continue  # this clause already counted this item (two speech lines near one keyframe)
            rank += 1
            match.score += 1 / (RRF_K + rank)
            shown = next((i for i, (line, _) in enumerate(match.lines) if line == row.id), None)
            if shown is not None:  # one line meets two clauses: shown once, with the words of both
                match.lines[shown] = (row.id, list(dict.fromkeys(match.lines[shown][1] + wanted)))
            elif len(match.lines) < WHY_PER_ITEM:
                match.lines.append((row.id, wanted))
            if at is not None and match.time is None:
                match.time = at
            match.clauses.add(number)
    needed = set(range(len(query.required)))
    kept = [m for m in found.values() if needed <= m.clauses]
    kept.sort(key=lambda m: (-m.score, m.key))
    return kept


def why_of(line, wanted: list[str], at: float | None) -> dict:
    """What a result shows of a matched line: OCR with its box, speech with its times; `words` are the query's
    words the line holds."""
    held = set(ocr_tokens(line.text))
    wanted = [w for w in dict.fromkeys(wanted) if w in held]
    if line.source == "ocr":
        return {"source": "ocr", "text": line.text, "box": [line.x, line.y, line.w, line.h], "words": wanted}
    return {"source": "asr", "text": line.text, "start": line.start_s, "end": line.end_s, "time": at,
            "words": wanted}


def explain(session: Session, matches: list[WordMatch]) -> dict[tuple[str, int], list[dict]]:
    """The `why` of each match (its matched lines, read in one query): for the hits a page shows."""
    ids = {line_id for m in matches for line_id, _ in m.lines}
    if not ids:
        return {}
    lines = {line.id: line for line in session.scalars(select(TextLine).where(TextLine.id.in_(ids)))}
    out = {}
    for m in matches:
        out[m.key] = [why_of(lines[line_id], wanted, m.time if lines[line_id].source == "asr" else None)
                      for line_id, wanted in m.lines if line_id in lines]
    return out


TRANSCRIPT_WINDOW_S = 60.0  # a keyframe page shows the speech this far around its moment


def ocr_lines_of(session: Session, ref: ItemRef) -> list[TextLine]:
    """The OCR lines of one frame or image, top to bottom."""
    return list(session.scalars(select(TextLine).where(on_item(TextLine, ref), TextLine.source == "ocr")
                                .order_by(TextLine.y, TextLine.x, TextLine.id)))


def transcript_near(session: Session, video_id: str, seconds: float,
                    window: float = TRANSCRIPT_WINDOW_S) -> list[TextLine]:
    """The speech of a video from `window` seconds before a moment to `window` after, in order."""
    return list(session.scalars(select(TextLine).join(Video, Video.id == TextLine.video_pk)
                                .where(Video.video_id == video_id, TextLine.source == "asr",
                                       TextLine.end_s >= seconds - window, TextLine.start_s <= seconds + window)
                                .order_by(TextLine.start_s, TextLine.id).limit(200)))
