"""Words in video with the real models: RapidOCR reads rendered captions, PocketSphinx hears espeak-ng speech.
offline.py indexes and server.py serves, in separate processes, on SQLite and on PostgreSQL.

What each query should find comes from how the media were made (which shot shows which caption, when each phrase
is spoken), never from the code under test.
"""
from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from app.models import Keyframe, TextLine, Video
from tests.conftest import BACKENDS, database_env
from tests.processes import MODEL_ARGS, cli, get, server_process
from tests.text_media import (
    CAPTIONS,
    FPS,
    PICTURES,
    SHOT_SECONDS,
    SPEECH,
    Speech,
    caption_pictures,
    caption_video,
    damage_audio,
    have_tools,
    sine_audio,
)

pytestmark = pytest.mark.skipif(not have_tools(), reason="needs espeak-ng and the DejaVu and Liberation fonts")


def _shot_of(seconds: float) -> int:
    return int(seconds // SHOT_SECONDS)


@pytest.fixture(scope="module", params=BACKENDS)
def words(request, tmp_path_factory, tiny_checkpoint):
    """A captioned, spoken news clip, captioned pictures, a silent clip and a clip whose sound is damaged."""
    root = tmp_path_factory.mktemp(f"words-{request.param}")
    media = root / "media"
    media.mkdir()
    caption_video(media / "news.mp4")
    caption_video(media / "silent.mp4", CAPTIONS[:2], speech=())
    caption_pictures(media / "signs")
    data = root / "data"
    (data / "instance").mkdir(parents=True)
    with database_env(request.param, data) as url:
        done = cli("index", str(media), "--data-dir", str(data), "--pretrained", str(tiny_checkpoint), *MODEL_ARGS)
        assert done.returncode == 0, done.stderr
        with server_process(data) as base:
            yield {"root": root, "media": media, "data": data, "base": base, "url": url, "index": done.stdout,
                   "backend": request.param, "checkpoint": tiny_checkpoint}


def _search(base: str, **params) -> tuple[int, dict]:
    status, _, body = get(f"{base}/api/search?{urllib.parse.urlencode(params)}")
    return status, json.loads(body)


def _shows(result: dict) -> str:
    """The caption a result shows, from the media's construction."""
    if result["video_id"] is None:
        return PICTURES[int(result["name"].rsplit("sign", 1)[1].split(".")[0])].text
    return CAPTIONS[_shot_of(result["pts_time"])].text


def test_index_reports_both_passes(words):
    assert "ocr:" in words["index"] and "speech:" in words["index"]
    with Session(create_engine(words["url"])) as session:
        ocr = session.scalar(select(func.count(TextLine.id)).where(TextLine.source == "ocr"))
        asr = session.scalars(select(TextLine).where(TextLine.source == "asr")).all()
    assert ocr >= len(CAPTIONS) + len(PICTURES)
    assert len(asr) == len(SPEECH)  # the silent clip says nothing and is fine
    status, _, body = get(f"{words['base']}/api/collection")
    told = json.loads(body)["totals"]["words"]
    assert (told["ocr_lines"], told["asr_segments"]) == (ocr, len(SPEECH))
    assert told["items_read"] == 2 + len(PICTURES) and told["videos_heard"] == 2  # both clips, the pictures


@pytest.mark.parametrize("word,caption", [("storm", 2), ("exit", 0), ("score", 3)])
def test_a_word_on_screen_finds_its_frame_first(words, word, caption):
    status, body = _search(words["base"], q=f"ocr:{word}", k=10)
    assert status == 200, body
    first = body["results"][0]
    assert first["video_id"] in ("news", "silent") and _shows(first) == CAPTIONS[caption].text
    assert all(word.upper() in _shows(r).upper() for r in body["results"])
    assert first["why"] and first["why"][0]["source"] == "ocr" and word in first["why"][0]["words"]


@pytest.mark.parametrize("word,picture", [("museum", 0), ("departures", 1), ("midnight", 3)])
def test_a_word_in_a_picture_finds_the_picture_first(words, word, picture):
    status, body = _search(words["base"], q=word, k=5)
    assert status == 200, body
    assert body["results"][0]["name"].endswith(f"sign{picture}.jpg"), body["results"][0]


@pytest.mark.parametrize("phrase", [s.text for s in SPEECH])
def test_a_spoken_phrase_finds_its_moment_within_a_second(words, phrase):
    said = next(s for s in SPEECH if s.text == phrase)
    quoted = " ".join(phrase.split()[1:4])  # three words from inside the phrase
    status, body = _search(words["base"], q=f'asr:"{quoted}"', k=5)
    assert status == 200, body
    first = body["results"][0]
    assert first["video_id"] == "news", first
    why = first["why"][0]
    assert why["source"] == "asr" and abs(why["start"] - said.at) <= 1.0, why  # the phrase, within 1 s
    # the quoted words start with the phrase's second word: within a second of it beginning, never before it
    assert said.at <= first["moment"] <= said.at + 1.0, first


def test_accents_are_optional_both_ways(words):
    for query in ("ha noi", "Hà Nội", "HA NOI", '"hà noi"'):
        status, body = _search(words["base"], q=query, k=3)
        assert status == 200, body
        assert _shows(body["results"][0]) == "Hà Nội hôm nay", (query, body["results"][0])
    for query in ("da nang", "Đà Nẵng"):
        status, body = _search(words["base"], q=query, k=3)
        assert body["results"][0]["name"].endswith("sign2.jpg"), (query, body["results"][0])


def _clip_order(words, query: str) -> list[tuple[float, str]]:
    """Every item ranked by the cosine of its stored vector with the query, computed here from the feature files
    and the same random network (not through the search code)."""
    from app.encoders import ClipEncoder
    from tests.conftest import TINY_MODEL

    encoder = ClipEncoder(TINY_MODEL, str(words["checkpoint"]), "cpu")
    q = encoder.encode_text([query]).reshape(-1)
    scored = []
    with Session(create_engine(words["url"])) as session:
        for kf in session.scalars(select(Keyframe)):
            vec = np.load(words["data"] / "feature" / f"{kf.video.video_id}.npy")[kf.n - 1]
            scored.append((float(vec @ q), f"{kf.video.video_id}@{kf.frame_idx}"))
    for path in (words["data"] / "feature" / "images").glob("*.npy"):
        scored.append((float(np.load(path) @ q), f"image:{path.stem}"))
    return [(round(score, 4), item) for score, item in sorted(scored, key=lambda s: -s[0])]


def test_fusion_puts_words_and_picture_above_either_alone(words):
    query = "storm"
    picture_only = _clip_order(words, query)
    status, alone = _search(words["base"], q=query, k=100, words_weight=0)
    assert status == 200 and [round(r["score"], 4) for r in alone["results"]] == [s for s, _ in picture_only]
    picture_only = [item for _, item in picture_only]
    status, fused = _search(words["base"], q=query, k=100)
    ranked = [r["item"] for r in fused["results"]]
    with_word = [r["item"] for r in fused["results"] if "storm" in _shows(r)]
    assert ranked[0] in with_word  # shown word and picture together come first
    for best_picture in picture_only[:3]:  # the picture's favourites without the word rank below every frame with it
        if best_picture not in with_word:
            assert all(ranked.index(item) < ranked.index(best_picture) for item in with_word)
    status, words_only = _search(words["base"], q=query, k=100, picture_weight=0)
    assert {r["item"] for r in words_only["results"]} == set(with_word)


@pytest.mark.parametrize("query", ['"abc', "NEAR(", "NEAR(a b", "ocr:", 'asr:"', "a AND OR NOT b", "x*", '"',
                                   "'; drop table x", "()", "^exit", "exit:", 'ocr:"storm', "\u0000storm",
                                   "storm " * 2000])
def test_operators_and_open_quotes_are_literal_words(words, query):
    status, body = _search(words["base"], q=query, k=5)
    assert status in (200, 400), body
    if status == 400:
        assert body["error"] and "Traceback" not in body["error"] and "sql" not in body["error"].lower()
    if query.startswith('ocr:"storm'):
        assert status == 200 and "storm" in _shows(body["results"][0])


def test_the_page_explains_each_match(words):
    status, _, html = get(f"{words['base']}/?q=" + urllib.parse.quote('ocr:storm asr:"president will"'))
    assert status == 200
    status, _, html = get(f"{words['base']}/?q=storm")
    page = html.decode()
    assert status == 200 and "on screen:" in page and "<mark>storm</mark>" in page and "ocr-box" in page
    status, _, html = get(f"{words['base']}/?q=" + urllib.parse.quote('"thanks for watching"'))
    page = html.decode()
    assert status == 200 and "said at 00:00:19" in page and "<mark>watching</mark>" in page


def test_keyframe_page_shows_ocr_lines_and_the_transcript_around(words):
    status, body = _search(words["base"], q='asr:"president will speak"', k=1)
    hit = body["results"][0]
    link = hit["why"][0]["page_url"]
    status, _, html = get(words["base"] + link)
    page = html.decode()
    assert status == 200
    assert 'id="transcript"' in page and 'class="now"' in page and "the president will speak" in page
    assert "good morning everyone" in page  # the speech before the moment is there too
    assert f"#t={hit['moment']:.3f}" in page  # the player starts where the words were said
    status, _, _ = get(words["base"] + link.split("?")[0] + "?t=nan")
    assert status == 400


def test_sequence_steps_can_be_words(words):
    status, body = _search(words["base"], q1="ocr:exit", q2='asr:"president will speak"', gap=15, k=5)
    assert status == 200, body
    moment = body["moments"][0]
    assert moment["video_id"] == "news"
    assert _shows(moment["hits"][0]) == "EMERGENCY EXIT" and abs(moment["hits"][1]["moment"] - 7.5) <= 1.5
    status, body = _search(words["base"], q1='asr:"president will speak"', q2="ocr:exit", gap=15, k=5)
    assert status == 200 and all(m["video_id"] != "news" for m in body["moments"])  # EXIT is shown before, not after


def test_evaluation_scores_word_queries_as_the_search_box_ranks_them(words, tmp_path):
    rows = ["query_id,query,video_id,start_frame,end_frame",
            f"q1,storm warning,news,{int(2 * SHOT_SECONDS * FPS)},{int(3 * SHOT_SECONDS * FPS) - 1}",
            f"q2,the president will speak,news,{int(7.0 * FPS)},{int(10.5 * FPS)}",
            f"q3,final score,news,{int(3 * SHOT_SECONDS * FPS)},{int(4 * SHOT_SECONDS * FPS) - 1}"]
    gt = tmp_path / "words.csv"
    gt.write_text("\n".join(rows) + "\n")
    done = cli("evaluate", str(gt), "--data-dir", str(words["data"]), "--model-config", MODEL_ARGS[3],
               "--device", "cpu", timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    standard = record["summary"]["standard"]
    assert "words" in record["index"]
    assert standard["hit@1"] == 1.0 and standard["MRR"] == 1.0, standard
    gt.write_text("\n".join(rows + ["q4,???,news,0,10", f"q5,{'storm ' * 500},news,120,179"]) + "\n")
    done = cli("evaluate", str(gt), "--data-dir", str(words["data"]), "--model-config", MODEL_ARGS[3],
               "--device", "cpu", timeout=300)
    assert done.returncode == 0, done.stderr  # a query that is no words query is ranked by the picture alone


def test_damaged_sound_is_reported_and_the_video_still_indexed(tmp_path):
    data = tmp_path / "data"
    media = tmp_path / "media"
    media.mkdir()
    damage_audio(caption_video(tmp_path / "news.mp4"), media / "damaged.mkv")
    (data / "instance").mkdir(parents=True)
    with database_env("sqlite", data):
        done = cli("index", str(media), "--data-dir", str(data), "--pretrained", "none", *MODEL_ARGS)
    assert done.returncode == 1 and "audio stream is damaged" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "added 1" in done.stdout
    engine = create_engine(f"sqlite:///{data / 'instance' / 'framefinder.db'}")
    with Session(engine) as session:
        said = [line.text for line in session.scalars(select(TextLine).where(TextLine.source == "asr"))]
        assert session.scalar(select(func.count(Keyframe.id))) >= len(CAPTIONS)
    assert said and said[0].startswith("good morning")  # the sound before the damage is transcribed
    assert not any("watching" in s for s in said)  # the damaged part is not


def test_adding_words_to_an_indexed_collection_redoes_neither_shots_nor_clip(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    caption_video(media / "news.mp4")
    data = tmp_path / "data"
    args = ("--data-dir", str(data), "--pretrained", "none", *MODEL_ARGS)
    (data / "instance").mkdir(parents=True)
    with database_env("sqlite", data):
        first = cli("index", str(media), *args, "--no-ocr", "--no-asr")
        assert first.returncode == 0, first.stderr
        assert "ocr:" not in first.stdout and "speech:" not in first.stdout
        unread = cli("search", "ocr:storm", "--data-dir", str(data), "--model-config", MODEL_ARGS[3])
        assert unread.returncode == 0 and "No on-screen text has been read" in unread.stdout, unread
        feature = data / "feature" / "news.npy"
        before = (feature.stat().st_mtime_ns, feature.read_bytes())
        engine = create_engine(f"sqlite:///{data / 'instance' / 'framefinder.db'}")
        with Session(engine) as session:
            ids = session.scalars(select(Keyframe.id).order_by(Keyframe.id)).all()
        second = cli("index", str(media), *args)
        assert second.returncode == 0, second.stderr
        assert "unchanged 1" in second.stdout and "keyframes 0" in second.stdout
        keyframes = len(ids)
        assert f" lines in {keyframes} pictures read" in second.stdout  # its keyframes, read from their JPEGs
        assert (feature.stat().st_mtime_ns, feature.read_bytes()) == before
        with Session(engine) as session:
            assert session.scalars(select(Keyframe.id).order_by(Keyframe.id)).all() == ids
            assert session.scalar(select(func.count(TextLine.id)).where(TextLine.source == "asr")) == len(SPEECH)
        third = cli("index", str(media), *args)
        assert "ocr: 0 lines in 0 pictures" in third.stdout and "speech: 0 segments in 0 videos" in third.stdout


def test_the_speech_model_refuses_a_language_it_does_not_know(tmp_path, capsys, monkeypatch):
    from tests.helpers import offline_main

    monkeypatch.delenv("DATABASE_URL", raising=False)
    media = tmp_path / "media"
    media.mkdir()
    done = offline_main(capsys, "index", str(media), "--data-dir", str(tmp_path / "d"), "--pretrained", "none",
                        "--asr", "--asr-language", "vi", *MODEL_ARGS)
    assert done.returncode == 2 and "--asr-model" in done.stderr and "vi" in done.stderr
    done = offline_main(capsys, "index", str(media), "--data-dir", str(tmp_path / "d"), "--pretrained", "none",
                        "--asr-model", str(tmp_path / "nowhere"), *MODEL_ARGS)
    assert done.returncode == 2 and "--asr-model" in done.stderr
    done = offline_main(capsys, "index", str(media), "--data-dir", str(tmp_path / "d"), "--pretrained", "none",
                        "--ocr-model", str(tmp_path), *MODEL_ARGS)
    assert done.returncode == 2 and "det.onnx" in done.stderr


def test_an_hour_of_sound_streams_in_flat_memory(tmp_path):
    """The audio of a long file is decoded chunk by chunk: an hour of 16 kHz PCM is 115 MB, the process grows
    by a fraction of that."""
    import subprocess
    import sys

    audio = sine_audio(tmp_path / "hour.m4a", 3600)
    probe = ("import resource, sys; from pathlib import Path; from app.audio import pcm_chunks\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "n = sum(len(c) for c in pcm_chunks(Path(sys.argv[1])))\n"
             "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    out = subprocess.run([sys.executable, "-c", probe, str(audio)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, env={**os.environ})
    decoded, grew_kb = map(int, out.stdout.split())
    assert decoded >= 3599 * 16000 * 2
    assert grew_kb < 40 * 1024, grew_kb  # 115 MB of sound, well under 40 MB of growth


def test_what_a_result_says_it_matched_is_what_its_line_holds(words):
    status, body = _search(words["base"], q="platform 3", k=3)
    first = body["results"][0]
    assert first["name"].endswith("sign1.jpg") and first["why"][0]["words"] == ["platform"]


def test_queries_that_cannot_work_say_why(words):
    status, body = _search(words["base"], q="ocr: storm", k=3)
    assert status == 200 and any("ocr: needs a word" in n for n in body["notices"])
    from tests.processes import post_image

    status, body = post_image(f"{words['base']}/api/search", words["media"] / "signs" / "sign0.jpg",
                              {"q": "ocr:museum", "k": "3"})
    assert status == 200 and any("without an image" in n for n in body["notices"]), body


def test_a_sequence_says_when_each_step_happened(words):
    query = urllib.parse.urlencode({"q1": "ocr:exit", "q2": 'asr:"president will speak"', "gap": 15})
    status, _, html = get(f"{words['base']}/?{query}")
    head = html.decode().split('class="moment-head"')[1].split("</p>")[0]
    assert status == 200 and "<b>B</b> 00:00:07." in head  # when the words were said, not the keyframe's time


def test_real_footage_sound_with_an_incomplete_last_packet_is_heard(tmp_path):
    """Megamind.avi (opencv-doc) ends its AC3 track with an incomplete frame: the decoder refuses that packet, and
    the other 11 seconds of sound are transcribed without a complaint."""
    clip = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
    if not clip.exists():
        pytest.skip("opencv-doc is not installed")
    media = tmp_path / "media"
    media.mkdir()
    (media / "Megamind.avi").write_bytes(clip.read_bytes())
    data = tmp_path / "data"
    (data / "instance").mkdir(parents=True)
    with database_env("sqlite", data):
        done = cli("index", str(media), "--data-dir", str(data), "--pretrained", "none", "--no-ocr", *MODEL_ARGS)
    assert done.returncode == 0, done.stderr
    assert "damaged" not in done.stderr and "speech: " in done.stdout and "in 1 videos (11 s of sound)" in done.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_word_crowding_a_few_pictures_does_not_hide_the_others(backend, tmp_path):
    """Five pictures say SALE 120 times each; one says RARE SALE TODAY. A clause ranks pictures, not lines, and
    every required clause is checked against all the pictures it matches."""
    from sqlalchemy import insert

    from app.db import open_database
    from app.models import Image
    from app.text_search import rank_items
    from app.words import parse

    data = tmp_path / "data"
    (data / "instance").mkdir(parents=True)
    with database_env(backend, data) as url:
        sessions = open_database(url, data)
    with sessions() as session:
        session.execute(insert(Image), [{"path": f"/p/{i}.jpg", "content_hash": f"{i:040x}", "size": 1,
                                         "mtime_ns": 1, "width": 10, "height": 10} for i in range(6)])
        ids = session.scalars(select(Image.id).order_by(Image.id)).all()
        line = {"source": "ocr", "confidence": 0.9, "x": 0.1, "y": 0.1, "w": 0.5, "h": 0.1, "model": "test"}
        session.execute(insert(TextLine), [{**line, "image_id": ids[i], "text": "SALE", "folded": "sale"}
                                           for i in range(5) for _ in range(120)])
        session.execute(insert(TextLine), [{**line, "image_id": ids[5], "text": "RARE SALE TODAY",
                                            "folded": "rare sale today"}])
        session.commit()
        found = [m.key[1] for m in rank_items(session, parse("ocr:sale"))]
        assert sorted(found) == sorted(ids)  # each picture once, the rare one too
        assert [m.key[1] for m in rank_items(session, parse("ocr:sale ocr:rare"))] == [ids[5]]
        assert [m.key[1] for m in rank_items(session, parse('"rare sale"'))] == [ids[5]]
        assert rank_items(session, parse("ocr:sale ocr:nowhere")) == []


def test_filters_narrow_the_words_too(words):
    status, body = _search(words["base"], q="ocr:exit", video="silent", k=20)
    assert status == 200 and body["results"] and {r["video_id"] for r in body["results"]} == {"silent"}
    status, body = _search(words["base"], q="ocr:storm", video="silent", k=20)
    assert status == 200 and body["results"] == []  # the silent clip shows no storm
    status, body = _search(words["base"], q="ocr:exit", words_weight=0)
    assert status == 400 and "words_weight" in body["error"]


def test_speech_keeps_the_video_clock_and_its_links_open(tmp_path):
    """A sound track that starts 6 s into the video, and one longer than the pictures: the words are placed on
    the video's clock, and a match after the last frame still opens its page."""
    media = tmp_path / "media"
    media.mkdir()
    caption_video(media / "late.mp4", CAPTIONS[:2], SPEECH[:1], audio_start=6.0)
    caption_video(media / "short.mkv", CAPTIONS[:3], SPEECH[:1], audio_seconds=5.0)  # healthy, just short
    caption_video(media / "long.mp4", CAPTIONS[:1], (Speech(9.0, "the president will speak tomorrow morning"),),
                  audio_seconds=14.0)
    data = tmp_path / "data"
    (data / "instance").mkdir(parents=True)
    with database_env("sqlite", data):
        done = cli("index", str(media), "--data-dir", str(data), "--pretrained", "none", "--no-ocr", *MODEL_ARGS)
        assert done.returncode == 0 and "damaged" not in done.stderr, done.stderr
        with Session(create_engine(f"sqlite:///{data / 'instance' / 'framefinder.db'}")) as session:
            said = {(line.video_pk, line.text): line.start_s for line in session.scalars(select(TextLine))}
            late = session.scalar(select(Video.id).where(Video.video_id == "late"))
        assert abs(said[late, "good morning everyone"] - 7.0) <= 0.5, said  # 1 s into a track that starts at 6 s
        with server_process(data) as base:
            status, body = _search(base, q='asr:"president will speak"', k=1)
            hit = body["results"][0]
            assert hit["video_id"] == "long" and abs(hit["moment"] - 9.1) <= 1.0
            status, _, html = get(base + hit["why"][0]["page_url"])
            assert status == 200 and 'class="now"' in html.decode()
