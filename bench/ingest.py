#!/usr/bin/env python3
"""Ingest throughput, on generated videos or on real footage.

Two measurements on the same videos:
  stages      one video through each stage on its own: busy seconds, frames/s and video-seconds per
              second of decoding (with the small copies), frame quality, TransNetV2, keyframe choice,
              CLIP and file writing;
  end to end  `python offline.py index FOLDER` in a fresh process (model start-up included, as a user
              runs it), as video-seconds per wall-second.
Prints a table and, last, one JSON line.

    python bench/ingest.py                       # one 10-minute 640x360 25 fps generated H.264 video
    python bench/ingest.py --codec mp4v          # the same in an old codec: a proxy is made too
    python bench/ingest.py --real                # ten real 720p H.264 clips (bench/real_media.py, opencv-doc)
    python bench/ingest.py --video FILE          # any file of yours (stages and end to end)
    python bench/ingest.py --minutes 2 --videos 3 --device cuda
    python bench/ingest.py --real --ray          # the same, also on a local Ray head with 1 and 2 video workers
    python bench/ingest.py --clips 300           # many small videos: 300 generated 2-4 s 320x240 H.264 clips,
                                                 # end to end only, reported as clips per second
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.encoders import ClipEncoder, register_model_configs  # noqa: E402
from app.paths import DataLayout  # noqa: E402
from app.sample import ShotPlan, make_video  # noqa: E402
from app.shots import cpu_has_bf16, load_transnet  # noqa: E402
from app.store import KeyframeRecord, encode_jpeg, publish_video_files, write_video_files  # noqa: E402
from app.video_ingest import process_video  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def make_videos(folder: Path, n: int, minutes: float, size: tuple[int, int], fps: float, shot_s: float,
                codec: str) -> None:
    frames = int(minutes * 60 * fps)
    shot_len = max(2, int(shot_s * fps))
    plan = [ShotPlan(shot_len, dissolve_in=12 if i % 3 == 2 else 0) for i in range(max(1, frames // shot_len))]
    for i in range(n):
        make_video(folder / f"bench_{i:02d}.mp4", plan, fps=fps, size=size, seed=i + 1,
                   codec="h264" if codec == "h264" else "opencv")


def _make_clip(job: tuple[Path, int]) -> None:
    path, seed = job
    rng = random.Random(seed)
    frames = rng.randint(50, 100)  # 2 to 4 s at 25 fps
    cut = rng.random() < 0.5  # half of them hold one hard cut
    plan = [ShotPlan(frames // 2), ShotPlan(frames - frames // 2)] if cut else [ShotPlan(frames)]
    make_video(path, plan, fps=25, size=(320, 240), seed=seed, codec="h264")


def make_clips(folder: Path, n: int) -> None:
    """N short clips (2-4 s, 320x240, 25 fps, H.264: no proxies), made in parallel."""
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_make_clip, [(folder / f"clip_{i:04d}.mp4", 1000 + i) for i in range(n)], chunksize=8))


def clips_main(args) -> None:
    """--clips N: only `offline.py index FOLDER` end to end in a fresh process, as clips per second."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "clips"
        t0 = time.perf_counter()
        make_clips(folder, args.clips)
        make_s = time.perf_counter() - t0
        clips = [probe(v) for v in sorted(folder.iterdir())]
        video_s = sum(c["seconds"] for c in clips)
        if args.device == "auto":
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        e2e_s, summary = end_to_end(folder, tmp / "collection", args)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    row = {"bench": "ingest-clips", "clips": len(clips), "video_seconds": round(video_s, 1),
           "clip_size": "320x240", "device": args.device, "gpu": gpu, "cpu_cores": os.cpu_count(),
           "model": args.model, "faces": not args.no_faces, "detector": not args.no_detector,
           "end_to_end_s": round(e2e_s, 2), "clips_per_s": round(len(clips) / e2e_s, 2),
           "video_seconds_per_wall_second": round(video_s / e2e_s, 2), "end_to_end_summary": summary,
           "make_clips_s": round(make_s, 1)}
    print(f"{len(clips)} clips ({video_s:.1f} s of video, 320x240 H.264) indexed end to end by offline.py in a fresh "
          f"process (start-up included) in {e2e_s:.1f} s on {args.device}{' (' + gpu + ')' if gpu else ''}: "
          f"{row['clips_per_s']} clips/s, {row['video_seconds_per_wall_second']} video-seconds per wall-second")
    print(summary)
    print(json.dumps(row))


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        seconds = float(v.duration * v.time_base) if v.duration else c.duration / av.time_base
        return {"name": path.name, "codec": v.codec_context.name, "size": f"{v.codec_context.width}x"
                f"{v.codec_context.height}", "fps": round(float(v.average_rate or 25), 3), "seconds": seconds}


