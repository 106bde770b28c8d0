"""Uploads become searchable through real jobs: server.py in one process, each job in its own `offline.py job`
process, HTTP over a socket, real footage (opencv-doc's Megamind.avi and vtest.avi). A server killed mid-job (and
its job with it) resumes the job when it starts again; a cancelled job stops its process; a deleted video leaves
search and lists its boxes as orphans."""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import cv2
import pytest

from tests.conftest import ROOT, TINY_CONFIG, add_users, browser_log_in, index_media
from tests.processes import free_port, post_image

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def collection(tmp_path_factory, media_dir, tiny_encoder):
    """The test media indexed (SQLite), plus the accounts; returns (data dir, tokens)."""
    from app.db import open_database

    data = tmp_path_factory.mktemp("jobs")
    url = f"sqlite:///{data / 'instance' / 'framefinder.db'}"
    index_media(data, url, media_dir, tiny_encoder)
    tokens = add_users(open_database(url, data))
    return data, tokens


@contextmanager
def server(data: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--data-dir", str(data), "--port", str(port),
                             "--model-config", str(TINY_CONFIG), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            urllib.request.urlopen(base + "/login", timeout=5).read()
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, "server.py did not answer in time"
            time.sleep(0.3)
    try:
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def call(method: str, url: str, token: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0",
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = resp.read()
            return resp.status, dict(resp.headers), json.loads(body) if body[:1] in (b"{", b"[") else body
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, dict(exc.headers), json.loads(body) if body[:1] == b"{" else body


def send(base: str, token: str, name: str, data: bytes, chunk: int = 256 * 1024, checksum: bool = False) -> str:
    """One file through tus in chunks (with each chunk's SHA-256 when `checksum`, as the upload page sends them);
    returns the upload's address."""
    import hashlib

    meta = "relativePath " + base64.b64encode(name.encode()).decode()
    status, headers, _ = call("POST", f"{base}/api/uploads/tus", token,
                              headers={"Upload-Length": str(len(data)), "Upload-Metadata": meta})
    assert status == 201
    location = base + headers["Location"]
    offset = 0
    while offset < len(data):
        piece = data[offset:offset + chunk]
        extra = {"Upload-Checksum": "sha256 " + base64.b64encode(hashlib.sha256(piece).digest()).decode()} \
            if checksum else {}
        status, headers, body = call("PATCH", location, token, piece,
                                     {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
                                      **extra})
        assert status == 204, body
        offset = int(headers["Upload-Offset"])
    return location


def upload(base: str, token: str, files: dict[str, bytes], chunk: int = 256 * 1024) -> int:
    """Each file through tus in chunks, then one job; returns its id."""
    ids = [send(base, token, name, data, chunk).rsplit("/", 1)[1] for name, data in files.items()]
    status, _, body = call("POST", f"{base}/api/uploads", token, json.dumps({"uploads": ids}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 202, body
    return body["job"]


def wait_job(base: str, token: str, job_id: int, until=lambda j: j["status"] in ("done", "failed", "cancelled"),
             timeout: float = JOB_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, _, job = call("GET", f"{base}/api/jobs/{job_id}", token)
        assert status == 200, job
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} did not get there in time: {job}"
        time.sleep(0.25)


def photos_zip(tmp_path: Path) -> tuple[bytes, Path]:
    """A zip of 5 real photos (opencv-doc), one of which the test searches with."""
    names = ["messi5.jpg", "baboon.jpg", "fruits.jpg", "HappyFish.jpg", "building.jpg"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.write(OPENCV_DATA / name, f"photos/{name}")
    return buf.getvalue(), OPENCV_DATA / "fruits.jpg"


def frame_of(video: Path, index: int, out: Path) -> Path:
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok
    cv2.imwrite(str(out), frame)
    return out


def search_image(base: str, image: Path) -> list[dict]:
    status, body = post_image(f"{base}/api/search", image, {"k": "10"})
    assert status == 200, body
    return body["results"]


def test_upload_search_delete(collection, tmp_path):
    """A zip of photos and a real video uploaded in chunks become searchable; deleting the video takes it out of the
    results, its files and its uploaded copy, and keeps the box on it as an orphan, listed by the job."""
    data, tokens = collection
    token = tokens["ann"]
    zipped, photo = photos_zip(tmp_path)
    video = OPENCV_DATA / "Megamind.avi"
    with server(data) as (base, _proc):
        started = time.monotonic()
        job_id = upload(base, token, {"photos.zip": zipped, "clips/Megamind.avi": video.read_bytes()})
        job = wait_job(base, token, job_id)
        took = time.monotonic() - started
        assert job["status"] == "done", job
        results = {f["name"]: f["status"] for f in job["files"]}
        assert results["clips/Megamind.avi"] == "added" and results["photos.zip"] == "unpacked"
        assert all(results[f"photos.zip/photos/{n}"] == "added" for n in ("messi5.jpg", "fruits.jpg", "HappyFish.jpg"))
        assert job["stages"]["decode"] > 200 and job["stages"]["keyframes"] >= 2 and job["stages"]["index"] > 10
        print(f"drop to searchable: {took:.1f} s")

        hits = search_image(base, photo)
        assert hits[0]["name"].endswith("fruits.jpg") and hits[0]["score"] > 0.999, hits[0]
        moment = search_image(base, frame_of(video, 40, tmp_path / "moment.jpg"))
        assert moment[0]["item"].startswith("Megamind@"), moment[:3]
        video_id = moment[0]["item"].split("@")[0]

        box = {"item": moment[0]["item"], "box": [10, 10, 40, 30], "label": "hero", "note": "kept"}
        status, _, made = call("POST", f"{base}/api/annotations", token, json.dumps(box).encode(),
                               {"Content-Type": "application/json"})
        assert status == 201, made

        status, _, body = call("DELETE", f"{base}/api/items/video:{video_id}", token)
        assert status == 202, body
        job = wait_job(base, token, body["job"])
        assert job["status"] == "done", job
        deleted = job["files"][0]
        assert deleted["status"] == "deleted" and [b["id"] for b in deleted["boxes"]] == [made["id"]]
        after = search_image(base, frame_of(video, 40, tmp_path / "moment.jpg"))
        assert not any(h["item"].startswith(f"{video_id}@") for h in after), after[:3]
        assert not (data / "keyframes" / video_id).exists() and not (data / "feature" / f"{video_id}.npy").exists()
        assert not list((data / "uploads").rglob("Megamind.avi"))  # our copy went with it
        status, _, orphans = call("GET", f"{base}/api/annotations?orphaned=1", token)
        assert made["id"] in [a["id"] for a in orphans["annotations"]]
        page = urllib.request.urlopen(f"{base}/collection").read().decode()
        assert video_id not in page and "fruits.jpg" in page


def _job_pid(data: Path, job_id: int) -> int | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{data / 'instance' / 'framefinder.db'}")
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pid FROM jobs WHERE id = :i"), {"i": job_id}).scalar()
    engine.dispose()
    return pid


def test_a_killed_server_resumes_its_job_and_a_cancel_stops_one(collection, browser):
    """kill -9 of the server and of its job mid-way: the next server queues the job again and finishes it, and its
    page (in Chromium) says it was resumed. Then a cancel stops a running job's process, and its retry finishes the
    work."""
    data, tokens = collection
    token = tokens["ann"]
    with server(data) as (base, proc):
        job_id = upload(base, token, {"vtest.avi": (OPENCV_DATA / "vtest.avi").read_bytes()})
        wait_job(base, token, job_id, until=lambda j: j["status"] == "running" and j["stages"].get("decode", 0) > 0)
        pid = _job_pid(data, job_id)
        os.kill(proc.pid, signal.SIGKILL)
        os.killpg(pid, signal.SIGKILL)  # the machine went down: the job's process with it
        proc.wait()
    with server(data) as (base, _proc):
        job = wait_job(base, token, job_id)
        assert job["status"] == "done" and job["attempts"] == 2, job
        assert {f["name"]: f["status"] for f in job["files"]}["vtest.avi"] == "added"
        page = browser.new_page(viewport={"width": 390, "height": 900})
        browser_log_in(page, base, "ann")
        page.goto(f"{base}/jobs/{job_id}")
        page.wait_for_selector("#job[data-status=done]")
        assert "attempt 2: resumed after the server stopped" in page.locator("#job-attempts").inner_text()
        assert "vtest.avi" in page.locator("#job-files").inner_text()
        page.close()

        job_id = upload(base, token, {"tree.avi": (OPENCV_DATA / "tree.avi").read_bytes()})
        wait_job(base, token, job_id, until=lambda j: j["status"] == "running" and j["stages"].get("decode", 0) > 0)
        pid = _job_pid(data, job_id)
        status, _, body = call("POST", f"{base}/api/jobs/{job_id}/cancel", token)
        assert status == 200 and body["status"] == "cancelled"
        deadline = time.monotonic() + 30
        while pid and time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except OSError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the cancelled job's process still runs")
        cancelled = wait_job(base, token, job_id)
        assert cancelled["status"] == "cancelled" and cancelled["stages"]["decode"] > 0  # its progress is kept
        assert cancelled["files"][0]["status"] in ("cancelled", "added"), cancelled  # never left 'waiting'
        assert cancelled["retryable"]
        status, _, body = call("POST", f"{base}/api/jobs/{job_id}/retry", token)
        assert status == 202, body
        retried = wait_job(base, token, body["job"])
        assert retried["status"] == "done" and {f["name"]: f["status"] for f in retried["files"]}["tree.avi"] in (
            "added", "updated", "unchanged"), retried
        status, body = post_image(f"{base}/api/search", OPENCV_DATA / "fruits.jpg", {"k": "3"})
        assert status == 200  # the collection serves throughout
