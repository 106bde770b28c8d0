#!/usr/bin/env python3
"""End-to-end query latency through the HTTP API on a served collection (sample videos + images,
plus `--synthetic-keyframes N` catalogued keyframes with clustered vectors, for scale).

Text and image queries, p50/p95 of wall time per request, and the server's own split into
encode and search. Prints a table and, last, one JSON line.

    python bench/query.py --synthetic-keyframes 1000000
"""
from __future__ import annotations

import argparse
import json
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

from app import create_app  # noqa: E402
from app.db import open_database  # noqa: E402
from app.encoders import ClipEncoder, register_model_configs  # noqa: E402
from app.index_build import rebuild_index  # noqa: E402
from app.indexer import IndexOptions, run_index  # noqa: E402
from app.models import Keyframe, Video  # noqa: E402
from app.paths import DataLayout  # noqa: E402
from app.sample import build_sample_collection  # noqa: E402
from app.settings import Settings  # noqa: E402


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
            made += count
        session.commit()
        return rebuild_index(session, layout, identity, dim, "auto")


def _stats(walls: list[float], parts: list[dict]) -> dict:
    return {"p50_ms": round(float(np.percentile(walls, 50)), 1), "p95_ms": round(float(np.percentile(walls, 95)), 1),
            "encode_p50_ms": round(float(np.median([p["encode"] for p in parts])), 1),
            "search_p50_ms": round(float(np.median([p["search"] for p in parts])), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--synthetic-keyframes", type=int, default=0, metavar="N",
                   help="add N catalogued keyframes with clustered vectors (e.g. 1000000)")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none", help="weights do not change speed; 'none' runs offline")
    p.add_argument("--model-config", default=None)
    args = p.parse_args()
    register_model_configs(args.model_config)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load({"data_dir": Path(tmp) / "data"})
        layout = settings.layout
        layout.ensure()
        encoder = ClipEncoder(args.model, args.pretrained, "auto")
        sample = build_sample_collection(Path(tmp) / "sample")
        sessions = open_database(settings.database_url, layout.data_dir)
        summary = run_index(layout, [sample], IndexOptions(model=args.model, pretrained=args.pretrained,
                                                           progress=False), sessions, encoder=encoder)
        vectors_n = summary.index_size
        build_s = 0.0
        if args.synthetic_keyframes:
            t0 = time.perf_counter()
            vectors_n = add_synthetic_videos(layout, sessions, args.synthetic_keyframes, encoder.identity,
                                             encoder.dim)
            build_s = time.perf_counter() - t0
        app = create_app({"ENCODER": encoder}, settings=settings)
        t0 = time.perf_counter()
        snapshot = app.extensions["collection"].snapshot()
        load_s = time.perf_counter() - t0
        index_type = snapshot.bundle.meta["params"]["type"]
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}/api/search"
        words = ["red", "car", "night", "crowd", "river", "news", "anchor", "city", "fire", "snow", "boat", "dog"]
        rng = np.random.default_rng(0)
        text_walls, text_parts, img_walls, img_parts = [], [], [], []
        for i in range(args.queries):  # distinct texts: no cache hits
            q = " ".join(rng.choice(words, 4)) + f" {i}"
            t0 = time.perf_counter()
            body = json.load(urllib.request.urlopen(f"{base}?q={urllib.parse.quote(q)}&k=100"))
            text_walls.append((time.perf_counter() - t0) * 1000)
            text_parts.append(body["timing_ms"])
        jpegs = sorted(layout.keyframes_dir.glob("*/*.jpg"))
        for i in range(args.queries):
            data = jpegs[i % len(jpegs)].read_bytes()
            t0 = time.perf_counter()
            body = _post_image(base, data)
            img_walls.append((time.perf_counter() - t0) * 1000)
            img_parts.append(body["timing_ms"])
        server.shutdown()
    row = {"bench": "query", "model": args.model, "device": encoder.device, "collection_vectors": vectors_n,
           "index": index_type, "catalogue_and_index_build_s": round(build_s, 1), "server_load_s": round(load_s, 1),
           "queries": args.queries, "text": _stats(text_walls, text_parts), "image": _stats(img_walls, img_parts)}
    print(f"collection: {vectors_n} vectors ({index_type} index, built in {build_s:.0f} s, loaded by the server in "
          f"{load_s:.1f} s), model {args.model} on {encoder.device}")
    for kind in ("text", "image"):
        print(f"{kind:>6}: " + ", ".join(f"{k} {v}" for k, v in row[kind].items()))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
