#!/usr/bin/env python3
"""End-to-end query latency through the HTTP API on a served collection (sample videos + images,
plus `--synthetic-keyframes N` catalogued keyframes with clustered vectors, for scale).

Text and image queries, p50/p95 of wall time per request, and the server's own split into
encode and search. Text runs once per text engine (app.text_onnx), the same queries each time:
torch-full (open_clip on all 77 tokens, the old path), torch (up to end-of-text), onnx (ONNX Runtime
fp32) and onnx-int8, with each engine's top-10 overlap with torch-full on real queries over the same
index, and whether the server would keep int8. Prints a table and, last, one JSON line.

    python bench/query.py --synthetic-keyframes 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from werkzeug.serving import make_server  # noqa: E402

from app import create_app, vectors  # noqa: E402
from app.db import open_database  # noqa: E402
from app.encoders import ClipEncoder, register_model_configs  # noqa: E402
from app.index_build import rebuild_index  # noqa: E402
from app.indexer import IndexOptions, run_index  # noqa: E402
from app.models import Keyframe, Video  # noqa: E402
from app.paths import DataLayout  # noqa: E402
from app.sample import build_sample_collection  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.text_onnx import (  # noqa: E402
    INT8_MIN_OVERLAP,
    REAL_QUERIES,
    default_cache_dir,
    load_or_build,
    ranking_agreement,
)

TEXT_ENGINES = ("torch-full", "torch", "onnx", "onnx-int8")


def _post_image(url: str, data: bytes) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return json.load(urllib.request.urlopen(req))


def add_synthetic_videos(layout: DataLayout, sessions, n_keyframes: int, identity: tuple[str, str], dim: int,
                         per_video: int = 600) -> int:
    """Catalogue rows and feature files for n_keyframes keyframes in videos of per_video keyframes
    (like 20-30 minute news videos), vectors from bench/search.py's clustered generator; then the
    index is rebuilt as `offline.py index` would (auto picks the type)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from search import clustered

    made = 0
    with sessions() as session:
        for v in range((n_keyframes + per_video - 1) // per_video):
            count = min(per_video, n_keyframes - made)
            vid = f"SYN_{v:05d}"
            video = Video(video_id=vid, path=f"synthetic://{vid}", source="aic", content_hash=vid, size=0,
                          mtime_ns=0, fps=25.0, frames=count * 60, duration=count * 2.4)
            session.add(video)
            session.flush()
            session.execute(Keyframe.__table__.insert(), [
                {"video_pk": video.id, "n": n, "frame_idx": (n - 1) * 60, "pts_time": (n - 1) * 2.4,
                 "shot_id": None, "image_path": layout.keyframe_relpath(vid, n)} for n in range(1, count + 1)])
            np.save(layout.video_feature_path(vid), clustered(count, dim, 2000, seed=v, chunk=count))
            # its keyframes folder (empty): a search shows hits only of videos whose files are in place
            # (Collection.settled); without it every synthetic hit was dropped and text queries returned nothing
            (layout.keyframes_dir / vid).mkdir(parents=True, exist_ok=True)
            made += count
        session.commit()
        return rebuild_index(session, layout, identity, dim, "auto")


def _stats(walls: list[float], parts: list[dict], counts: list[int] | None = None) -> dict:
    encode = [p["encode"] for p in parts]
    stats = {"p50_ms": round(float(np.percentile(walls, 50)), 1), "p95_ms": round(float(np.percentile(walls, 95)), 1),
             "encode_p50_ms": round(float(np.median(encode)), 1),
             "encode_p95_ms": round(float(np.percentile(encode, 95)), 1),
             "search_p50_ms": round(float(np.median([p["search"] for p in parts])), 2)}
    if all("words" in p for p in parts):  # text: the OCR/speech side of the fused query
        stats["words_p50_ms"] = round(float(np.median([p["words"] for p in parts])), 2)
    if counts is not None:
        stats["results_mean"] = round(float(np.mean(counts)), 1)
    return stats


def use_engine(encoder: ClipEncoder, name: str, search, cache_dir: Path | None) -> dict:
    """Make the served encoder encode text with `name`; what it took and, for int8, the server's verdict."""
    t0 = time.perf_counter()
    info: dict = {}
    if name == "torch-full":
        encoder.text = encoder.torch_text(full_length=True)
    elif name == "onnx-int8":
        kept = encoder.use_text_engine(name, search, cache_dir)  # what a server with text_engine=onnx-int8 does
        info.update(int8_top10_overlap=None if encoder.int8_overlap is None else round(encoder.int8_overlap, 3),
                    int8_kept_by_server=kept == "onnx-int8")
        if kept != "onnx-int8" and encoder.text_engine == "onnx":  # refused: time it anyway, to report its speed
            encoder.text = load_or_build(encoder, cache_dir or default_cache_dir(), int8=True)
    else:
        encoder.use_text_engine(name, search, cache_dir)
    info.update(engine=encoder.text_engine, engine_load_s=round(time.perf_counter() - t0, 2))
    return info


def text_queries(base: str, texts: list[str], searcher) -> tuple[list[float], list[dict], list[list[str]]]:
    """Each text once through the HTTP API, the text cache emptied first (every query is encoded)."""
    walls, parts, items = [], [], []
    for text in ["warm up", "warm up two", "warm up three"] + texts:
        searcher._text_cache.clear()
        t0 = time.perf_counter()
        body = json.load(urllib.request.urlopen(f"{base}?q={urllib.parse.quote(text)}&k=100"))
        walls.append((time.perf_counter() - t0) * 1000)
        parts.append(body["timing_ms"])
        items.append([r["item"] for r in body["results"]])
    return walls[3:], parts[3:], items[3:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--synthetic-keyframes", type=int, default=0, metavar="N",
                   help="add N catalogued keyframes with clustered vectors (e.g. 1000000)")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none", help="weights do not change speed; 'none' runs offline")
    p.add_argument("--model-config", default=None)
    p.add_argument("--text-engines", default=",".join(TEXT_ENGINES),
                   help=f"comma-separated, from {', '.join(TEXT_ENGINES)} (default: all)")
    p.add_argument("--onnx-cache", type=Path, default=None,
                   help="folder of the exported text towers (default: the user's cache, as the server uses)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="build the collection in DIR and leave it there; a later run with the same DIR, model and "
                        "--synthetic-keyframes only measures (to measure again when the machine is idle)")
    args = p.parse_args()
    engines = [e.strip() for e in args.text_engines.split(",") if e.strip()]
    if not engines or set(engines) - set(TEXT_ENGINES):
        p.error(f"--text-engines: choose from {', '.join(TEXT_ENGINES)}")
    register_model_configs(args.model_config)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        made = {"model": args.model, "pretrained": args.pretrained, "synthetic_keyframes": args.synthetic_keyframes}
        marker = root / "bench-query.json"
        kept = marker.is_file() and json.loads(marker.read_text()) == made  # --keep: built by an earlier run
        if not kept and (root / "data").is_dir() and any((root / "data").iterdir()):
            p.error(f"--keep {args.keep}: its data/ holds a collection made with other options (or not by this "
                    f"bench); name an empty or new folder")
        settings = Settings.load({"data_dir": root / "data"})
        layout = settings.layout
        layout.ensure()
        encoder = ClipEncoder(args.model, args.pretrained, "auto")
        sessions = open_database(settings.database_url, layout.data_dir)
        build_s = 0.0
        if kept:
            vectors_n = None
        else:
            sample = build_sample_collection(root / "sample")
            summary = run_index(layout, [sample], IndexOptions(model=args.model, pretrained=args.pretrained,
                                                               progress=False), sessions, encoder=encoder)
            vectors_n = summary.index_size
            if args.synthetic_keyframes:
                t0 = time.perf_counter()
                vectors_n = add_synthetic_videos(layout, sessions, args.synthetic_keyframes, encoder.identity,
                                                 encoder.dim)
                build_s = time.perf_counter() - t0
            marker.write_text(json.dumps(made))
        app = create_app({"ENCODER": encoder}, settings=settings)
        t0 = time.perf_counter()
        snapshot = app.extensions["collection"].snapshot()
        load_s = time.perf_counter() - t0
        index_type = snapshot.bundle.meta["params"]["type"]
        vectors_n = snapshot.bundle.size if vectors_n is None else vectors_n
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}/api/search"
        words = ["red", "car", "night", "crowd", "river", "news", "anchor", "city", "fire", "snow", "boat", "dog"]
        rng = np.random.default_rng(0)
        texts = [" ".join(rng.choice(words, 4)) + f" {i}" for i in range(args.queries)]  # distinct: no cache hits

        def search(queries: np.ndarray, k: int) -> np.ndarray:
            return vectors.search(snapshot.bundle, queries, k)[1]

        searcher = app.extensions["searcher"]
        per_engine: dict[str, dict] = {}
        served: dict[str, list[list[str]]] = {}
        engine_objects = {}
        for name in engines:
            info = use_engine(encoder, name, search, args.onnx_cache)
            walls, parts, served[name] = text_queries(base, texts, searcher)
            engine_objects[name] = encoder.text
            per_engine[name] = {**info, **_stats(walls, parts, [len(x) for x in served[name]]),
                                "load_avg_1min": round(os.getloadavg()[0], 2)}
        reference = engine_objects.get("torch-full") or encoder.torch_text(full_length=True)
        for name, engine in engine_objects.items():  # the rankings each engine gives, against open_clip's own
            per_engine[name]["top10_overlap_with_torch_full"] = round(
                ranking_agreement(reference, engine, encoder.tokenizer, search, REAL_QUERIES), 4)
            if "torch-full" in served:
                pairs = list(zip(served["torch-full"], served[name], strict=True))
                per_engine[name]["http_results_identical_to_torch_full"] = round(
                    float(np.mean([a == b for a, b in pairs])), 4)
                per_engine[name]["http_top100_overlap_with_torch_full"] = round(
                    float(np.mean([len(set(a) & set(b)) / max(len(a), 1) for a, b in pairs])), 4)
        auto = encoder.use_text_engine("auto", search, args.onnx_cache)  # what a default server runs
        text_walls, text_parts, img_walls, img_parts = [], [], [], []
        if auto in per_engine:
            text_walls = None
        else:
            text_walls, text_parts, _ = text_queries(base, texts, searcher)
        jpegs = sorted(layout.keyframes_dir.glob("*/*.jpg"))
        img_counts = []
        for i in range(args.queries):
            data = jpegs[i % len(jpegs)].read_bytes()
            t0 = time.perf_counter()
            body = _post_image(base, data)
            img_walls.append((time.perf_counter() - t0) * 1000)
            img_parts.append(body["timing_ms"])
            img_counts.append(len(body["results"]))
        server.shutdown()
    row = {"bench": "query", "model": args.model, "device": encoder.device, "collection_vectors": vectors_n,
           "index": index_type, "catalogue_and_index_build_s": round(build_s, 1), "server_load_s": round(load_s, 1),
           "queries": args.queries, "text_engine": auto,
           "text": {k: v for k, v in per_engine[auto].items() if k.endswith("_ms")} if text_walls is None
           else _stats(text_walls, text_parts),
           "image": _stats(img_walls, img_parts, img_counts), "text_engines": per_engine,
           "int8_min_overlap": INT8_MIN_OVERLAP, "ranking_queries": len(REAL_QUERIES), "cpu_cores": os.cpu_count()}
    print(f"collection: {vectors_n} vectors ({index_type} index, built in {build_s:.0f} s, loaded by the server in "
          f"{load_s:.1f} s), model {args.model} on {encoder.device}")
    for name, stats in per_engine.items():
        print(f"  text {name:>10}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    print(f"text ({auto}, the default): " + ", ".join(f"{k} {v}" for k, v in row["text"].items()))
    print("image: " + ", ".join(f"{k} {v}" for k, v in row["image"].items()))
    print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
