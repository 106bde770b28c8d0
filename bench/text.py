#!/usr/bin/env python3
"""Words in video: OCR speed and accuracy, speech speed and accuracy, and text query latency at scale.

- OCR (app.ocr, RapidOCR PP-OCRv4): keyframes/s on 1280x720 frames of real footage (Debian's opencv-doc clips,
  as bench/real_media.py scales them) and on rendered captions; on the rendered set (phrases x fonts x sizes, one
  Vietnamese phrase with diacritics) the character error rate (CER, exact text and folded as search sees it) and
  the word recall (reference words found among the line's searchable tokens).
- Speech (app.asr, PocketSphinx): sentences spoken by espeak-ng at 160 words a minute over a -60 dB noise floor,
  one AAC track decoded as the ingest does (app.audio); the real-time factor and the word error rate (WER).
- Text queries (app.text_search.rank_items as a query with no filter runs it: the full-text match, the lines'
  items, the ranking) over N OCR lines
  (default 1,000,000) of Zipf-distributed words on 100,000 keyframes, on SQLite and, with --database-url, on
  PostgreSQL: p50 and p95 over rare, common and phrase queries.

Prints a table and, last, one JSON line.

    python bench/text.py
    python bench/text.py --lines 1000000 --database-url postgresql+psycopg://postgres@127.0.0.1:55432/bench
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.text_media import FONTS, RATE, Caption, Speech, encode_audio, render, speech_track  # noqa: E402

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
PHRASES = ["EMERGENCY EXIT", "Breaking news: storm warning", "FINAL SCORE 3 1", "Hà Nội hôm nay",
           "Welcome to the museum", "Platform 9 departures", "Open daily until midnight", "Live from the stadium",
           "Road closed ahead", "Election results tonight", "Thủ tướng phát biểu", "Weather: sunny, 24 degrees"]
FONT_FILES = ["dejavu/DejaVuSans-Bold.ttf", "dejavu/DejaVuSerif.ttf", "liberation/LiberationSans-Regular.ttf",
              "liberation/LiberationMono-Bold.ttf"]
SIZES = [24, 36, 56]
SENTENCES = ["good morning everyone", "the president will speak tomorrow morning",
             "thanks for watching the evening news", "the weather will be sunny", "we will be right back",
             "the game starts at noon", "please stand clear of the doors", "the city council met today",
             "prices rose again this month", "the team won the final match", "traffic is heavy on the bridge",
             "the museum opens next week", "rain is expected this afternoon", "the minister answered questions",
             "schools will close early on friday", "the river has flooded the valley", "thousands watched the parade",
             "the company reported higher profits", "police closed the main road", "the new station opened today"]


def edit_distance(a, b) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def frames_of(path: Path, count: int) -> list[np.ndarray]:
    import av
    import cv2

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        step = max(1, (stream.frames or 1000) // count)
        frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(stream)) if i % step == 0][:count]
    out = []
    for rgb in frames:
        h, w = rgb.shape[:2]
        scale = max(1280 / w, 720 / h)
        big = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
        y0, x0 = (big.shape[0] - 720) // 2, (big.shape[1] - 1280) // 2
        out.append(np.ascontiguousarray(big[y0:y0 + 720, x0:x0 + 1280]))
    return out


def ocr_bench(args) -> dict:
    from app.ocr import load_ocr_model
    from app.words import fold, ocr_tokens, tokens

    model = load_ocr_model(None)
    model.read(np.zeros((720, 1280, 3), np.uint8))  # warm
    out: dict = {}
    real = [f for clip in ("vtest.avi", "Megamind.avi") if (OPENCV_DATA / clip).exists()
            for f in frames_of(OPENCV_DATA / clip, args.real_frames)]
    if real:
        t0 = time.perf_counter()
        lines = sum(len(model.read(f)) for f in real)
        out["real_kf_per_s"] = round(len(real) / (time.perf_counter() - t0), 2)
        out["real_frames"], out["real_lines"] = len(real), lines
    rendered = [(phrase, Caption(phrase, font, size, bg))
                for phrase in PHRASES for font in FONT_FILES for size in SIZES
                for bg in [(20 + 7 * len(phrase) % 200, 40, 90)]]
    chars = errors = errors_folded = words = found = 0
    t0 = time.perf_counter()
    for i, (phrase, caption) in enumerate(rendered):
        read = model.read(np.asarray(render(caption, (1280, 720), stripe=i)))
        text = " ".join(line.text for line in read)
        chars += len(phrase)
        errors += edit_distance(phrase, text)
        errors_folded += edit_distance(" ".join(tokens(phrase)), " ".join(tokens(text)))
        reference = tokens(phrase)
        searchable = set(ocr_tokens(text))
        words += len(reference)
        found += sum(w in searchable for w in reference)
    out["rendered_kf_per_s"] = round(len(rendered) / (time.perf_counter() - t0), 2)
    out["rendered_pictures"] = len(rendered)
    out["cer"] = round(errors / chars, 4)
    out["cer_folded"] = round(errors_folded / sum(len(" ".join(tokens(p))) for p, _ in rendered), 4)
    out["word_recall"] = round(found / words, 4)
    assert fold("Hà Nội") == "ha noi"
    return out


def asr_bench(args) -> dict:
    import av

    from app.asr import load_speech_model
    from app.audio import pcm_chunks

    sentences = SENTENCES[:args.sentences]
    speech, at = [], 1.0
    for s in sentences:
        speech.append(Speech(at, s))
        at += 1.0 + len(s.split()) * 60 / 160 + 1.5
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        samples = speech_track(tuple(speech), at, work)
        path = work / "speech.m4a"
        with av.open(str(path), "w") as container:
            encode_audio(container, container.add_stream("aac", rate=RATE, layout="mono"), samples)
        model = load_speech_model(None)
        t0 = time.perf_counter()
        heard = list(model.transcribe(pcm_chunks(path)))
        seconds = time.perf_counter() - t0
    reference = " ".join(sentences).split()
    hypothesis = " ".join(s.text for s in heard).split()
    return {"audio_s": round(at, 1), "asr_s": round(seconds, 2), "rtf": round(seconds / at, 4),
            "wer": round(edit_distance(reference, hypothesis) / len(reference), 4), "segments": len(heard),
            "sentences": len(sentences)}


def _fill(url: str, data_dir: Path, n_lines: int, seed: int = 0) -> tuple[object, list[str]]:
    """A catalogue of 1,000 videos x 100 keyframes and n_lines OCR lines of Zipf-distributed words."""
    from sqlalchemy import insert

    from app.db import open_database
    from app.models import Keyframe, TextLine, Video

    sessions = open_database(url, data_dir)
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i}" for i in range(50_000)]
    with sessions() as session:
        session.execute(insert(Video), [
            {"video_id": f"v{i}", "path": f"/media/v{i}.mp4", "source": "video", "content_hash": f"{i:064x}",
             "size": 1, "mtime_ns": 1, "fps": 25.0, "frames": 10_000, "duration": 400.0} for i in range(1000)])
        session.commit()
        video_pk = dict(session.execute(select_ids(Video)).all())
        keyframes = [{"video_pk": video_pk[f"v{v}"], "n": n + 1, "frame_idx": n * 100, "pts_time": n * 4.0,
                      "image_path": f"keyframes/v{v}/{n + 1:03d}.jpg"} for v in range(1000) for n in range(100)]
        for at in range(0, len(keyframes), 20_000):
            session.execute(insert(Keyframe), keyframes[at:at + 20_000])
        session.commit()
        kf_ids = [row[0] for row in session.execute(select_kf_ids())]
        ranks = rng.zipf(1.3, size=n_lines * 6)
        at = 0
        batch = []
        t0 = time.perf_counter()
        for i in range(n_lines):
            k = int(rng.integers(3, 9))
            words = [vocabulary[min(int(r) - 1, len(vocabulary) - 1)] for r in ranks[at:at + k]]
            at += k
            text = " ".join(words)
            batch.append({"source": "ocr", "keyframe_id": kf_ids[i % len(kf_ids)], "text": text, "folded": text,
                          "confidence": 0.9, "x": 0.1, "y": 0.1, "w": 0.5, "h": 0.1, "model": "bench"})
            if len(batch) == 50_000:
                session.execute(insert(TextLine), batch)
                batch.clear()
        if batch:
            session.execute(insert(TextLine), batch)
        session.commit()
        print(f"  filled {n_lines:,} lines in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return sessions, vocabulary


def select_ids(model):
    from sqlalchemy import select

    return select(model.video_id, model.id)


def select_kf_ids():
    from sqlalchemy import select

    from app.models import Keyframe

    return select(Keyframe.id).order_by(Keyframe.id)


def query_bench(url: str, data_dir: Path, n_lines: int, n_queries: int) -> dict:
    from app.text_search import REQUIRED_ITEMS, rank_items
    from app.words import parse

    sessions, vocabulary = _fill(url, data_dir, n_lines)
    rng = random.Random(1)
    queries = []
    for i in range(n_queries):
        kind = i % 4
        if kind == 0:
            queries.append(vocabulary[rng.randrange(2, 50)])  # common: a few percent of all lines each
        elif kind == 1:
            queries.append(vocabulary[rng.randrange(500, 20_000)])  # rare
        elif kind == 2:
            queries.append(f'"{vocabulary[rng.randrange(0, 30)]} {vocabulary[rng.randrange(0, 30)]}"')  # phrase
        else:
            queries.append(f"ocr:{vocabulary[rng.randrange(30, 3000)]} {vocabulary[rng.randrange(0, 100)]}")
    with sessions() as session:
        for q in queries[:10]:
            rank_items(session, parse(q), 500)  # warm the caches
        times = []
        found = 0
        for q in queries:
            t0 = time.perf_counter()
            words = parse(q)  # what app.fusion asks for k = 100 without filters
            found += len(rank_items(session, words, 500 if len(words.required) <= 1 else REQUIRED_ITEMS))
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"lines": n_lines, "queries": len(queries), "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1), "mean_items": round(found / len(queries), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000, help="OCR lines for the query bench")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--database-url", default=None, help="also measure queries on this (empty) PostgreSQL database")
    p.add_argument("--real-frames", type=int, default=40, help="frames per opencv-doc clip for OCR speed")
    p.add_argument("--sentences", type=int, default=len(SENTENCES))
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: ocr, asr, sqlite, pg")
    args = p.parse_args()
    skip = set(args.skip.split(","))
    threads = os.cpu_count()
    out: dict = {"cpu_threads": threads}
    if not (FONTS / "dejavu").is_dir():
        sys.exit("the DejaVu and Liberation fonts are needed (apt-get install fonts-dejavu-core fonts-liberation)")
    if "ocr" not in skip:
        out["ocr"] = ocr_bench(args)
        print(f"OCR   real footage {out['ocr'].get('real_kf_per_s')} kf/s, rendered captions "
              f"{out['ocr']['rendered_kf_per_s']} kf/s; on {out['ocr']['rendered_pictures']} rendered captions "
              f"CER {out['ocr']['cer']:.1%} (folded {out['ocr']['cer_folded']:.1%}), word recall "
              f"{out['ocr']['word_recall']:.1%}")
    if "asr" not in skip:
        out["asr"] = asr_bench(args)
        print(f"ASR   {out['asr']['audio_s']} s of speech in {out['asr']['asr_s']} s: real-time factor "
              f"{out['asr']['rtf']}, WER {out['asr']['wer']:.1%} over {out['asr']['sentences']} sentences")
    if "sqlite" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            (data / "instance").mkdir()
            out["sqlite"] = query_bench(f"sqlite:///{data / 'instance' / 'bench.db'}", data, args.lines,
                                        args.queries)
        print(f"query SQLite FTS5, {args.lines:,} lines: p50 {out['sqlite']['p50_ms']} ms, "
              f"p95 {out['sqlite']['p95_ms']} ms")
    if args.database_url and "pg" not in skip:
        from tests.conftest import reset_postgres

        reset_postgres(args.database_url)
        with tempfile.TemporaryDirectory() as tmp:
            out["postgresql"] = query_bench(args.database_url, Path(tmp), args.lines, args.queries)
        print(f"query PostgreSQL GIN, {args.lines:,} lines: p50 {out['postgresql']['p50_ms']} ms, "
              f"p95 {out['postgresql']['p95_ms']} ms")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
