"""The words layer's own rules, from examples written out by hand: folding, the query syntax, glued OCR words,
highlighting."""
from __future__ import annotations

from app.words import Clause, fold, highlight, ocr_tokens, parse, tokens


def test_folding_takes_case_and_accents_away():
    assert fold("Hà Nội") == "ha noi"
    assert fold("ĐÀ NẴNG") == "da nang"
    assert fold("Straße Ørsted Łódź") == "strasse orsted lodz"
    assert tokens("Breaking news: storm-warning, 3-1!") == ["breaking", "news", "storm", "warning", "3", "1"]
    assert tokens("ＧＯＡＬ！") == ["goal"]  # full-width letters are letters


def test_the_search_box_syntax():
    q = parse('red bus "thank you" ocr:EXIT asr:"will speak" Ocr:Hà')
    assert q.optional == ["red", "bus"] and q.picture_text == "red bus"
    assert q.required == [Clause(("thank", "you")), Clause(("exit",), "ocr"), Clause(("will", "speak"), "asr"),
                          Clause(("ha",), "ocr")]


def test_operators_and_open_quotes_are_literal():
    assert parse('"abc').required == [Clause(("abc",))]
    assert parse("NEAR(a b").optional == ["near", "a", "b"]
    q = parse("* ( ) ^ :")
    assert not q.has_words and q.picture_text == ""
    bare = parse("ocr: rain")
    assert bare.optional == ["rain"] and not bare.required and "ocr:" in bare.notices[0]


def test_a_long_query_keeps_its_first_words_for_the_text_index():
    q = parse("storm " * 500)
    assert q.optional == ["storm"] and not q.notices and q.picture_text.count("storm") == 500
    q = parse(" ".join(f"w{i}" for i in range(40)) + " ocr:giraffe")
    assert len(q.optional) == 32 and q.notices and q.required == [Clause(("giraffe",), "ocr")]
    assert parse("ocr:w0 " * 32).required == [Clause(("w0",), "ocr")]  # the same clause once
    assert len(parse('"' + "a " * 40 + '"').required[0].words) == 16


def test_more_required_clauses_than_a_query_holds_is_refused():
    import pytest

    from app.search import QueryError

    with pytest.raises(QueryError, match="at most 8"):
        parse(" ".join(f"ocr:w{i}" for i in range(9)))


def test_glued_ocr_words_are_split_before_the_glued_token():
    assert ocr_tokens("EMERGENCYEXIT") == ["emergency", "exit", "emergencyexit"]
    assert ocr_tokens("Feeding time3PM")[:4] == ["feeding", "time", "3", "pm"]  # "feeding time" stays a phrase
    assert ocr_tokens("Hà Nội") == ["ha", "noi"]  # short or accented words are left alone
    assert ocr_tokens("departures") == ["departures"]  # one known word: no split


def test_highlight_marks_matched_words_and_escapes_everything():
    assert str(highlight("Breaking news: <b>storm</b>", ["storm"])) == \
        "Breaking news: &lt;b&gt;<mark>storm</mark>&lt;/b&gt;"
    assert str(highlight("Hà Nội", ["ha"])) == "<mark>Hà</mark> Nội"
    assert "<script>" not in str(highlight("<script>alert(1)</script>", ["alert"]))
