"""One test per finding of the attack on uploads and jobs (issue 16), on SQLite and on PostgreSQL."""
from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

from tests.conftest import csrf_of, login
from tests.test_uploads import b64, fresh_jpeg

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
CHUNK = 64 * 1024


def tus(env, name="ann") -> dict:
    return {"Authorization": f"Bearer {env['tokens'][name]}", "Tus-Resumable": "1.0.0"}


def created(client, env, name: str, length: int, who="ann") -> str:
    r = client.post("/api/uploads/tus", headers={**tus(env, who), "Upload-Length": str(length),
                                                  "Upload-Metadata": f"relativePath {b64(name)}"})
    assert r.status_code == 201, r.get_json()
    return r.headers["Location"]


def sent(client, env, name: str, data: bytes, who="ann") -> str:
    location = created(client, env, name, len(data), who)
    r = client.patch(location, data=data, headers={**tus(env, who), "Upload-Offset": "0",
                                                   "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 204, r.get_json()
    return location


def upload_id(location: str) -> str:
    return location.rsplit("/", 1)[1]


def multipart(client, env, files: dict[str, bytes], who="ann"):
    return client.post("/api/uploads", data={"files": [(io.BytesIO(b), n) for n, b in files.items()]},
                       headers=tus(env, who), content_type="multipart/form-data")


def result(job: dict, name: str) -> tuple[str, str]:
    return next((f["status"], f["reason"]) for f in job["files"] if f["name"] == name)


def zipped(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_refused_batch_keeps_the_finished_uploads(hostile):
    """Finding 1: one unfinished or repeated id in a batch deleted the uploads already finished."""
    client = hostile["app"].test_client()
    good = sent(client, hostile, "good.jpg", fresh_jpeg(31))
    unfinished = created(client, hostile, "unfinished.jpg", 100)
    r = client.post("/api/uploads", json={"uploads": [upload_id(good), upload_id(unfinished)]}, headers=tus(hostile))
    assert r.status_code == 409 and "not finished" in r.get_json()["error"]
    r = client.post("/api/uploads", json={"uploads": [upload_id(good), upload_id(good)]}, headers=tus(hostile))
    assert r.status_code == 400 and "named twice" in r.get_json()["error"]
    assert client.head(good, headers=tus(hostile)).headers["Upload-Offset"] == str(len(fresh_jpeg(31)))
    r = client.post("/api/uploads", json={"uploads": [upload_id(good)]}, headers=tus(hostile))
    assert r.status_code == 202 and result(r.get_json(), "good.jpg")[0] == "waiting"
    client.post(f"/api/jobs/{r.get_json()['job']}/cancel", headers=tus(hostile))


def test_zips_that_would_break_extraction_are_refused_at_intake(hostile):
    """Findings 2 and 3: a zip with an entry named twice, or a name that is a file and a folder, failed the whole job
    at extraction; a very long zip name made an extraction folder name too long."""
    client = hostile["app"].test_client()
    r = multipart(client, hostile, {
        "dup.zip": zipped([("p.jpg", fresh_jpeg(32)), ("p.jpg", fresh_jpeg(33))]),
        "clash.zip": zipped([("a.jpg", fresh_jpeg(34)), ("a.jpg/b.jpg", fresh_jpeg(35))]),
    })
    assert r.status_code == 202
    assert "named twice in the archive" in result(r.get_json(), "dup.zip")[1]
    assert "both a file and a folder" in result(r.get_json(), "clash.zip")[1]
    from app.archives import archive_dest, extract_archive

    long = hostile["data"].parent / ("z" * 250 + ".zip")
    long.write_bytes(zipped([("x.jpg", fresh_jpeg(36))]))
    assert len(archive_dest(long, hostile["data"] / "archives").name) <= 255
    files, failed, _ = extract_archive(long, hostile["data"] / "archives")
    assert len(files) == 1 and not failed
    clash = hostile["data"].parent / "clash.zip"
    clash.write_bytes(zipped([("a.jpg", fresh_jpeg(34)), ("a.jpg/b.jpg", fresh_jpeg(35)), ("c.jpg", b"1")]))
    files, failed, _ = extract_archive(clash, hostile["data"] / "archives")  # the CLI's path: reported, not raised
    assert [f.name for f in files] == ["a.jpg", "c.jpg"] and "could not extract" in failed[0].reason


def test_the_quota_covers_multipart_uploads_and_what_zips_will_take(hostile):
    """Finding 4: multipart uploads skipped the quota, and a zip's extracted entries were not counted."""
    from app import create_app

    small = create_app({"DATA_DIR": str(hostile["data"]), "DATABASE_URL": hostile["url"], "TESTING": True,
                        "UPLOAD_QUOTA_MB": str(max(1, _used_mb(hostile) + 1))})
    client = small.test_client()
    r = multipart(client, hostile, {"big.jpg": os.urandom(3 * 1024 * 1024)})
    assert r.status_code == 507 and "upload space is full" in r.get_json()["error"]
    import numpy as np

    rng = np.random.default_rng(0)
    sparse = np.zeros(512 * 1024, np.uint8)  # compresses about 13x: no bomb, but 6 MB once extracted
    sparse[rng.integers(0, sparse.size, sparse.size // 40)] = rng.integers(1, 255, sparse.size // 40)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(12):
            zf.writestr(f"p{i}.jpg", sparse.tobytes())
    r = multipart(client, hostile, {"small-but-large.zip": buf.getvalue()})
    assert r.status_code == 202
    status, reason = result(r.get_json(), "small-but-large.zip")
    assert status == "failed" and "pass the upload quota" in reason, reason


def _used_mb(env) -> int:
    from app.paths import DataLayout
    from app.upload_store import used_bytes

    return used_bytes(DataLayout.from_data_dir(env["data"])) // (1024 * 1024)


def test_unfinished_uploads_cannot_hold_the_space_forever(hostile):
    """Finding 5 and 7: unfinished uploads reserved their space until a restart a week later, without a limit per
    account, and an admin could not remove them."""
    from app.upload_store import MAX_OPEN_PER_USER

    client = hostile["app"].test_client()
    first = created(client, hostile, "hog.mp4", 10, who="bob")
    for i in range(MAX_OPEN_PER_USER - 1):
        created(client, hostile, f"hog{i}.mp4", 10, who="bob")
    r = client.post("/api/uploads/tus", headers={**tus(hostile, "bob"), "Upload-Length": "10",
                                                  "Upload-Metadata": f"relativePath {b64('one-more.mp4')}"})
    assert r.status_code == 429 and "unfinished uploads" in r.get_json()["error"]
    assert client.delete(first, headers=tus(hostile, "boss")).status_code == 204  # an admin frees anyone's
    assert client.delete(first, headers=tus(hostile, "ann")).status_code == 404
    partial = hostile["data"] / "uploads" / ".partial"
    old = time.time() - 2 * 24 * 3600
    for path in partial.iterdir():
        os.utime(path, (old, old))  # nobody wrote to them for two days
    created(client, hostile, "fresh.mp4", 10, who="bob")
    assert len(list(partial.glob("*.json"))) == 1


def test_a_name_that_is_a_file_and_a_folder_is_a_409(hostile):
    """Finding 6: 'a.jpg' and 'a.jpg/b.jpg' in one upload gave a 500 and lost both uploads."""
    client = hostile["app"].test_client()
    a = sent(client, hostile, "a.jpg", fresh_jpeg(37))
    b = sent(client, hostile, "a.jpg/b.jpg", fresh_jpeg(38))
    r = client.post("/api/uploads", json={"uploads": [upload_id(b), upload_id(a)]}, headers=tus(hostile))
    assert r.status_code == 409 and "both a file and a folder" in r.get_json()["error"]
    assert [client.head(x, headers=tus(hostile)).status_code for x in (a, b)] == [200, 200]
    r = multipart(client, hostile, {"c.jpg": fresh_jpeg(39), "c.jpg/d.jpg": fresh_jpeg(40)})
    assert r.status_code == 409 and "both a file and a folder" in r.get_json()["error"]


def test_jobs_belong_to_their_owner_and_do_not_pile_up(hostile):
    """Finding 8: any uploader cancelled and retried anyone's jobs, and retries stacked without limit."""
    client = hostile["app"].test_client()
    r = client.post("/api/items/video:long_shot/reindex", headers=tus(hostile))
    assert r.status_code == 202
    job = r.get_json()["job"]
    again = client.post("/api/items/video:long_shot/reindex", headers=tus(hostile))
    assert again.status_code == 409 and f"job {job} does this already" in again.get_json()["error"]
    r = client.post(f"/api/jobs/{job}/cancel", headers=tus(hostile, "bob"))
    assert r.status_code == 403 and "someone else's" in r.get_json()["error"]
    assert client.post(f"/api/jobs/{job}/cancel", headers=tus(hostile, "boss")).status_code == 200
    assert client.post(f"/api/jobs/{job}/retry", headers=tus(hostile, "bob")).status_code == 403
    first = client.post(f"/api/jobs/{job}/retry", headers=tus(hostile))
    assert first.status_code == 202
    second = client.post(f"/api/jobs/{job}/retry", headers=tus(hostile))
    assert second.status_code == 409
    client.post(f"/api/jobs/{first.get_json()['job']}/cancel", headers=tus(hostile))


def test_a_browser_session_may_send_a_file_over_the_form_limit(hostile):
    """Finding 9: a session's multipart upload was cut at the 20 MB query-image limit by the CSRF check's read."""
    client = hostile["app"].test_client()
    login(client, "ann")
    data = {"files": [(io.BytesIO(os.urandom(22 * 1024 * 1024)), "large.mp4")]}
    r = client.post("/api/uploads", data=data, content_type="multipart/form-data",
                    headers={"X-CSRFToken": csrf_of(client)})
    assert r.status_code == 202, r.get_json()
    assert "not a video" in result(r.get_json(), "large.mp4")[1]  # it arrived, and was then checked


def test_job_messages_name_no_server_paths_and_no_sql(hostile):
    """Finding 10: failed jobs showed absolute server paths and raw SQL to every uploader."""
    from app.jobs import public_text
    from app.paths import DataLayout

    layout = DataLayout.from_data_dir(hostile["data"])
    text = (f"IntegrityError: UNIQUE constraint failed: images.path\n[SQL: INSERT INTO images (path) VALUES (?)]\n"
            f"[parameters: ('{layout.data_dir}/archives/x-1/p.jpg',)]")
    public = public_text(text, layout)
    assert "INSERT" not in public and str(layout.data_dir) not in public and "UNIQUE constraint" in public
    assert public_text(f"could not extract {layout.data_dir}/archives/a/b.jpg", layout) == \
        "could not extract archives/a/b.jpg"


def test_lying_extensions_of_images_are_caught_at_intake(hostile):
    """Finding 11: an AVI named .jpg and a JPEG named .mp4 passed the intake checks."""
    client = hostile["app"].test_client()
    r = multipart(client, hostile, {"movie.jpg": (OPENCV_DATA / "Megamind.avi").read_bytes()[:200_000],
                                    "pic.mp4": (OPENCV_DATA / "fruits.jpg").read_bytes()})
    assert r.status_code == 202
    assert "not an image" in result(r.get_json(), "movie.jpg")[1]
    assert "still image" in result(r.get_json(), "pic.mp4")[1]


def test_second_attack_head_never_deletes_and_an_image_goes_with_every_copy(hostile):
    """Second attack, findings 1 and 2: HEAD on /api/items/<target> (Flask adds HEAD to GET rules) queued a delete
    without a CSRF check; deleting an image named by its content left the other copies of that content."""
    from app import jobs

    client = hostile["app"].test_client()
    listing = client.get("/api/collection").get_json()
    ref = listing["images"][0]["ref"]
    before = len(jobs.listing(hostile["app"].extensions["sessions"]))
    r = client.head(f"/api/items/{ref}", headers=tus(hostile))
    assert r.status_code == 200 and len(jobs.listing(hostile["app"].extensions["sessions"])) == before
    from app.models import Image
    from app.paths import DataLayout
    from app.removal import Target, remove

    sessions = hostile["app"].extensions["sessions"]
    with sessions() as session:
        original = session.query(Image).filter(Image.content_hash == ref[6:]).one()
        session.add(Image(path=original.path + ".copy", content_hash=original.content_hash, size=original.size,
                          mtime_ns=original.mtime_ns, width=original.width, height=original.height, name="copy"))
        session.commit()
        removed = remove(session, DataLayout.from_data_dir(hostile["data"]), Target.parse(ref))
        assert "copy" in removed.name
        assert session.query(Image).filter(Image.content_hash == ref[6:]).count() == 0
    assert Path(original.path).exists()  # the user's own file is never touched


def test_second_attack_concurrent_creations_keep_the_quota(hostile):
    """Second attack, finding 3: parallel creations each passed the quota check before any reserved its space."""
    import threading

    from app import create_app
    from tests.helpers import run_together

    small = create_app({"DATA_DIR": str(hostile["data"]), "DATABASE_URL": hostile["url"], "TESTING": True,
                        "UPLOAD_QUOTA_MB": str(_used_mb(hostile) + 10)})
    codes: list[int] = []
    barrier = threading.Barrier(8)

    def one(i: int) -> None:
        client = small.test_client()
        barrier.wait()
        r = client.post("/api/uploads/tus", headers={**tus(hostile, "bob"), "Upload-Length": str(6 * 1024 * 1024),
                                                      "Upload-Metadata": f"relativePath {b64(f'r{i}.mp4')}"})
        codes.append(r.status_code)

    run_together(one, 8)
    assert sorted(codes) == [201] + [507] * 7, codes
