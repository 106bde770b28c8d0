"""Finding 7: `kill -9` while a changed video is re-indexed never leaves the served collection inconsistent
(no 500, no picture of the new video under an old entry, no vector read past a file's end), and the next
run finishes the job. offline.py runs as a separate process, killed at several points."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from app.models import Keyframe, Video
from app.paths import DataLayout
from app.store import SOURCE_MARKER
from tests.conftest import ROOT, db_url, frame_item, index_args
from tests.processes import cli

VIDEO = "clip"


def _catalogue(data: Path) -> tuple[str, int]:
    engine = create_engine(db_url(data))
    with Session(engine) as s:
        video = s.scalar(select(Video).where(Video.video_id == VIDEO))
        count = s.scalar(select(func.count(Keyframe.id)).where(Keyframe.video_pk == video.id))
        result = video.content_hash, count
    engine.dispose()
    return result


def _files(data: Path) -> tuple[str | None, int, int, int]:
    layout = DataLayout.from_data_dir(data)
    folder = layout.keyframes_dir / VIDEO
    marker = (folder / SOURCE_MARKER).read_text().strip() if (folder / SOURCE_MARKER).exists() else None
    jpgs = len(list(folder.glob("*.jpg")))
    rows = len(np.load(layout.video_feature_path(VIDEO)))
    listed = len(list(csv.DictReader(open(layout.map_dir / f"{VIDEO}.csv"))))
    return marker, jpgs, rows, listed


def _frames(data) -> list[int]:
    engine = create_engine(db_url(data))
    with engine.connect() as c:
        frames = [r[0] for r in c.execute(text("SELECT k.frame_idx FROM keyframes k JOIN videos v ON v.id = k.video_pk "
                                                "WHERE v.video_id = :v"), {"v": VIDEO})]
    engine.dispose()
    return frames


def _check_served(app, old_items: list[str]) -> dict:
    """Everything a user can reach answers sensibly; pictures match the catalogue's revision or are 404."""
    client = app.test_client()
    seen = {"ok": 0, "404": 0}
    client.get("/api/search?q=anything&k=1")  # a new generation is noticed and loaded in the background
    app.extensions["collection"].wait()
    r = client.get("/api/search?q=anything&k=200")
    assert r.status_code == 200, r.get_data(as_text=True)
    items = [h["item"] for h in r.get_json()["results"] if h["video_id"] == VIDEO]
    for item in set(items) | set(old_items):
        like = client.get(f"/api/search?like={item}&k=5")
        assert like.status_code in (200, 400), (item, like.status_code, like.get_data(as_text=True)[:200])
        pic = client.get(f"/item/{item}/picture")
        assert pic.status_code in (200, 404), (item, pic.status_code)
        seen["ok" if pic.status_code == 200 else "404"] += 1
    return seen


def test_kills_during_a_reindex_leave_a_consistent_collection(tmp_path, media_dir, truths, tiny_encoder):
    from app import create_app

    media = tmp_path / "media"
    media.mkdir()
    target = media / f"{VIDEO}.webm"
    shutil.copy(media_dir / "videos" / "long_shot.webm", target)
    data = tmp_path / "data"
    assert cli("index", str(media), *index_args(data)).returncode == 0
    app = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True, "INDEX_CHECK_SECONDS": 0})
    old_hash, old_count = _catalogue(data)
    old_items = [frame_item(data, VIDEO, n) for n in range(1, old_count + 1)]
    _check_served(app, old_items)

    # the same name, other content: a changed video to re-index
    target.unlink()
    shutil.copy(media_dir / "videos" / "cuts_and_dissolve.mp4", media / f"{VIDEO}.webm")
    kills = 0
    for delay in (2.0, 3.0, 3.6, 4.2, 4.8, 5.5):
        proc = subprocess.Popen([sys.executable, str(ROOT / "offline.py"), "index", str(media), *index_args(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        _check_served(app, old_items)
        db_hash, db_count = _catalogue(data)
        marker, jpgs, rows, listed = _files(data)
        if marker == db_hash:  # files of the catalogue's revision: all of them agree
            assert jpgs == rows == listed == db_count, (marker, jpgs, rows, listed, db_count)
        else:  # switching: the pictures are refused rather than shown under the wrong entries
            for frame in _frames(data):
                assert app.test_client().get(f"/item/{VIDEO}@{frame}/picture").status_code == 404
        if proc.returncode == 0:
            break
    assert kills >= 2
    assert cli("index", str(media), *index_args(data)).returncode == 0
    db_hash, db_count = _catalogue(data)
    assert db_hash != old_hash
    assert _files(data) == (db_hash, db_count, db_count, db_count)
    assert not (data / ".staging").exists() or not any((data / ".staging").iterdir())
    # the browser copy belongs to the new content (its own length), however the runs were killed
    import av

    proxy = DataLayout.from_data_dir(data).proxy_path(VIDEO)
    with av.open(str(proxy)) as c:
        seconds = float(c.streams.video[0].duration * c.streams.video[0].time_base)
    assert abs(seconds - truths["cuts_and_dissolve"].frames / 25.0) < 0.2, seconds
    seen = _check_served(app, old_items)
    assert seen["ok"] >= 1
