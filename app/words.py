"""Words as the text indexes see them: folding (case and accents away, so "ha noi" finds "Hà Nội") and the query
syntax of the search box.

Folding is done here, in Python, for what is stored and for what is asked, so SQLite and PostgreSQL index and
match exactly the same tokens; neither engine's own tokenizer folds Vietnamese "đ" to "d".

The search box understands:
  "quoted words"   a phrase, on screen or spoken; required
  ocr:word         only on-screen text (ocr:"two words" for a phrase); required
  asr:word         only speech; required
  plain words      searched by CLIP (the picture) and in both text indexes (any of them; more and rarer words rank
                   higher), the two rankings fused
Anything else (FTS operators, brackets, stars, a quote left open) is taken literally: only its words are searched.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from markupsafe import Markup, escape

from app.search import QueryError

SOURCES = ("ocr", "asr")
MAX_TOKENS = 32  # plain words of one query that reach the text index (a 10 KB query is cut, and said so)
MAX_CLAUSES = 8  # required clauses: each is a query of its own
MAX_PHRASE = 16  # words of one phrase
MAX_TOKEN_CHARS = 64
_WORD = re.compile(r"\w+", re.UNICODE)
_SPECIAL = str.maketrans({"đ": "d", "Đ": "d", "ð": "d", "ø": "o", "Ø": "o", "ł": "l", "Ł": "l", "ß": "ss",
                          "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "ı": "i"})
_CLAUSE = re.compile(r'(?:(?P<source>ocr|asr):)?(?:"(?P<phrase>[^"]*)(?:"|$)|(?P<word>\S+))', re.IGNORECASE)


def fold(text: str) -> str:
    """Lower case, accents and marks removed, letters without a decomposition (đ, ø, ß) spelled plainly."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_SPECIAL))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def tokens(text: str) -> list[str]:
    """The folded words of a text, as both indexes store them (underscores split words too)."""
    return [t[:MAX_TOKEN_CHARS] for t in _WORD.findall(fold(text).replace("_", " "))]


GLUED_MIN_CHARS = 6


def ocr_tokens(text: str) -> list[str]:
    """The tokens of an OCR line, each glued run of English words also split into its words after it: the
    recogniser often drops the spaces of a Latin line ("EMERGENCYEXIT"), and "emergency exit emergencyexit" is
    then found by `exit` and by "emergency exit". The split is wordninja's (English word frequencies)."""
    import wordninja

    out = []
    for token in tokens(text):
        if len(token) >= GLUED_MIN_CHARS and token.isascii() and token.isalnum():
            parts = wordninja.split(token)
            if len(parts) > 1 and all(len(p) > 1 or p.isdigit() for p in parts):
                out.extend(p.lower() for p in parts)  # first, so "feeding time3pm" keeps "feeding time" a phrase
        out.append(token)
    return out


@dataclass(frozen=True)
class Clause:
    """Words that must all appear, in this order and next to each other (a phrase) when there are several."""

    words: tuple[str, ...]
    source: str | None = None  # "ocr", "asr" or None (either)

    def __str__(self) -> str:
        text = " ".join(self.words)
        quoted = f'"{text}"' if len(self.words) > 1 else text
        return f"{self.source}:{quoted}" if self.source else quoted


@dataclass
class WordsQuery:
    """A search box's text, split into what the text indexes need and what CLIP reads."""

    required: list[Clause] = field(default_factory=list)  # phrases and ocr:/asr: terms
    optional: list[str] = field(default_factory=list)  # plain words (folded)
    picture_text: str = ""  # the plain words as typed: CLIP's query
    notices: list[str] = field(default_factory=list)

    @property
    def has_words(self) -> bool:
        return bool(self.required or self.optional)


def parse(text: str) -> WordsQuery:
    """The search box's text as clauses (anything unknown is literal words); QueryError only for more than
    MAX_CLAUSES required clauses."""
    query = WordsQuery()
    picture: list[str] = []
    for match in _CLAUSE.finditer(text or ""):
        source = (match.group("source") or "").lower() or None
        phrase = match.group("phrase")
        if source is None and phrase is None and match.group("word").lower() in ("ocr:", "asr:"):
            query.notices.append(f"{match.group('word')} needs a word or a \"phrase\" right after it, with no "
                                 f"space (ocr:exit); it was left out.")
            continue
        words = tokens(phrase if phrase is not None else match.group("word"))
        if not words:
            continue
        if source is None and phrase is None:
            picture.append(match.group("word"))  # CLIP reads the plain words, however many (its tokenizer cuts)
            fresh = [w for w in words if w not in query.optional]
            if len(query.optional) + len(fresh) > MAX_TOKENS:
                _notice(query, f"Only the first {MAX_TOKENS} different plain words were searched in on-screen "
                               f"text and speech.")
                fresh = fresh[:MAX_TOKENS - len(query.optional)]
            query.optional.extend(fresh)
            continue
        if len(words) > MAX_PHRASE:
            _notice(query, f"A phrase is searched by its first {MAX_PHRASE} words.")
            words = words[:MAX_PHRASE]
        clause = Clause(tuple(words), source)
        if clause in query.required:
            continue
        if len(query.required) == MAX_CLAUSES:
            raise QueryError(f"at most {MAX_CLAUSES} quoted phrases, ocr: and asr: terms in one query: every one "
                             f"must match, so leave out the ones that matter least")
        query.required.append(clause)
    query.picture_text = " ".join(picture)
    return query


def _notice(query: WordsQuery, text: str) -> None:
    if text not in query.notices:
        query.notices.append(text)


_CHUNKS = re.compile(r"(\w+)", re.UNICODE)


def highlight(text: str, words) -> Markup:
    """The text, escaped, with the words of `words` (folded tokens) in <mark>: a result's matched line."""
    wanted = set(words or ())
    out = []
    for i, chunk in enumerate(_CHUNKS.split(text or "")):
        escaped = escape(chunk)
        out.append(Markup(f"<mark>{escaped}</mark>") if i % 2 and wanted & set(ocr_tokens(chunk)) else escaped)
    return Markup("").join(out)