def stage_pass(video: Path, transnet, encoder: ClipEncoder, tmp: Path) -> dict:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    result = process_video(video, transnet, timings=timings)
    timings["decode+shots wall"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoded = [encode_jpeg(kf.image) for kf in result.keyframes]
    feats = encoder.encode_images([px[:, :, ::-1] for _, px in encoded])
    timings["clip"] = time.perf_counter() - t0
    layout = DataLayout.from_data_dir(tmp / "stage")
    layout.ensure()
    records = [KeyframeRecord(kf.frame_idx, kf.shot, jpeg=data, pts_time=kf.pts_time)
               for kf, (data, _) in zip(result.keyframes, encoded, strict=True)]
    t0 = time.perf_counter()
    shots = [(s.start_frame, s.end_frame) for s in result.shots]
    write_video_files(layout, "bench", "bench", result.fps, records, shots, feats)
    publish_video_files(layout, "bench")
    timings["write"] = time.perf_counter() - t0
    return {"frames": result.frames, "fps": result.fps, "shots": len(result.shots), "keyframes": len(feats),
            "timings": timings}


def end_to_end(folder: Path, data: Path, args, extra: tuple[str, ...] = ()) -> tuple[float, str]:
    """`offline.py index FOLDER` in its own process: what a user waits for, model start-up included."""
    cmd = [sys.executable, str(ROOT / "offline.py"), "index", str(folder), "--data-dir", str(data), "--model",
           args.model, "--pretrained", args.pretrained, "--device", args.device, "--no-progress", *extra]
    if args.model_config:
        cmd += ["--model-config", args.model_config]
    if args.no_faces:
        cmd.append("--no-faces")
    if args.no_detector:
        cmd.append("--no-detector")
    if args.no_words:
        cmd += ["--no-ocr", "--no-asr"]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"offline.py index failed:\n{proc.stderr}")
    return wall, " / ".join(proc.stdout.strip().splitlines())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, action="append", default=None,
                   help="measure this file (repeatable) instead of generated videos")
    p.add_argument("--real", action="store_true",
                   help="ten real 720p H.264 clips made from Debian's opencv-doc samples (bench/real_media.py)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of each generated video (default 10)")
    p.add_argument("--videos", type=int, default=1)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=float, default=25)
    p.add_argument("--shot-seconds", type=float, default=4.0)
    p.add_argument("--codec", choices=["h264", "mp4v"], default="h264",
                   help="generated videos: H.264 (plays in browsers) or MPEG-4 Part 2 (the indexer then also "
                        "makes a browser-playable proxy of each)")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="none", help="weights do not change speed; 'none' runs offline")
    p.add_argument("--model-config", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-faces", action="store_true", help="index without the face pass (on by default, as for users)")
    p.add_argument("--no-detector", action="store_true", help="index without the object pass")
    p.add_argument("--no-words", action="store_true", help="index without OCR and speech (on by default, as for users)")
    p.add_argument("--batch-size", type=int, default=None, help="CLIP batch (default 32 on CPU, 256 on GPU)")
    p.add_argument("--clips", type=int, default=None, metavar="N",
                   help="many small videos: N generated 2-4 s 320x240 clips, end to end only, clips per second")
    p.add_argument("--ray", action="store_true",
                   help="also index on a local Ray head (ray start --head) with 1 and 2 video workers")
    p.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 1, help="CPUs of that head (default: all)")
    args = p.parse_args()
    register_model_configs(args.model_config)
    if args.clips:
        clips_main(args)
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "videos"
        t0 = time.perf_counter()
        if args.real:
            import real_media

            real_media.build(folder)
            source = "real 720p H.264 (opencv-doc samples)"
        elif args.video:
            folder.mkdir()
            for v in args.video:
                os.symlink(v.resolve(), folder / v.name)
            source = "given files"
        else:
            make_videos(folder, args.videos, args.minutes, (args.width, args.height), args.fps, args.shot_seconds,
                        args.codec)
            source = f"generated {args.width}x{args.height} {args.codec}"
        make_s = time.perf_counter() - t0
        videos = sorted(folder.iterdir())
        clips = [probe(v) for v in videos]
        video_s = sum(c["seconds"] for c in clips)
        encoder = ClipEncoder(args.model, args.pretrained, args.device)
        encoder.batch_size = args.batch_size or (256 if encoder.device.startswith("cuda") else 32)
        args.device = encoder.device
        transnet = load_transnet(encoder.device)
        longest = max(videos, key=lambda v: next(c["seconds"] for c in clips if c["name"] == v.name))
        stages = stage_pass(longest, transnet, encoder, tmp)
        del encoder, transnet
        e2e_s, summary = end_to_end(folder, tmp / "collection", args)
        shutil.rmtree(tmp / "collection", ignore_errors=True)
        on_ray = ray_runs(folder, tmp, args, video_s) if args.ray else None
    t = stages["timings"]
    n, kfs = stages["frames"], stages["keyframes"]
    stage_video_s = n / stages["fps"]

    def rate(key: str, count: int, unit: str) -> dict:
        busy = t.get(key, 0.0)
        return {"seconds": round(busy, 2), "per_s": round(count / busy, 1) if busy else None, "unit": unit,
                "video_s_per_s": round(stage_video_s / busy, 1) if busy else None}

    per_stage = {"decode": rate("decode", n, "frames/s"), "frame quality": rate("prepare", n, "frames/s"),
                 "transnetv2": rate("shots", n, "frames/s"), "keyframe choice": rate("keyframes", n, "frames/s"),
                 "clip": rate("clip", kfs, "keyframes/s"), "write": rate("write", kfs, "keyframes/s")}
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    row = {"bench": "ingest", "source": source, "device": args.device, "gpu": gpu, "cpu_cores": os.cpu_count(),
           "cpu_bf16": cpu_has_bf16(), "model": args.model, "faces": not args.no_faces, "clips": clips,
           "videos": len(clips),
           "video_seconds": round(video_s, 1), "stage_video": longest.name, "frames_per_video": n,
           "shots_per_video": stages["shots"], "keyframes_per_video": kfs, "stages": per_stage,
           "decode_shots_wall_s": round(t["decode+shots wall"], 2), "end_to_end_s": round(e2e_s, 2),
           "end_to_end_summary": summary, "video_seconds_per_wall_second": round(video_s / e2e_s, 2),
           "make_videos_s": round(make_s, 1), "ray": on_ray}
    print(f"{len(clips)} videos ({source}), {video_s:.1f} s of video; stages measured on {longest.name} "
          f"({n} frames, {stages['shots']} shots, {kfs} keyframes)")
    print(f"{'stage':<18}{'busy s':>9}{'rate':>12}{'':<13}{'video-s/s':>10}")
    for name, st in per_stage.items():
        rate_s, vps = st["per_s"] or 0, st["video_s_per_s"] or 0
        print(f"{name:<18}{st['seconds']:>9.2f}{rate_s:>12.1f} {st['unit']:<12}{vps:>10.1f}")
    wall = t["decode+shots wall"]
    print(f"decode+shots pass wall {wall:.2f} s for {n} frames ({n / wall:.1f} fps)")
    print(f"end to end (offline.py index in a fresh process, start-up included): {e2e_s:.1f} s = "
          f"{row['video_seconds_per_wall_second']} video-seconds per wall-second on {args.device}"
          f"{' (' + gpu + ')' if gpu else ''}; {summary}")
    for run in on_ray or []:
        print(f"on Ray (a local head, {run['cluster_cpus']} CPUs), --ray-workers {run['workers']}: "
              f"{run['end_to_end_s']:.1f} s = {run['video_seconds_per_wall_second']} video-seconds per wall-second, "
              f"Ray start-up {run['ray_start_s']:.1f} s not included; {run['summary']}")
    print(json.dumps(row))


def ray_runs(folder: Path, tmp: Path, args, video_s: float) -> list[dict]:
    """The same folder through `offline.py index --ray HEAD` on a local Ray head (`ray start --head`), with 1 and
    2 video workers (tasks at once), each into a fresh collection."""
    ray = str(Path(sys.executable).parent / "ray")
    port = 6379 + os.getpid() % 1000
    t0 = time.perf_counter()
    subprocess.run([ray, "start", "--head", f"--port={port}", f"--num-cpus={args.ray_cpus}",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True)
    started = time.perf_counter() - t0
    out = []
    try:
        for workers in (1, 2):
            wall, summary = end_to_end(folder, tmp / f"ray-{workers}", args,
                                       ("--ray", f"127.0.0.1:{port}", "--ray-workers", str(workers)))
            shutil.rmtree(tmp / f"ray-{workers}", ignore_errors=True)
            out.append({"workers": workers, "cluster_cpus": args.ray_cpus, "end_to_end_s": round(wall, 2),
                        "video_seconds_per_wall_second": round(video_s / wall, 2), "ray_start_s": round(started, 1),
                        "summary": summary})
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True)
    return out


if __name__ == "__main__":
    main()
