#!/usr/bin/env python3
"""Load and faults against a served collection: parallel searches and box edits over HTTP while the
indexer is killed (`kill -9`) at random points, most often during the re-index of a changed video.

Runs for --minutes (bounded; traffic only to 127.0.0.1), then prints its counts and, last, one JSON line.
Exits non-zero on any HTTP 500, any lost or duplicated box, any broken index, or any moment where the
catalogue, the files and the served collection disagree.

    python bench/faults.py                      # 10 minutes, tiny random-weight CLIP (pipeline behaviour)
    python bench/faults.py --minutes 2 --model ViT-B-32 --pretrained none
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from app import vectors  # noqa: E402
from app.paths import DataLayout  # noqa: E402
from app.sample import ShotPlan, make_image, make_video  # noqa: E402
from app.store import SOURCE_MARKER  # noqa: E402

TINY = ROOT / "tests" / "data" / "framefinder-tiny.json"
PASSWORD = "fault bench password 1"
CHANGING = "changing"


def db_first_frame(layout, video_id: str) -> int | None:
    """The frame of the catalogue's first keyframe of a video (None if it has none)."""
    db = sqlite3.connect(f"file:{layout.instance_dir / 'framefinder.db'}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT k.frame_idx FROM keyframes k JOIN videos v ON k.video_pk = v.id "
                         "WHERE v.video_id = ? ORDER BY k.n LIMIT 1", (video_id,)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c: Counter = Counter()
        self.errors: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.c[key] += n

    def outcome(self, what: str, status: int, body: bytes) -> None:
        """One answer: counted by status; a 5xx is an error."""
        self.add(f"{what} {status}")
        if status >= 500:
            self.error(f"{what}: {status} {body[:200]!r}")

    def error(self, text: str) -> None:
        with self.lock:
            self.c["errors"] += 1
            if len(self.errors) < 30:
                self.errors.append(text)


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
            timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def multipart(fields: dict[str, str], file_name: str, file_data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{file_name}"\r\n\r\n'
                 .encode() + file_data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def model_args(args) -> list[str]:
    out = ["--model", args.model, "--pretrained", args.pretrained, "--device", "cpu", "--no-progress"]
    return out + (["--model-config", str(args.model_config)] if args.model_config else [])


def make_media(folder: Path) -> None:
    for i in range(2):
        make_video(folder / f"steady_{i}.mp4", [ShotPlan(60), ShotPlan(50, dissolve_in=10), ShotPlan(60)],
                   seed=40 + i, codec="h264")
    for i in range(4):
        make_image(folder / "photos" / f"photo_{i}.jpg", 50 + i)
    variants = folder.parent / "variants"
    for v in range(2):
        make_video(variants / f"{CHANGING}_{v}.mp4", [ShotPlan(70 + 20 * v), ShotPlan(60), ShotPlan(50 + 30 * v)],
                   seed=60 + v, codec="h264")
    shutil.copy(variants / f"{CHANGING}_0.mp4", folder / f"{CHANGING}.mp4")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def users(data: Path) -> dict[str, str]:
    tokens = {}
    for name in ("fa1", "fa2"):
        subprocess.run([sys.executable, str(ROOT / "offline.py"), "users", "add", name, "--role", "annotator",
                        "--password-stdin", "--data-dir", str(data)], input=PASSWORD + "\n", text=True, check=True,
                       capture_output=True)
        proc = subprocess.run([sys.executable, str(ROOT / "offline.py"), "users", "token", name, "--data-dir",
                               str(data)], text=True, check=True, capture_output=True)
        tokens[name] = proc.stdout.strip().splitlines()[-1]
    return tokens


def searcher(base: str, stop: threading.Event, counts: Counts, keyframes_dir: Path, rng: random.Random) -> None:
    words = ["a red bus", "people walking", "a dark room", "blue sky", "text on screen", "x" * 300]
    while not stop.is_set():
        kind = rng.choice(["text", "like", "image", "region", "sequence"])
        try:
            if kind == "text":
                status, body = request(f"{base}/api/search?q={urllib.request.quote(rng.choice(words))}&k=50")
            elif kind == "sequence":
                status, body = request(f"{base}/?q1=red&q2=blue&gap=5")
            else:
                status, body = request(f"{base}/api/search?q=anything&k=20")
                items = [h["item"] for h in json.loads(body)["results"] if h["video_id"]] if status == 200 else []
                if not items:
                    continue
                item = rng.choice(items)
                if kind == "like":
                    status, body = request(f"{base}/api/search?like={item}&k=20")
                elif kind == "region":
                    status, body = request(f"{base}/api/search", "POST",
                                           f"region_of={item}&box=10,10,100,60".encode(),
                                           {"Content-Type": "application/x-www-form-urlencoded"})
                else:
                    video = item.rpartition("@")[0]
                    files = sorted((keyframes_dir / video).glob("*.jpg"))
                    if not files:
                        continue
                    data, ctype = multipart({"k": "10"}, "q.jpg", rng.choice(files).read_bytes())
                    status, body = request(f"{base}/api/search", "POST", data, {"Content-Type": ctype})
                    pic, _ = request(f"{base}/item/{item}/picture")
                    counts.add(f"picture {pic}")
                    if pic >= 500:
                        counts.error(f"picture {item}: {pic}")
        except (OSError, ValueError, KeyError) as exc:
            if not stop.is_set():
                counts.error(f"{kind}: {exc}")
            continue
        counts.outcome("search", status, body)


def editor(base: str, token: str, stop: threading.Event, counts: Counts, ledger: dict, rng: random.Random) -> None:
    """Creates, edits and deletes its own boxes; the ledger holds what the server confirmed."""
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while not stop.is_set():
        try:
            status, body = request(f"{base}/api/search?q=anything&k=20")
            items = [h["item"] for h in json.loads(body)["results"] if h["video_id"]] if status == 200 else []
            mine = [i for i, v in ledger.items() if v is not None]
            action = rng.choice(["create", "create", "patch", "delete"]) if mine else "create"
            if action == "create" and items:
                tag = uuid.uuid4().hex[:12]
                payload = {"item": rng.choice(items), "box": [5, 5, 40, 30], "label": "fault", "note": tag}
                status, body = request(f"{base}/api/annotations", "POST", json.dumps(payload).encode(), auth)
                if status == 201:
                    record = json.loads(body)
                    ledger[record["id"]] = {"note": tag, "version": record["version"], "box": record["box"]}
            elif action == "patch":
                aid = rng.choice(mine)
                new_box = [rng.randint(0, 20), rng.randint(0, 20), 30, 20]
                status, body = request(f"{base}/api/annotations/{aid}", "PATCH",
                                       json.dumps({"version": ledger[aid]["version"], "box": new_box}).encode(), auth)
                if status == 200:
                    ledger[aid].update(version=json.loads(body)["version"], box=new_box)
            elif action == "delete":
                aid = rng.choice(mine)
                status, body = request(f"{base}/api/annotations/{aid}?version={ledger[aid]['version']}", "DELETE",
                                       headers=auth)
                if status == 204:
                    ledger[aid] = None
            else:
                continue
        except (OSError, ValueError, KeyError) as exc:
            if not stop.is_set():
                counts.error(f"edit: {exc}")
            continue
        counts.outcome("edit", status, body)


def check_consistency(data: Path, base: str, counts: Counts) -> None:
    """The catalogue, the files and the served collection agree (or the video is visibly switching)."""
    layout = DataLayout.from_data_dir(data)
    try:
        bundle = vectors.load_current(layout.index_dir, use_gpu=False)
    except vectors.IndexDamaged as exc:
        counts.error(f"broken index: {exc}")
        return
    if bundle is None:
        counts.error("no index")
    db = sqlite3.connect(f"file:{layout.instance_dir / 'framefinder.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT v.video_id, v.content_hash, COUNT(k.id) FROM videos v LEFT JOIN keyframes k "
                          "ON k.video_pk = v.id GROUP BY v.id").fetchall()
    finally:
        db.close()
    for video_id, content_hash, count in rows:
        folder = layout.keyframes_dir / video_id
        marker = (folder / SOURCE_MARKER).read_text().strip() if (folder / SOURCE_MARKER).exists() else None
        if marker != content_hash:
            counts.add("switching states seen")
            first = db_first_frame(layout, video_id)
            status, _ = request(f"{base}/item/{video_id}@{first}/picture") if first is not None else (404, b"")
            if status != 404:
                counts.error(f"{video_id}: files of another revision served ({status})")
            continue
        jpgs = len(list(folder.glob("*.jpg")))
        npy = len(np.load(layout.video_feature_path(video_id)))
        listed = len(list(csv.DictReader(open(layout.map_dir / f"{video_id}.csv"))))
        if not jpgs == npy == listed == count:
            counts.error(f"{video_id}: catalogue {count}, jpgs {jpgs}, npy {npy}, csv {listed}")
    status, body = request(f"{base}/api/search?q=consistency&k=100")
    if status != 200:
        counts.error(f"search after a kill: {status} {body[:200]!r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--model", default="framefinder-tiny")
    p.add_argument("--model-config", type=Path, default=TINY)
    p.add_argument("--pretrained", default="none")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.model != "framefinder-tiny" and args.model_config == TINY:
        args.model_config = None
    rng = random.Random(args.seed)
    counts = Counts()
    ledgers: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        media, data = tmp / "media", tmp / "data"
        make_media(media)
        first = subprocess.run([sys.executable, str(ROOT / "offline.py"), "index", str(media), "--data-dir",
                                str(data), *model_args(args)], capture_output=True, text=True)
        if first.returncode != 0:
            print(first.stderr, file=sys.stderr)
            return 2
        tokens = users(data)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server_log = open(tmp / "server.log", "w")
        server = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--data-dir", str(data), "--port",
                                   str(port), "--device", "cpu"]
                                  + (["--model-config", str(args.model_config)] if args.model_config else []),
                                  stdout=server_log, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                request(f"{base}/login", timeout=5)
                break
            except OSError:
                time.sleep(0.3)
        stop = threading.Event()
        layout = DataLayout.from_data_dir(data)
        threads = [threading.Thread(target=searcher, args=(base, stop, counts, layout.keyframes_dir,
                                                           random.Random(args.seed + i))) for i in range(2)]
        for i, (name, token) in enumerate(tokens.items()):
            ledgers[name] = {}
            threads.append(threading.Thread(target=editor, args=(base, token, stop, counts, ledgers[name],
                                                                 random.Random(args.seed + 10 + i))))
        for t in threads:
            t.start()
        started = time.monotonic()
        cycle = 0
        run_s = 5.0
        while time.monotonic() - started < args.minutes * 60:
            cycle += 1
            variant = tmp / "variants" / f"{CHANGING}_{cycle % 2}.mp4"
            shutil.copy(variant, media / f"{CHANGING}.mp4")  # a changed video: re-indexed this cycle
            extra = media / "photos" / f"extra_{cycle % 3}.jpg"
            if extra.exists():
                extra.unlink()
            else:
                make_image(extra, 100 + cycle)
            proc = subprocess.Popen([sys.executable, str(ROOT / "offline.py"), "index", str(media), "--data-dir",
                                     str(data), "--prune", "--verbose", *model_args(args)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            killed = False
            t0 = time.monotonic()
            err = ""
            plan = rng.random() if cycle > 2 else 1.0  # the first runs finish: they tell how long a run takes
            if plan < 0.4:  # kill at a random moment
                time.sleep(rng.uniform(0.2, 1.05) * run_s)
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
            elif plan < 0.85:  # kill the moment the changed video reaches a step of its switch
                step = rng.choice(["staged", "committed", "published"])
                for line in proc.stderr:
                    err += line
                    if line.rstrip().endswith(f"{step} {CHANGING}"):
                        os.kill(proc.pid, signal.SIGKILL)
                        killed = True
                        counts.add(f"kills right after '{step}'")
                        break
            if killed and (data / ".staging" / CHANGING).exists():
                counts.add("kills during the re-index (new files staged)")
            out, rest = proc.communicate()
            err += rest or ""
            if not killed:
                run_s = time.monotonic() - t0 if cycle <= 2 else 0.8 * run_s + 0.2 * (time.monotonic() - t0)
            counts.add("indexer kills" if killed else "indexer runs finished")
            if not killed and proc.returncode not in (0, 1):
                counts.error(f"indexer exited {proc.returncode}: {err[-300:]}")
            check_consistency(data, base, counts)
        stop.set()
        for t in threads:
            t.join(120)
        final = subprocess.run([sys.executable, str(ROOT / "offline.py"), "index", str(media), "--data-dir",
                                str(data), "--prune", *model_args(args)], capture_output=True, text=True)
        if final.returncode != 0:
            counts.error(f"final index run exited {final.returncode}: {final.stderr[-300:]}")
        check_consistency(data, base, counts)
        lost, duplicated, changed = 0, 0, 0
        db = sqlite3.connect(f"file:{layout.instance_dir / 'framefinder.db'}?mode=ro", uri=True)
        stored = db.execute("SELECT a.id, a.note, a.x, a.y, a.w, a.h, a.version FROM annotations a JOIN users u "
                            "ON u.id = a.author_id WHERE u.name IN ('fa1', 'fa2')").fetchall()
        db.close()
        by_note = Counter(note for _, note, *_ in stored)
        stored_by_id = {row[0]: row for row in stored}
        expected = {aid: rec for ledger in ledgers.values() for aid, rec in ledger.items() if rec is not None}
        for aid, rec in expected.items():
            row = stored_by_id.get(aid)
            if row is None:
                lost += 1
            elif [row[2], row[3], row[4], row[5]] != rec["box"] or row[6] != rec["version"]:
                changed += 1
        duplicated = sum(n - 1 for n in by_note.values() if n > 1) + len(set(stored_by_id) - set(expected))
        server.send_signal(signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
        log = (tmp / "server.log").read_text()
        server_500s = log.count('" 500 ')
    row = {"bench": "faults", "minutes": args.minutes, "model": args.model, "cycles": cycle,
           "indexer_kills": counts.c["indexer kills"], "indexer_runs_finished": counts.c["indexer runs finished"],
           "switching_states_seen": counts.c["switching states seen"],
           "kills_with_staged_files": counts.c["kills during the re-index (new files staged)"],
           "kills_at_steps": {k: v for k, v in counts.c.items() if k.startswith("kills right after")},
           "searches": sum(v for k, v in counts.c.items() if k.startswith("search ")),
           "search_statuses": {k[7:]: v for k, v in counts.c.items() if k.startswith("search ")},
           "pictures": {k[8:]: v for k, v in counts.c.items() if k.startswith("picture ")},
           "edits": {k[5:]: v for k, v in counts.c.items() if k.startswith("edit ")},
           "boxes_confirmed": len(expected), "boxes_lost": lost, "boxes_duplicated": duplicated,
           "boxes_differing": changed, "server_log_500s": server_500s, "errors": counts.c["errors"],
           "first_errors": counts.errors}
    print(f"{cycle} indexer cycles in {args.minutes:g} min: {row['indexer_kills']} killed with SIGKILL "
          f"({row['kills_with_staged_files']} while the changed video's new files were staged), "
          f"{row['indexer_runs_finished']} finished; {row['switching_states_seen']} checks caught a video "
          f"between revisions")
    print(f"kills at steps of the changed video's switch: {row['kills_at_steps']}")
    print(f"searches {row['searches']} {row['search_statuses']}; pictures {row['pictures']}; edits {row['edits']}")
    print(f"boxes confirmed {len(expected)}, lost {lost}, duplicated {duplicated}, differing {changed}; "
          f"HTTP 500s {server_500s}; errors {counts.c['errors']}")
    for e in counts.errors:
        print(f"  error: {e}")
    print(json.dumps(row))
    bad = counts.c["errors"] or lost or duplicated or changed or server_500s
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
