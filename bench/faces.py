#!/usr/bin/env python3
"""Face model speed: detection (pictures/s, faces/s) and embedding (faces/s) on real faces, a crowd picture of 50
faces, and (when filled in) face-search query latency through the HTTP API.

Pictures: the test photos of tests/data/faces (at most 640 px) and ~50 frames each of two real clips from Debian's
`opencv-doc` samples (vtest.avi: a pedestrian surveillance scene; Megamind.avi: trailer cuts), scaled to cover
1280x720 as bench/real_media.py makes them (`--frame-size native` keeps the source size). Each picture is analysed
as the ingest does (app.face_model.analysed: longest side at most `--side`). The crowd picture is a 10x5 grid of
face crops (tests/face_media.group_photo). Prints a table and, last, one JSON line.

    python bench/faces.py
    python bench/faces.py --side 960 --frame-size native
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.face_model import analysed, load_face_model  # noqa: E402
from tests.face_media import FACES, NAMES, face_video, group_photo  # noqa: E402

TINY_CONFIG = Path(__file__).resolve().parent.parent / "tests" / "data" / "framefinder-tiny.json"

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
CLIPS = ["vtest.avi", "Megamind.avi"]


def _cover(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale to cover size (w, h) and crop the middle, as bench/real_media.py does."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max(size[0] / w, size[1] / h)
    big = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
    y0, x0 = (big.shape[0] - size[1]) // 2, (big.shape[1] - size[0]) // 2
    return np.ascontiguousarray(big[y0:y0 + size[1], x0:x0 + size[0]])


def clip_frames(path: Path, count: int, size: tuple[int, int] | None) -> list[np.ndarray]:
    """About `count` RGB frames spread evenly over the clip."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        total = stream.frames or 1000
        step = max(1, total // count)
        frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(stream)) if i % step == 0]
    frames = frames[:count]
    return [_cover(f, size) for f in frames] if size else frames


def measure(model, pictures: list[np.ndarray]) -> dict:
    """detect then embed each picture (one embed call per picture: all its faces in one batch)."""
    model.embed(pictures[0], model.detect(pictures[0]))  # warm-up
    detect_s, embed_s, faces, per_picture = 0.0, 0.0, 0, []
    for rgb in pictures:
        t0 = time.perf_counter()
        found = model.detect(rgb)
        t1 = time.perf_counter()
        model.embed(rgb, found)
        t2 = time.perf_counter()
        detect_s += t1 - t0
        embed_s += t2 - t1
        faces += len(found)
        per_picture.append((t1 - t0) * 1000)
    sizes = {f"{rgb.shape[1]}x{rgb.shape[0]}" for rgb in pictures}
    size = sizes.pop() if len(sizes) == 1 else f"<={max(max(rgb.shape[:2]) for rgb in pictures)}"
    return {"pictures": len(pictures), "size": size, "faces": faces,
            "detect_pictures_per_s": round(len(pictures) / detect_s, 2),
            "detect_faces_per_s": round(faces / detect_s, 2),
            "detect_p50_ms": round(float(np.percentile(per_picture, 50)), 1),
            "embed_faces_per_s": round(faces / embed_s, 1) if faces else None}


def crowd_picture(model, folder: Path, side: int, rows: int = 5, columns: int = 10, tile: int = 128) -> Path:
    """A rows x columns grid of face crops (each test photo cut to a square twice its face, `tile` px high)."""
    crops = []
    for name in NAMES:
        rgb = np.asarray(Image.open(FACES / f"{name}.jpg").convert("RGB"))
        x, y, w, h = model.detect(rgb)[0].box
        cx, cy, half = x + w / 2, y + h / 2, max(w, h)
        crop = Image.fromarray(rgb).crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
        crops.append(folder / f"crop_{name}.jpg")
        crop.save(crops[-1], quality=90)
    path = folder / "crowd.jpg"
    group_photo(path, [crops[i % len(crops)] for i in range(rows * columns)], height=tile, seed=1, columns=columns)
    return path


