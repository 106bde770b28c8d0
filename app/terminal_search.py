"""`offline.py search`: the server's search from a terminal, for people who live there (as rclip users do).

The same Collection, Searcher and options as the web pages, without Flask: one process loads the served index
generation and the model named by it, runs one query and prints the ranked items with video, time and file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from app.collection import Collection
from app.search import Hit, Options, Outcome, QueryError, Searcher, format_time, parse_box
from app.settings import Settings


@dataclass
class TerminalQuery:
    text: str = ""
    image: Path | None = None
    box: str = ""  # x,y,w,h in the image's pixels
    k: int = 20
    video: str | None = None
    text_weight: float = 0.5
    picture_weight: float = 1.0  # fusion of a text query (app.fusion)
    words_weight: float = 1.0


def run(settings: Settings, query: TerminalQuery, sessions) -> tuple[Outcome, Collection]:
    """Run one query against the collection in `settings`; QueryError for what the user got wrong."""
    from app.encoders import encoder_for_index, register_model_configs

    register_model_configs(settings.model_config)
    collection = Collection(settings.layout, sessions)
    snap = collection.load_now()
    if snap is None:
        raise QueryError("the collection has no index yet: run `offline.py index PATH` first (with the same "
                         "--data-dir)")
    if not query.text and query.image is None:
        raise QueryError("give a text query, --image FILE, or both")
    if query.box and query.image is None:
        raise QueryError("--box is a region of --image: give the image too")
    # one query: auto means torch here (an ONNX session costs more to open than the query it would speed up)
    engine = "torch" if settings.text_engine == "auto" else settings.text_engine
    searcher = Searcher(collection, encoder_for_index(snap.bundle.meta, settings.device, engine, snap.bundle))
    outcome = Outcome()
    from app import weights_notice

    notice = weights_notice(snap.bundle.meta)
    if notice:
        outcome.notices.append(notice)
    image_vec = text_vec = None
    if query.image is not None:
        from app.uploads import read_image

        try:
            data = query.image.read_bytes()
        except OSError as exc:
            raise QueryError(f"{query.image}: {exc.strerror or exc}") from None
        picture = read_image(data)
        image_vec = searcher.encode_image(picture, parse_box(query.box, picture.width, picture.height))
    if image_vec is None:  # words and picture, fused (app.fusion), as the search page does
        searcher.search_text(query.text, Options(k=query.k, video=query.video, picture_weight=query.picture_weight,
                                                 words_weight=query.words_weight), outcome)
        return outcome, collection
    if query.text:
        text_vec = searcher.encode_text(query.text, outcome.notices)
    vec = searcher.combine(text_vec, image_vec, query.text_weight)
    searcher.search(vec, Options(k=query.k, video=query.video), outcome)
    return outcome, collection


def record(hit: Hit, collection: Collection) -> dict:
    """One result for the terminal: the item, and where its picture and source are on this machine."""
    e = hit.entry
    picture = collection.layout.data_dir / e.rel_path if e.rel_path else Path(e.source_path)
    return {"rank": 0, "score": round(hit.score, 6), "item": e.item, "video_id": e.video_id, "n": e.n,
            "frame_idx": e.frame_idx, "time": format_time(hit.moment), "pts_time": e.pts_time, "name": e.name,
            "picture": str(picture), "source": e.source_path, "moment": hit.moment, "why": hit.why}


def render(outcome: Outcome, collection: Collection, as_json: bool) -> str:
    rows = [record(h, collection) for h in outcome.hits]
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    if as_json:
        return json.dumps({"results": rows, "notices": outcome.notices, "timing_ms": outcome.timing_ms})
    lines = [f"note: {n}" for n in outcome.notices]
    for row in rows:
        where = f"{row['video_id']} {row['time']} (frame {row['frame_idx']})" if row["video_id"] else row["name"]
        lines.append(f"{row['rank']:>3}  {row['score'] * 100:5.1f}%  {where}  {row['picture']}")
        for why in row["why"]:
            lines.append(f"       {'on screen' if why['source'] == 'ocr' else 'said'}: {why['text'][:100]}")
    if not rows:
        lines.append("no results")
    return "\n".join(lines)
