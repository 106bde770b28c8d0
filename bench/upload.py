#!/usr/bin/env python3
"""Uploads from the browser's side: tus upload throughput (MB/s) into a running server.py, and the time from drop to
searchable for a zip of 100 real photos and a 1-minute real video, through the job the upload makes.

Everything runs as users run it: server.py in its own process (with its job worker), each job in an
`offline.py job` process, HTTP over a local socket, 8 MB chunks each with its SHA-256 as the upload page sends them.
The collection uses the default model (ViT-B-32) with random weights (`--pretrained none`: the same computation
as real weights, no download) and the default passes (faces on; objects only when the detector's weights are
cached). Media: Debian's opencv-doc samples (the photos of examples/data, padded to 100 with crops of them; the
first 60 s of vtest.avi). Prints a table and, last, one JSON line.

    python bench/upload.py
    python bench/upload.py --throughput-mb 512 --model framefinder-tiny   (the pipeline's own cost, small model)
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_jobs_processes import call, send, upload, wait_job  # noqa: E402

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
TINY_CONFIG = ROOT / "tests" / "data" / "framefinder-tiny.json"
CHUNK = 8 * 1024 * 1024


def photos_zip(n: int = 100) -> bytes:
    """n real photos: every JPEG/PNG of opencv-doc's examples/data, then crops of them until there are n."""
    from PIL import Image

    sources = sorted(p for p in OPENCV_DATA.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            src = sources[i % len(sources)]
            if i < len(sources):
                zf.write(src, f"photos/{src.name}")
                continue
            with Image.open(src) as im:
                rgb = im.convert("RGB")
                w, h = rgb.size
                crop = rgb.crop((w // 8, h // 8, w - w // 8, h - h // 8))
                out = io.BytesIO()
                crop.save(out, "JPEG", quality=90)
            zf.writestr(f"photos/crop_{i:03d}_{src.stem}.jpg", out.getvalue())
    return buf.getvalue()


def minute_video(folder: Path) -> Path:
    out = folder / "vtest-60s.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(OPENCV_DATA / "vtest.avi"), "-t", "60", "-c:v", "libx264",
                    "-preset", "veryfast", "-pix_fmt", "yuv420p", str(out)], check=True)
    return out


def throughput(base: str, token: str, megabytes: int) -> float:
    """MB/s of a tus upload of `megabytes` random bytes in 8 MB chunks with SHA-256 (terminated after, no job)."""
    data = os.urandom(megabytes * 1024 * 1024)
    start = time.perf_counter()
    location = send(base, token, "throughput.mp4", data, chunk=CHUNK, checksum=True)
    seconds = time.perf_counter() - start
    call("DELETE", location, token)
    return megabytes / seconds


def drop_to_searchable(base: str, token: str, files: dict[str, bytes]) -> tuple[float, float, dict]:
    """(seconds to send, seconds from the first byte to the job's 'done', the job)."""
    start = time.perf_counter()
    job_id = upload(base, token, files, chunk=CHUNK)
    sent = time.perf_counter() - start
    job = wait_job(base, token, job_id, timeout=3600)
    return sent, time.perf_counter() - start, job


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--throughput-mb", type=int, default=256)
    args = ap.parse_args()
    from tests.processes import free_port

    with tempfile.TemporaryDirectory(prefix="ff-bench-upload-") as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data"
        seed = tmp_path / "seed"
        seed.mkdir()
        from app.sample import make_image

        make_image(seed / "seed.jpg", 1)  # a first item fixes the collection's model and weights
        common = ["--data-dir", str(data), "--model-config", str(TINY_CONFIG), "--device", "cpu"]
        subprocess.run([sys.executable, str(ROOT / "offline.py"), "index", str(seed), *common, "--model", args.model,
                        "--pretrained", "none", "--no-progress"], check=True, capture_output=True)
        subprocess.run([sys.executable, str(ROOT / "offline.py"), "users", "add", "bench", "--role", "admin",
                        "--password-stdin", "--data-dir", str(data)], input="Kx9-upl0ad-check\n", text=True,
                       check=True, capture_output=True)
        token = subprocess.run([sys.executable, str(ROOT / "offline.py"), "users", "token", "bench", "--data-dir",
                                str(data)], check=True, capture_output=True, text=True).stdout
        token = next(w for w in token.split() if w.startswith("ff_"))
        port = free_port()
        server = subprocess.Popen([sys.executable, str(ROOT / "server.py"), *common, "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    call("GET", f"{base}/login", token)
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("server.py did not start") from None
                    time.sleep(0.5)
            mbps = throughput(base, token, args.throughput_mb)
            zipped = photos_zip(100)
            z_sent, z_total, z_job = drop_to_searchable(base, token, {"photos100.zip": zipped})
            video = minute_video(tmp_path).read_bytes()
            v_sent, v_total, v_job = drop_to_searchable(base, token, {"vtest-60s.mp4": video})
        finally:
            server.terminate()
            server.wait(20)
    added = sum(f["status"] == "added" for f in z_job["files"])
    rows = [("tus upload, 8 MB chunks + SHA-256", f"{mbps:.0f} MB/s", f"{args.throughput_mb} MB"),
            ("100-photo zip: sent", f"{z_sent:.1f} s", f"{len(zipped) / 1e6:.1f} MB"),
            ("100-photo zip: drop to searchable", f"{z_total:.1f} s", f"{added} photos added, job {z_job['status']}"),
            ("1-minute video: sent", f"{v_sent:.1f} s", f"{len(video) / 1e6:.1f} MB"),
            ("1-minute video: drop to searchable", f"{v_total:.1f} s",
             f"{v_job['stages'].get('keyframes', 0)} keyframes, job {v_job['status']}")]
    for name, value, note in rows:
        print(f"{name:<38} {value:>10}  {note}")
    print(json.dumps({"bench": "upload", "model": args.model, "cpus": os.cpu_count(), "upload_mb_s": round(mbps, 1),
                      "zip100_sent_s": round(z_sent, 2), "zip100_searchable_s": round(z_total, 2),
                      "zip100_added": added, "video60_sent_s": round(v_sent, 2),
                      "video60_searchable_s": round(v_total, 2), "video60_keyframes": v_job["stages"].get("keyframes"),
                      "zip_job": z_job["message"][:300], "video_job": v_job["message"][:300]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
