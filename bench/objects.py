#!/usr/bin/env python3
"""Object detection speed (frames/s of the torchvision detectors on real 1280x720 frames, CPU or GPU) and the
latency of an objects search (`target=objects` through the HTTP API's code) on a collection with a regions index.

Detection runs with random weights (`weights=None`): speed does not depend on the weights, and the lent GPU machines
and this one have no network to fetch them. The detection part needs only torch and torchvision, so it runs on a GPU
machine without the app's other dependencies (`--no-query`). Prints a table, then one JSON line.

    python bench/objects.py                      # CPU: detectors, then region-query latency
    python3 bench/objects.py --device cuda --no-query
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
DETECTORS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn")


def frames(count: int) -> list[torch.Tensor]:
    """Real frames (vtest.avi, Megamind.avi) scaled to 1280x720, as keyframes are stored; noise where absent."""
    import cv2

    out = []
    for clip in ("vtest.avi", "Megamind.avi"):
        cap = cv2.VideoCapture(str(OPENCV_DATA / clip))
        while len(out) < count * (1 if clip == "Megamind.avi" else 0.5):
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.resize(bgr, (1280, 720))[:, :, ::-1].copy()
            out.append(torch.from_numpy(rgb).permute(2, 0, 1).float().div(255))
        cap.release()
    while len(out) < count:
        out.append(torch.rand(3, 720, 1280))
    return out[:count]


def detection_speed(name: str, pictures: list[torch.Tensor], device: str, batch: int) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None).eval().to(device)
    pictures = [p.to(device) for p in pictures]
    with torch.inference_mode():
        model(pictures[:batch])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(0, len(pictures), batch):
            model(pictures[i:i + batch])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    return {"detector": name, "frames": len(pictures), "batch": batch, "frames_per_s": round(len(pictures) / seconds,
                                                                                            2)}


def region_query_latency(queries: int) -> dict:
    """p50/p95 of an objects search through the API's code (tiny CLIP, random-weight detector, threshold 0: up to 30
    objects per picture) over the test photos and a generated video."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("FRAMEFINDER_MODEL_CONFIG", str(ROOT / "tests" / "data" / "framefinder-tiny.json"))
    import shutil

    from app import create_app
    from app.db import open_database
    from app.encoders import ClipEncoder, register_model_configs
    from app.indexer import IndexOptions, run_index
    from app.paths import DataLayout
    from app.settings import Settings
    from tests.face_media import FACES, NAMES, face_video

    register_model_configs(ROOT / "tests" / "data" / "framefinder-tiny.json")
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        media.mkdir()
        for name in NAMES:
            shutil.copy(FACES / f"{name}.jpg", media)
        face_video(media / "clip.mp4", [(n, 2.0) for n in NAMES])
        layout = DataLayout.from_data_dir(Path(tmp) / "data")
        layout.ensure()
        settings = Settings.load({"data_dir": layout.data_dir})
        options = IndexOptions(model="framefinder-tiny", pretrained="none", device="cpu", progress=False, faces=False,
                               concepts=False, detector="fasterrcnn_mobilenet_v3_large_320_fpn",
                               detector_weights="none", object_threshold=0.0)
        summary = run_index(layout, [media], options, open_database(settings.database_url, layout.data_dir),
                            ClipEncoder("framefinder-tiny", "none", "cpu"))
        client = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False}, settings).test_client()
        item = client.get("/api/search?q=x&k=1").get_json()["results"][0]["item"]
        times = []
        for i in range(queries + 2):
            t = time.perf_counter()
            r = client.get(f"/api/search?region_of={item}&box=10,10,120,120&target=objects&k=20")
            assert r.status_code == 200, r.get_json()
            if i >= 2:
                times.append((time.perf_counter() - t) * 1000)
        regions = int(summary.objects.split("regions index ")[1].split(" ")[0])
        return {"regions_indexed": regions, "queries": len(times), "p50_ms": round(float(np.percentile(times, 50)), 1),
                "p95_ms": round(float(np.percentile(times, 95)), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=20, help="frames per detector")
    p.add_argument("--batch", type=int, default=None, help="frames per call (default 1 on CPU, 16 on a GPU)")
    p.add_argument("--detectors", default=",".join(DETECTORS))
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--no-query", action="store_true", help="only the detectors (needs torch and torchvision only)")
    args = p.parse_args()
    batch = args.batch or (16 if args.device.startswith("cuda") else 1)
    pictures = frames(args.frames)
    rows = [detection_speed(name, pictures, args.device, batch) for name in args.detectors.split(",")]
    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    for r in rows:
        print(f"{r['detector']:<40} {r['frames_per_s']:>8.2f} frames/s (1280x720, batch {r['batch']}) on {card}")
    query = {} if args.no_query else region_query_latency(args.queries)
    if query:
        print(f"objects search over {query['regions_indexed']} regions: p50 {query['p50_ms']} ms, "
              f"p95 {query['p95_ms']} ms ({query['queries']} queries)")
    print(json.dumps({"bench": "objects", "device": card, "torch": torch.__version__, "detection": rows,
                      **({"region_query": query} if query else {})}))


if __name__ == "__main__":
    main()