def measure_crowd(model, path: Path, side: int, repeat: int = 3) -> dict:
    rgb, _ = analysed(Image.open(path), side)
    model.detect(rgb)  # warm-up
    detect_ms, embed_ms, faces = [], [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        found = model.detect(rgb)
        t1 = time.perf_counter()
        model.embed(rgb, found)
        detect_ms.append((t1 - t0) * 1000)
        embed_ms.append((time.perf_counter() - t1) * 1000)
        faces = len(found)
    h, w = rgb.shape[:2]
    return {"size": f"{w}x{h}", "faces_placed": 50, "faces_found": faces,
            "detect_ms": round(float(np.median(detect_ms)), 1), "embed_ms": round(float(np.median(embed_ms)), 1),
            "total_ms": round(float(np.median(detect_ms) + np.median(embed_ms)), 1)}


def query_latency(args: argparse.Namespace) -> dict:
    """p50/p95 of POST /api/faces/search (detect + embed + search + the n x m matching) through the server's code, on a
    collection of the test photos, pairs of them and a video (the tiny CLIP model: faces do not depend on it)."""
    if args.no_query:
        return {}
    os.environ.setdefault("FRAMEFINDER_MODEL_CONFIG", str(TINY_CONFIG))
    from app import create_app
    from app.db import open_database
    from app.encoders import ClipEncoder, register_model_configs
    from app.indexer import IndexOptions, run_index
    from app.paths import DataLayout
    from app.settings import Settings

    register_model_configs(TINY_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        media.mkdir()
        for i, name in enumerate(NAMES):
            shutil.copy(FACES / f"{name}.jpg", media / f"{name}.jpg")
            group_photo(media / f"pair_{i}.jpg", [name, NAMES[(i + 3) % len(NAMES)]], seed=i + 1)
        face_video(media / "faces.mp4", [(n, 2.0) for n in NAMES])
        layout = DataLayout.from_data_dir(Path(tmp) / "data")
        layout.ensure()
        settings = Settings.load({"data_dir": layout.data_dir})
        summary = run_index(layout, [media], IndexOptions(model="framefinder-tiny", pretrained="none", device="cpu",
                                                          progress=False, face_model=args.model),
                            open_database(settings.database_url, layout.data_dir),
                            ClipEncoder("framefinder-tiny", "none", "cpu"))
        app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False}, settings)
        client = app.test_client()
        single, pair = FACES / "obama_3.jpg", Path(tmp) / "query_pair.jpg"
        group_photo(pair, ["obama_3", "biden_1"], seed=9)
        out = {"faces_indexed": int(summary.faces.split("face index ")[1].split(" ")[0])}
        for label, photo, fields in (("one_person", single, {}), ("two_people", pair, {"face": "0,1"})):
            times = []
            for i in range(args.queries + 2):
                t = time.perf_counter()
                r = client.post("/api/faces/search", data={"image": (io.BytesIO(photo.read_bytes()), "q.jpg"),
                                                           **fields})
                assert r.status_code == 200, r.get_json()
                if i >= 2:  # the first two load the index and the model
                    times.append((time.perf_counter() - t) * 1000)
            out[label] = {"p50_ms": round(float(np.percentile(times, 50)), 1),
                          "p95_ms": round(float(np.percentile(times, 95)), 1), "queries": len(times),
                          "results": len(r.get_json()["results"])}
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dlib", help="dlib, or insightface:PATH")
    p.add_argument("--side", type=int, default=1280, help="pictures are analysed at most this long (as the ingest)")
    p.add_argument("--frame-size", default="1280x720", help="WxH the clip frames are scaled to cover, or 'native'")
    p.add_argument("--frames", type=int, default=50, help="frames taken from each clip")
    p.add_argument("--photo-repeat", type=int, default=5, help="passes over the (eight) test photos")
    p.add_argument("--source", type=Path, default=OPENCV_DATA)
    p.add_argument("--queries", type=int, default=30, help="face searches timed per query kind")
    p.add_argument("--no-query", action="store_true", help="leave out the query latency (it indexes a collection)")
    args = p.parse_args()
    size = None if args.frame_size == "native" else tuple(int(v) for v in args.frame_size.lower().split("x"))
    model = load_face_model(args.model)

    photos = [analysed(Image.open(FACES / f"{n}.jpg"), args.side)[0] for n in NAMES]
    sets = {"photos": photos * args.photo_repeat}
    for clip in CLIPS:
        if (args.source / clip).exists():
            frames = clip_frames(args.source / clip, args.frames, size)
            sets[Path(clip).stem.lower()] = [analysed(Image.fromarray(f), args.side)[0] for f in frames]
    rows = {name: measure(model, pictures) for name, pictures in sets.items()}
    with tempfile.TemporaryDirectory() as tmp:
        crowd = measure_crowd(model, crowd_picture(model, Path(tmp), args.side), args.side)
    query = query_latency(args)

    for name, r in rows.items():
        embed = f"{r['embed_faces_per_s']:>7.1f}" if r["embed_faces_per_s"] is not None else "      -"
        print(f"{name:>9}: {r['pictures']:>3} pictures {r['size']:>9}  {r['faces']:>3} faces  detect "
              f"{r['detect_pictures_per_s']:>6.2f} pictures/s {r['detect_faces_per_s']:>6.2f} faces/s "
              f"(p50 {r['detect_p50_ms']:.0f} ms)  embed {embed} faces/s")
    print(f"    crowd: 1 picture {crowd['size']:>9}  {crowd['faces_found']}/{crowd['faces_placed']} faces found  "
          f"detect {crowd['detect_ms']:.0f} ms + embed {crowd['embed_ms']:.0f} ms = {crowd['total_ms']:.0f} ms")
    for name, value in query.items():
        print(f"    query: {name} {value}")
    out = {"bench": "faces", "model": model.name, "device": f"cpu ({os.cpu_count()} cores)", "side": args.side,
           "frame_size": args.frame_size, "results": [{"set": name, **r} for name, r in rows.items()],
           "crowd": crowd}
    if query:
        out["query"] = query
    print(json.dumps(out))


if __name__ == "__main__":
    main()
