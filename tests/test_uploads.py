"""Uploads to the collection (tus resumable protocol and multipart), the checks made before anything is indexed,
and the job queue's API, on SQLite always and on PostgreSQL when TEST_DATABASE_URL is set.

The jobs here are only queued (no worker runs them); tests/test_jobs_processes.py runs them in real processes.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, add_users, csrf_of, database_env, index_media, login

CHUNK = 64 * 1024


@pytest.fixture(scope="module", params=BACKENDS)
def env(request, tmp_path_factory, media_dir, tiny_encoder):
    from app import create_app

    data = tmp_path_factory.mktemp(f"uploads-{request.param}")
    with database_env(request.param, data) as url:
        index_media(data, url, media_dir, tiny_encoder)
        application = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True,
                                  "DATABASE_URL": url, "LOGIN_RATE_LIMIT": "1000 per minute"})
    tokens = add_users(application.extensions["sessions"])
    return {"app": application, "tokens": tokens, "data": data, "url": url, "media": media_dir}


def auth(env, name="ann") -> dict:
    return {"Authorization": f"Bearer {env['tokens'][name]}", "Tus-Resumable": "1.0.0"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def create(client, env, name: str, length: int, who="ann"):
    return client.post("/api/uploads/tus", headers={**auth(env, who), "Upload-Length": str(length),
                                                     "Upload-Metadata": f"relativePath {b64(name)}"})


def patch(client, env, location: str, offset: int, chunk: bytes, checksum: str | None = "sha256", who="ann"):
    headers = {**auth(env, who), "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
    if checksum:
        headers["Upload-Checksum"] = f"{checksum} {base64.b64encode(hashlib.new(checksum, chunk).digest()).decode()}"
    return client.patch(location, data=chunk, headers=headers)


def send(client, env, name: str, data: bytes, who="ann") -> str:
    """A whole file through tus, CHUNK bytes at a time; returns the upload id."""
    r = create(client, env, name, len(data), who)
    assert r.status_code == 201, r.get_json()
    location = r.headers["Location"]
    offset = 0
    while offset < len(data):
        r = patch(client, env, location, offset, data[offset:offset + CHUNK], who=who)
        assert r.status_code == 204, r.get_json()
        offset = int(r.headers["Upload-Offset"])
    return location.rsplit("/", 1)[1]


def finish(client, env, ids: list[str], who="ann"):
    return client.post("/api/uploads", json={"uploads": ids}, headers=auth(env, who))


def job_row(env, job_id: int) -> dict:
    r = env["app"].test_client().get(f"/api/jobs/{job_id}", headers=auth(env))
    assert r.status_code == 200
    return r.get_json()


def files_of(job: dict) -> dict[str, tuple[str, str]]:
    return {f["name"]: (f["status"], f["reason"]) for f in job["files"]}


def video_bytes(env) -> bytes:
    return next((env["media"] / "videos").glob("*.mp4")).read_bytes()


def fresh_jpeg(seed: int) -> bytes:
    """A JPEG that is in no collection (its pixels come from the seed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_tus_round_trip_makes_a_queued_job(env):
    client = env["app"].test_client()
    r = client.options("/api/uploads/tus")
    assert r.status_code == 204 and r.headers["Tus-Version"] == "1.0.0"
    assert "creation" in r.headers["Tus-Extension"] and "sha256" in r.headers["Tus-Checksum-Algorithm"]
    data = fresh_jpeg(1) * 3  # a JPEG followed by junk still opens; 3 chunks
    upload_id = send(client, env, "holiday/beach.jpg", data)
    r = client.head(f"/api/uploads/tus/{upload_id}", headers=auth(env))
    assert r.headers["Upload-Offset"] == str(len(data)) == r.headers["Upload-Length"]
    r = finish(client, env, [upload_id])
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert job["status"] == "queued" and job["kind"] == "upload" and job["url"] == f"/jobs/{job['job']}"
    assert files_of(job) == {"holiday/beach.jpg": ("waiting", "")}
    kept = list((env["data"] / "uploads").glob("*/holiday/beach.jpg"))
    assert len(kept) == 1 and kept[0].read_bytes() == data  # byte for byte what was sent
    assert not list((env["data"] / "uploads" / ".partial").glob(f"{upload_id}*"))
    assert finish(client, env, [upload_id]).status_code == 404  # taken once
    r = client.get(f"/api/jobs/{job['job']}", headers=auth(env))
    assert r.get_json()["status"] == "queued"
    cancel = client.post(f"/api/jobs/{job['job']}/cancel", headers=auth(env))
    assert cancel.get_json()["status"] == "cancelled"
    again = client.post(f"/api/jobs/{job['job']}/cancel", headers=auth(env))
    assert again.status_code == 409 and "cancelled already" in again.get_json()["error"]


def test_interrupted_upload_resumes_from_the_servers_offset(env):
    client = env["app"].test_client()
    data = video_bytes(env)
    r = create(client, env, "clip.mp4", len(data))
    location = r.headers["Location"]
    assert patch(client, env, location, 0, data[:CHUNK]).status_code == 204
    # the connection drops mid-chunk: the client asks where the server stands and goes on from there
    assert client.head(location, headers=auth(env)).headers["Upload-Offset"] == str(CHUNK)
    r = patch(client, env, location, 0, data[:CHUNK])
    assert r.status_code == 409 and "HEAD" in r.get_json()["error"]
    bad = patch(client, env, location, CHUNK, data[CHUNK:2 * CHUNK], checksum=None)
    assert bad.status_code == 204  # checksums are optional
    offset = int(bad.headers["Upload-Offset"])
    headers = {**auth(env), "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
               "Upload-Checksum": "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()}
    r = client.patch(location, data=data[offset:offset + CHUNK], headers=headers)
    assert r.status_code == 460 and "checksum" in r.get_json()["error"]
    assert client.head(location, headers=auth(env)).headers["Upload-Offset"] == str(offset)  # nothing was kept
    r = finish(client, env, [location.rsplit("/", 1)[1]])
    assert r.status_code == 409 and "not finished" in r.get_json()["error"]
    # someone else cannot see, resume or finish it
    assert client.head(location, headers=auth(env, "bob")).status_code == 404
    while offset < len(data):
        offset = int(patch(client, env, location, offset, data[offset:offset + CHUNK]).headers["Upload-Offset"])
    assert client.head(location, headers=auth(env)).headers["Upload-Offset"] == str(len(data))
    assert client.delete(location, headers=auth(env)).status_code == 204
    assert client.head(location, headers=auth(env)).status_code == 404


def test_who_may_upload(env, tmp_path):
    from app import create_app

    client = env["app"].test_client()
    r = client.post("/api/uploads/tus", headers={"Upload-Length": "10", "Tus-Resumable": "1.0.0"})
    assert r.status_code == 401
    r = create(client, env, "a.jpg", 10, who="vic")
    assert r.status_code == 403 and "annotator" in r.get_json()["error"]
    assert client.get("/upload").status_code == 302  # the page sends a stranger to the login form
    login(client, "ann")
    r = client.post("/api/uploads/tus", headers={"Upload-Length": "10", "Tus-Resumable": "1.0.0",
                                                 "Upload-Metadata": f"filename {b64('a.jpg')}"})
    assert r.status_code == 400 and "CSRF" in r.get_json()["error"]  # a session call needs the token
    r = client.post("/api/uploads/tus", headers={"Upload-Length": "10", "Tus-Resumable": "1.0.0",
                                                 "X-CSRFToken": csrf_of(client),
                                                 "Upload-Metadata": f"filename {b64('a.jpg')}"})
    assert r.status_code == 201
    page = client.get("/upload").get_data(as_text=True)
    assert "each at most 4.0 GB" in page and ".mp4" in page and "zip" in page  # the limits, before anything is sent
    admins_only = create_app({"DATA_DIR": str(env["data"]), "DATABASE_URL": env["url"], "TESTING": True,
                              "UPLOAD_ROLES": "admin"})
    r = admins_only.test_client().post("/api/uploads/tus", headers={**auth(env), "Upload-Length": "10"})
    assert r.status_code == 403 and "admin role" in r.get_json()["error"]


@pytest.mark.parametrize(("name", "length", "status", "words"), [
    ("empty.jpg", 0, 400, "empty (0 bytes)"),
    ("notes.txt", 10, 415, "not a video, an image or a zip"),
    ("../../etc/cron.d/x.jpg", 10, 400, "climbs out"),
    ("/abs/x.jpg", 10, 400, "absolute path"),
    ("big.mp4", 5 * 1024**3, 413, "the limit is 4.0 GB per file"),
    (".hidden.jpg", 10, 400, "not a usable file name"),
])
def test_announced_files_are_checked_before_a_byte_is_sent(env, name, length, status, words):
    r = create(env["app"].test_client(), env, name, length)
    assert r.status_code == status and words in r.get_json()["error"], r.get_json()


def test_bad_protocol_requests_are_clear_errors(env):
    client = env["app"].test_client()
    r = client.post("/api/uploads/tus", headers=auth(env))
    assert r.status_code == 400 and "Upload-Length" in r.get_json()["error"]
    r = client.post("/api/uploads/tus", headers={**auth(env), "Upload-Length": "-5"})
    assert r.status_code == 400 and "whole number" in r.get_json()["error"]
    r = client.post("/api/uploads/tus", headers={**auth(env), "Upload-Length": "5", "Upload-Metadata": "filename @@@"})
    assert r.status_code == 400 and "base64" in r.get_json()["error"]
    location = create(client, env, "x.jpg", 4).headers["Location"]
    r = client.patch(location, data=b"abcd", headers={**auth(env), "Upload-Offset": "0"})
    assert r.status_code == 415
    r = client.patch(location, data=b"abcdef", headers={**auth(env), "Upload-Offset": "0",
                                                        "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 413  # past the announced length
    assert client.head("/api/uploads/tus/short", headers=auth(env)).status_code == 404
    assert client.head("/api/uploads/tus/" + "A" * 24, headers=auth(env)).status_code == 404
    r = client.post("/api/uploads", json={"uploads": "nope"}, headers=auth(env))
    assert r.status_code == 400
    r = client.post("/api/uploads", json={"uploads": []}, headers=auth(env))
    assert r.status_code == 400 and "no files" in r.get_json()["error"]
    assert client.get("/api/jobs/999999", headers=auth(env)).status_code == 404
    assert client.post("/api/jobs/999999/retry", headers=auth(env)).status_code == 404


def _zip(path: Path, entries: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_multipart_upload_checks_every_file_before_extracting(env, tmp_path):
    """Bombs, escaping zips, links, empty files, lying extensions and duplicates are refused with their reasons, on
    the job; nothing of a refused zip is extracted; the good file waits for the job."""
    client = env["app"].test_client()
    known = (env["media"] / "images" / "still_0.jpg").read_bytes()  # indexed in the collection already
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.jpg", b"\0" * (20 * 1024 * 1024))
    files = {
        "bomb.zip": bomb.read_bytes(),
        "escape.zip": _zip(tmp_path / "escape.zip", {"ok.jpg": fresh_jpeg(2), "../../evil.jpg": b"x"}).read_bytes(),
        "linked.zip": _zip(tmp_path / "linked.zip", {"ok.jpg": fresh_jpeg(3)}, link="passwd.jpg").read_bytes(),
        "empty.jpg": b"",
        "fake.mp4": b"this is not a video at all" * 100,
        "known.jpg": known,
        "new.jpg": fresh_jpeg(4),
        "new-again.jpg": fresh_jpeg(4),
    }
    data = {"files": [(io.BytesIO(b), name) for name, b in files.items()]}
    r = client.post("/api/uploads", data=data, headers=auth(env), content_type="multipart/form-data")
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    got = files_of(job)
    assert got["bomb.zip"][0] == "failed" and "zip bomb" in got["bomb.zip"][1]
    assert got["escape.zip"][0] == "failed" and "'..'" in got["escape.zip"][1] and "nothing extracted" in got[
        "escape.zip"][1]
    assert got["linked.zip"][0] == "failed" and "symbolic link" in got["linked.zip"][1]
    assert got["empty.jpg"] == ("failed", "empty file (0 bytes)")
    assert got["fake.mp4"][0] == "failed" and "not a video" in got["fake.mp4"][1]
    assert got["known.jpg"][0] == "skipped" and "already in the collection as image" in got["known.jpg"][1]
    assert got["new.jpg"] == ("waiting", "")
    assert got["new-again.jpg"][0] == "skipped" and "new.jpg (earlier in this upload)" in got["new-again.jpg"][1]
    folder = next(p for p in (env["data"] / "uploads").iterdir() if (p / "new.jpg").exists())
    assert sorted(p.name for p in folder.iterdir()) == ["new.jpg"]  # refused files are not kept
    assert not (env["data"] / "archives").exists() or not any((env["data"] / "archives").rglob("*.jpg"))
    assert not (env["data"].parent / "evil.jpg").exists()
    client.post(f"/api/jobs/{job['job']}/cancel", headers=auth(env))


def test_an_upload_of_only_refused_files_ends_at_once(env):
    client = env["app"].test_client()
    r = client.post("/api/uploads", data={"files": [(io.BytesIO(b""), "zero.png")]}, headers=auth(env),
                    content_type="multipart/form-data")
    job = r.get_json()
    assert r.status_code == 202 and job["status"] == "done" and "nothing to index" in job["message"]
    r = client.post(f"/api/jobs/{job['job']}/retry", headers=auth(env))
    assert r.status_code == 409 and "upload them again" in r.get_json()["error"]


def test_quota_and_file_count_limits(env, tmp_path):
    from app import create_app

    small = create_app({"DATA_DIR": str(env["data"]), "DATABASE_URL": env["url"], "TESTING": True,
                        "UPLOAD_QUOTA_MB": "1", "UPLOAD_MAX_FILES": "2"})
    client = small.test_client()
    r = create(client, env, "big.mp4", 2 * 1024 * 1024)
    assert r.status_code == 507 and "upload space is full" in r.get_json()["error"], r.get_json()
    assert "upload_quota_mb" in r.get_json()["error"]
    three = {"files": [(io.BytesIO(fresh_jpeg(10 + i)), f"f{i}.jpg") for i in range(3)]}
    r = client.post("/api/uploads", data=three, headers=auth(env), content_type="multipart/form-data")
    assert r.status_code == 413 and "the limit is 2" in r.get_json()["error"]
    many = _zip(tmp_path / "many.zip", {f"p{i}.jpg": fresh_jpeg(20 + i) for i in range(3)})
    r = client.post("/api/uploads", data={"files": [(io.BytesIO(many.read_bytes()), "many.zip")]},
                    headers=auth(env), content_type="multipart/form-data")
    assert files_of(r.get_json())["many.zip"][0] == "failed" and "3 files inside; the limit is 2" in files_of(
        r.get_json())["many.zip"][1]


def test_delete_and_reindex_api_name_their_targets(env, kf):
    client = env["app"].test_client()
    frame = kf("long_shot/1")
    r = client.delete(f"/api/items/{frame}", headers=auth(env))
    assert r.status_code == 400 and "video:long_shot" in r.get_json()["error"]
    r = client.delete("/api/items/video:no-such-video", headers=auth(env))
    assert r.status_code == 404 and "no video" in r.get_json()["error"]
    r = client.delete("/api/items/image:" + "0" * 40, headers=auth(env))
    assert r.status_code == 404
    r = client.delete("/api/items/video:long_shot", headers=auth(env, "vic"))
    assert r.status_code == 403
    r = client.post("/api/items/video:long_shot/reindex", headers=auth(env))
    assert r.status_code == 202 and r.get_json()["kind"] == "reindex" and r.get_json()["targets"] == [
        "video:long_shot"]
    client.post(f"/api/jobs/{r.get_json()['job']}/cancel", headers=auth(env))
    page = client.get("/collection").get_data(as_text=True)
    assert "long_shot" in page and "cuts_and_dissolve" in page and "3 images" in page


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_a_full_disk_costs_the_chunk_not_the_upload(env, tmp_path):
    """The data dir on a 2 MB tmpfs: the chunk that does not fit is refused with 507, the bytes before it stay, and
    the upload resumes once space is freed."""
    from app import create_app

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]).returncode:
        pytest.skip("this machine does not allow a tmpfs mount")
    try:
        db = tmp_path / "db.sqlite"
        small = create_app({"DATA_DIR": str(mount), "DATABASE_URL": f"sqlite:///{db}", "TESTING": True})
        tokens = add_users(small.extensions["sessions"])
        env2 = {**env, "tokens": tokens}
        client = small.test_client()
        data = os.urandom(1536 * 1024)
        r = create(client, env2, "clip.mp4", len(data))
        assert r.status_code == 201
        location = r.headers["Location"]
        assert patch(client, env2, location, 0, data[:CHUNK]).status_code == 204
        filler = mount / "filler.bin"
        with open(filler, "wb") as fh:  # something else takes the disk meanwhile
            try:
                while True:
                    fh.write(b"\0" * CHUNK)
            except OSError:
                pass
        r = patch(client, env2, location, CHUNK, data[CHUNK:2 * CHUNK])
        assert r.status_code == 507 and "disk is full" in r.get_json()["error"] and "resume" in r.get_json()["error"]
        assert client.head(location, headers=auth(env2)).headers["Upload-Offset"] == str(CHUNK)
        filler.unlink()
        offset = CHUNK
        while offset < len(data):
            offset = int(patch(client, env2, location, offset, data[offset:offset + CHUNK]).headers["Upload-Offset"])
        r = finish(client, env2, [location.rsplit("/", 1)[1]])
        assert r.status_code == 202  # the .mp4 is refused as no video, but the file arrived whole
        assert "not a video" in files_of(r.get_json())["clip.mp4"][1]
        small.extensions["sessions"].kw["bind"].dispose()
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def test_jobs_survive_a_restart_in_the_queue(env):
    """At start-up a running job whose process is gone is queued again; after MAX_ATTEMPTS it is failed."""
    from app import jobs
    from app.jobs import MAX_ATTEMPTS, RESUMED

    sessions = env["app"].extensions["sessions"]
    job_id = jobs.create(sessions, "reindex", None, targets=["video:long_shot"])
    claimed = jobs.claim_next(sessions)
    while claimed is not None and claimed.id != job_id:  # older queued jobs of this module
        jobs.finish(sessions, claimed.id, "failed", "test")
        claimed = jobs.claim_next(sessions)
    assert claimed.id == job_id and claimed.attempts == 1
    jobs.set_pid(sessions, job_id, 2**22 + 12345)  # no such process
    with sessions.begin() as session:
        assert jobs.recover(session)[0] == 1
    row = job_row(env, job_id)
    assert row["status"] == "queued" and row["message"] == RESUMED
    for _ in range(MAX_ATTEMPTS - 1):
        jobs.claim_next(sessions)
        with sessions.begin() as session:
            jobs.recover(session)
    row = job_row(env, job_id)
    assert row["status"] == "failed" and "given up" in row["message"], row
    assert json.loads(json.dumps(row))["attempts"] == MAX_ATTEMPTS


def test_a_second_writer_of_one_upload_waits_its_turn(env):
    """Two PATCHes of one upload at once must not both append: the one that finds the upload being written gets a
    409 and the file holds the first writer's bytes only."""
    import fcntl

    client = env["app"].test_client()
    location = create(client, env, "race.jpg", 2 * CHUNK).headers["Location"]
    part = env["data"] / "uploads" / ".partial" / (location.rsplit("/", 1)[1] + ".part")
    with open(part, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a PATCH in flight holds this lock while it writes
        r = patch(client, env, location, 0, b"x" * CHUNK)
        assert r.status_code == 409 and "being written" in r.get_json()["error"]
    assert part.stat().st_size == 0
    assert patch(client, env, location, 0, b"x" * CHUNK).status_code == 204
    client.delete(location, headers=auth(env))


def test_the_same_name_twice_in_one_multipart_upload_keeps_both(env):
    client = env["app"].test_client()
    one, two = fresh_jpeg(51), fresh_jpeg(52)
    r = client.post("/api/uploads", data={"files": [(io.BytesIO(one), "same.jpg"), (io.BytesIO(one), "same.jpg"),
                                                    (io.BytesIO(two), "fake.mp4")]},
                    headers=auth(env), content_type="multipart/form-data")
    assert r.status_code == 202
    got = files_of(r.get_json())
    assert got["same.jpg"] == ("waiting", "")
    assert got["same (2).jpg"][0] == "skipped" and "same.jpg (earlier in this upload)" in got["same (2).jpg"][1]
    assert got["fake.mp4"][0] == "failed" and str(env["data"]) not in got["fake.mp4"][1]  # no server path
    client.post(f"/api/jobs/{r.get_json()['job']}/cancel", headers=auth(env))


def _run_next(env, job_id: int) -> dict:
    """Run a queued job as `offline.py job` does (the same function, in this process: the worker and its process are
    tested in tests/test_jobs_processes.py)."""
    from app import jobs
    from app.indexer import IndexOptions
    from app.job_run import run_job
    from app.paths import DataLayout

    sessions = env["app"].extensions["sessions"]
    while (claimed := jobs.claim_next(sessions)) is not None and claimed.id != job_id:
        jobs.finish(sessions, claimed.id, "failed", "not this test's")
    assert claimed is not None
    options = IndexOptions(device="cpu", progress=False, faces=False, objects=False, concepts=False)
    run_job(sessions, DataLayout.from_data_dir(env["data"]), job_id, options)
    return job_row(env, job_id)


def test_reindex_names_its_target_and_delete_takes_only_our_copies(env, tmp_path):
    """A re-index job lists its target once (updated), not a second 'skipped' row; deleting an image that came from
    an uploaded zip removes our extracted copy, while an image indexed from the user's folder keeps its file."""
    client = env["app"].test_client()
    job = client.post("/api/items/video:long_shot/reindex", headers=auth(env)).get_json()
    done = _run_next(env, job["job"])
    assert done["status"] == "done" and files_of(done) == {"video:long_shot": ("updated", "")}, done
    assert "1 updated" in done["message"] and "vectors" in done["message"]

    photos = io.BytesIO()
    with zipfile.ZipFile(photos, "w") as zf:
        zf.writestr("trip/one.jpg", fresh_jpeg(61))
        zf.writestr("trip/two.jpg", fresh_jpeg(62))
    r = client.post("/api/uploads", data={"files": [(io.BytesIO(photos.getvalue()), "trip.zip")]}, headers=auth(env),
                    content_type="multipart/form-data")
    done = _run_next(env, r.get_json()["job"])
    assert files_of(done)["trip.zip/trip/one.jpg"] == ("added", ""), done
    row = next(f for f in done["files"] if f["name"] == "trip.zip/trip/one.jpg")
    assert row["item"].startswith("image:")  # the item it became, for the job's page to link
    listing = client.get("/api/collection").get_json()
    one = next(i for i in listing["images"] if i["name"].endswith("one.jpg"))
    assert one["origin"] == "upload"
    extracted = list((env["data"] / "archives").rglob("one.jpg"))
    assert len(extracted) == 1
    own = next(i for i in listing["images"] if i["name"].endswith("still_0.jpg"))
    assert own["origin"] == "folder"
    for ref in (one["ref"], own["ref"]):
        job = client.delete(f"/api/items/{ref}", headers=auth(env)).get_json()
        assert _run_next(env, job["job"])["status"] == "done"
    assert not extracted[0].exists()  # our copy went
    assert (env["media"] / "images" / "still_0.jpg").exists()  # the user's file stays
    names = [i["name"] for i in client.get("/api/collection").get_json()["images"]]
    assert not any(n.endswith(("one.jpg", "still_0.jpg")) for n in names) and any(n.endswith("two.jpg") for n in names)


def test_an_upload_while_another_job_waits_is_queued_behind_it(env):
    client = env["app"].test_client()
    first = client.post("/api/uploads", data={"files": [(io.BytesIO(fresh_jpeg(71)), "first.jpg")]},
                        headers=auth(env), content_type="multipart/form-data").get_json()
    second = client.post("/api/uploads", data={"files": [(io.BytesIO(fresh_jpeg(72)), "second.jpg")]},
                         headers=auth(env), content_type="multipart/form-data").get_json()
    assert first["status"] == second["status"] == "queued" and second["ahead"] == first["ahead"] + 1
    page = client.get(second["url"], headers=auth(env)).get_data(as_text=True)
    assert f"{second['ahead']} job(s) before it" in page
    for job in (first, second):
        client.post(f"/api/jobs/{job['job']}/cancel", headers=auth(env))
