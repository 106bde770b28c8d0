#!/usr/bin/env python3
"""Ingest throughput: generated videos with cuts every few seconds, through the real pipeline.

Prints a table and, last, one JSON line. Stages are timed on the same run:
decode+shots (one pass), CLIP features, file writing; plus video-seconds per wall-second.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.encoders import ClipEncoder, register_model_configs  # noqa: E402
from app.sample import ShotPlan, make_video  # noqa: E402
from app.shots import load_transnet  # noqa: E402
from app.video_ingest import process_video  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=60, help="video length (default 60 s)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=float, default=25)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none", help="weights do not change speed; 'none' runs offline")
    p.add_argument("--model-config", default=None)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    register_model_configs(args.model_config)
    frames = int(args.seconds * args.fps)
    shot_len = int(4 * args.fps)
    plan = [ShotPlan(shot_len, dissolve_in=12 if i % 3 == 2 else 0) for i in range(max(1, frames // shot_len))]
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        make_video(video, plan, fps=args.fps, size=(args.width, args.height))
        transnet = load_transnet("cuda" if args.device == "cuda" else "cpu")
        encoder = ClipEncoder(args.model, args.pretrained, args.device)
        t0 = time.perf_counter()
        result = process_video(video, transnet)
        t1 = time.perf_counter()
        feats = encoder.encode_images([kf.image[:, :, ::-1] for kf in result.keyframes])
        t2 = time.perf_counter()
    decode_s, clip_s = t1 - t0, t2 - t1
    total = t2 - t0
    video_s = result.frames / args.fps
    row = {"bench": "ingest", "device": encoder.device, "model": args.model,
           "resolution": f"{args.width}x{args.height}",
           "video_seconds": round(video_s, 1), "frames": result.frames, "shots": len(result.shots),
           "keyframes": len(feats), "decode_shots_s": round(decode_s, 2),
           "decode_shots_fps": round(result.frames / decode_s, 1), "clip_s": round(clip_s, 2),
           "clip_images_per_s": round(len(feats) / clip_s, 1) if clip_s else None,
           "total_s": round(total, 2), "video_seconds_per_wall_second": round(video_s / total, 2)}
    for k, v in row.items():
        print(f"{k:>32}: {v}")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
