#!/usr/bin/env python3
"""Ingest throughput on generated videos (cuts every few seconds, every third one a dissolve).

Two measurements on the same videos:
  stages      one video through each stage on its own: busy seconds and frames/s of decoding,
              frame preparation, TransNetV2, keyframe choice, CLIP and file writing;
  end to end  `offline.py index` on all videos (the real pipeline, stages overlapped),
              as video-seconds per wall-second.
Prints a table and, last, one JSON line.

    python bench/ingest.py                       # one 10-minute 640x360 25 fps video
    python bench/ingest.py --minutes 2 --videos 3 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.db import open_database  # noqa: E402
from app.encoders import ClipEncoder, register_model_configs  # noqa: E402
from app.indexer import IndexOptions, run_index  # noqa: E402
from app.paths import DataLayout  # noqa: E402
from app.sample import ShotPlan, make_video  # noqa: E402
from app.shots import cpu_has_bf16, load_transnet  # noqa: E402
from app.store import KeyframeRecord, write_video_files  # noqa: E402
from app.video_ingest import process_video  # noqa: E402


def make_videos(folder: Path, n: int, minutes: float, size: tuple[int, int], fps: float, shot_s: float) -> int:
    frames = int(minutes * 60 * fps)
    shot_len = max(2, int(shot_s * fps))
    plan = [ShotPlan(shot_len, dissolve_in=12 if i % 3 == 2 else 0) for i in range(max(1, frames // shot_len))]
    for i in range(n):
        make_video(folder / f"bench_{i:02d}.mp4", plan, fps=fps, size=size, seed=i + 1)
    return sum(p.frames for p in plan)


def stage_pass(video: Path, transnet, encoder: ClipEncoder, tmp: Path) -> dict:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    result = process_video(video, transnet, timings=timings)
    timings["decode+shots wall"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats = encoder.encode_images([kf.image[:, :, ::-1] for kf in result.keyframes])
    timings["clip"] = time.perf_counter() - t0
    layout = DataLayout.from_data_dir(tmp / "stage")
    layout.ensure()
    records = [KeyframeRecord(kf.frame_idx, kf.shot, bgr=kf.image) for kf in result.keyframes]
    t0 = time.perf_counter()
    write_video_files(layout, "bench", result.fps, records, [(s.start_frame, s.end_frame) for s in result.shots], feats)
    timings["write"] = time.perf_counter() - t0
    return {"frames": result.frames, "shots": len(result.shots), "keyframes": len(feats), "timings": timings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of each video (default 10)")
    p.add_argument("--videos", type=int, default=1)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=float, default=25)
    p.add_argument("--shot-seconds", type=float, default=4.0)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none", help="weights do not change speed; 'none' runs offline")
    p.add_argument("--model-config", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="CLIP batch (default 32 on CPU, 256 on GPU)")
    args = p.parse_args()
    register_model_configs(args.model_config)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        frames = make_videos(tmp / "videos", args.videos, args.minutes, (args.width, args.height), args.fps,
                             args.shot_seconds)
        make_s = time.perf_counter() - t0
        encoder = ClipEncoder(args.model, args.pretrained, args.device)
        encoder.batch_size = args.batch_size or (256 if encoder.device.startswith("cuda") else 32)
        transnet = load_transnet(encoder.device)
        stages = stage_pass(tmp / "videos" / "bench_00.mp4", transnet, encoder, tmp)
        layout = DataLayout.from_data_dir(tmp / "collection")
        layout.ensure()
        t0 = time.perf_counter()
        summary = run_index(layout, [tmp / "videos"], IndexOptions(model=args.model, pretrained=args.pretrained,
                                                                   device=encoder.device, progress=False),
                            open_database(layout.database_url), encoder=encoder)
        e2e_s = time.perf_counter() - t0
    video_s = args.videos * frames / args.fps
    t = stages["timings"]
    n, kfs = stages["frames"], stages["keyframes"]
    per_stage = {name: {"seconds": round(t.get(key, 0.0), 2),
                        "per_s": round(count / t[key], 1) if t.get(key) else None, "unit": unit}
                 for name, key, count, unit in (
                     ("decode", "decode", n, "frames/s"), ("prepare", "prepare", n, "frames/s"),
                     ("transnetv2", "shots", n, "frames/s"), ("keyframe choice", "keyframes", n, "frames/s"),
                     ("clip", "clip", kfs, "keyframes/s"), ("write", "write", kfs, "keyframes/s"))}
    gpu = torch.cuda.get_device_name(0) if encoder.device.startswith("cuda") else None
    row = {"bench": "ingest", "device": encoder.device, "gpu": gpu, "cpu_cores": os.cpu_count(),
           "cpu_bf16": cpu_has_bf16(), "model": args.model, "resolution": f"{args.width}x{args.height}",
           "fps": args.fps, "videos": args.videos, "video_seconds": round(video_s, 1), "frames_per_video": n,
           "shots_per_video": stages["shots"], "keyframes_per_video": kfs, "stages": per_stage,
           "decode_shots_wall_s": round(t["decode+shots wall"], 2),
           "end_to_end_s": round(e2e_s, 2), "end_to_end_failed": len(summary.failed),
           "video_seconds_per_wall_second": round(video_s / e2e_s, 2), "make_videos_s": round(make_s, 1)}
    print(f"{'stage':<18}{'busy s':>9}{'rate':>12}")
    for name, st in per_stage.items():
        print(f"{name:<18}{st['seconds']:>9.2f}{st['per_s'] or 0:>12.1f} {st['unit']}")
    wall = t["decode+shots wall"]
    print(f"decode+shots pass wall {wall:.2f} s for {n} frames ({n / wall:.1f} fps)")
    print(f"end to end: {args.videos} x {args.minutes} min in {e2e_s:.1f} s = "
          f"{row['video_seconds_per_wall_second']} video-seconds per wall-second on {encoder.device}"
          f"{' (' + gpu + ')' if gpu else ''}")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
