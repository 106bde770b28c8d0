#!/usr/bin/env python3
"""Annotation save path: boxes per second through POST /api/annotations over real HTTP
(bearer token, validation, label lookup, one committed transaction per box).

Sequential and with several concurrent clients, on SQLite (default) or DATABASE_URL.
Prints a table and, last, one JSON line.

    python bench/annotations.py --boxes 1000 --clients 4
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from werkzeug.serving import make_server  # noqa: E402

from app import accounts, create_app  # noqa: E402
from app.db import open_database  # noqa: E402
from app.encoders import ClipEncoder  # noqa: E402
from app.indexer import IndexOptions, run_index  # noqa: E402
from app.sample import make_image  # noqa: E402
from app.settings import Settings  # noqa: E402


def post(url: str, token: str, payload: dict) -> int:
    req = urllib.request.Request(url, json.dumps(payload).encode(),
                                 {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as r:
        return r.status


def run(url: str, token: str, images: list[str], n: int, clients: int) -> float:
    def worker(offset: int) -> None:
        for i in range(offset, n, clients):
            assert post(url, token, {"image": images[i % len(images)], "box": [i % 200, i % 100, 50, 40],
                                     "label": f"label {i % 20}", "note": "bench"}) == 201

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boxes", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(5):
            make_image(Path(tmp) / "images" / f"im_{i}.jpg", i)
        settings = Settings.load({"data_dir": Path(tmp) / "data"})
        layout = settings.layout
        layout.ensure()
        url_db = settings.database_url
        sessions = open_database(url_db)
        encoder = ClipEncoder("ViT-B-32", "none", "cpu")
        run_index(layout, [Path(tmp) / "images"], IndexOptions(model="ViT-B-32", pretrained="none", device="cpu",
                                                                progress=False), sessions, encoder=encoder)
        with sessions() as s:
            accounts.add(s, "bench", "bench password", "annotator")
            token = accounts.issue_token(s, "bench")
        images = [str(p.resolve()) for p in sorted((Path(tmp) / "images").glob("*.jpg"))]
        app = create_app({"ENCODER": encoder}, settings=settings)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        api = f"http://127.0.0.1:{server.server_port}/api/annotations"
        sequential = run(api, token, images, args.boxes, 1)
        concurrent = run(api, token, images, args.boxes, args.clients)
        server.shutdown()
    backend = url_db.split(":", 1)[0]
    row = {"bench": "annotations", "database": backend, "boxes": args.boxes,
           "sequential_boxes_per_s": round(sequential, 1), "clients": args.clients,
           "concurrent_boxes_per_s": round(concurrent, 1)}
    print(f"{backend}: {args.boxes} boxes, 1 client {sequential:.1f} boxes/s, {args.clients} clients "
          f"{concurrent:.1f} boxes/s")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
