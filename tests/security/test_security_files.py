"""Files: the login gate covers every data file (1), links never lead out (3), paths never traverse, and a
broken data dir says what is wrong instead of a traceback (13)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from app.paths import PROJECT_ROOT, DataLayout
from tests.conftest import ROOT, TINY_CONFIG, frame_item, login
from tests.processes import TINY_ARGS, cli, get, server_process


# -- 1: data files are reachable only through the gated routes ----------------------------------------------
def test_with_the_login_gate_no_data_file_is_served_to_anonymous_users(hostile, tiny_encoder):
    from app import create_app

    data = hostile["data"]
    app = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True,
                      "SEARCH_REQUIRES_LOGIN": True, "DATABASE_URL": hostile["url"]})
    client = app.test_client()
    layout = DataLayout.from_data_dir(data)
    generation = (layout.index_dir / "CURRENT").read_text().strip()
    # Flask's own static route serves the page assets only, never the data dir (static/ by default)
    assert Path(app.static_folder).resolve() == (PROJECT_ROOT / "assets").resolve()
    for path in ("/static/keyframes/cuts_and_dissolve/001.jpg", "/static/feature/cuts_and_dissolve.npy",
                 f"/static/feature/index/{generation}/index.faiss", "/static/feature/index/CURRENT",
                 "/static/map-keyframes/cuts_and_dissolve.csv", "/static/README.md", "/static/../instance/secret_key"):
        assert client.get(path).status_code == 404, path
    item = frame_item(app.extensions["sessions"], "cuts_and_dissolve", 1)
    for path in (f"/item/{item}/picture", f"/item/{_image_row(hostile, 'still_1.jpg').ref}/picture",
                 "/video/cuts_and_dissolve", f"/item/{item}", f"/api/items/{item}"):
        r = client.get(path, headers={"Accept": "application/json"} if "/api/" in path else {})
        assert r.status_code in (401, 302), (path, r.status_code)
    assert client.get("/static/css/app.css").status_code == 200  # the login page still has its style
    login(client, "vic")
    assert client.get(f"/item/{item}/picture").status_code == 200


# -- 3: a file swapped for a link after indexing is refused; links in folders are not indexed --------------
def _image_row(env, name: str):
    from app.models import Image

    with env["app"].extensions["sessions"]() as session:
        return session.scalar(select(Image).where(Image.path.like(f"%/{name}")))


def test_an_indexed_image_swapped_for_a_link_is_not_served(hostile):
    client = hostile["app"].test_client()
    row = _image_row(hostile, "still_1.jpg")
    assert client.get(f"/item/{row.ref}/picture").status_code == 200
    path = Path(row.path)
    backup = path.with_suffix(".bak")
    os.replace(path, backup)
    secret = hostile["data"] / "instance" / "secret_key"
    os.symlink(secret, path)
    try:
        r = client.get(f"/item/{row.ref}/picture")
        assert r.status_code == 404 and secret.read_bytes() not in r.data
        os.unlink(path)
        os.symlink("/etc/passwd", path)
        r = client.get(f"/item/{row.ref}/picture")
        assert r.status_code == 404 and b"root:" not in r.data
    finally:
        path.unlink(missing_ok=True)
        os.replace(backup, path)
    assert client.get(f"/item/{row.ref}/picture").status_code == 200


def test_a_folder_above_an_indexed_video_swapped_for_a_link_is_not_followed(hostile):
    client = hostile["app"].test_client()
    videos = hostile["media"] / "videos"
    assert client.get("/video/long_shot", headers={"Range": "bytes=0-9"}).status_code == 206
    moved = videos.with_name("videos-real")
    os.replace(videos, moved)
    decoy = videos.with_name("decoy")
    decoy.mkdir()
    (decoy / "long_shot.webm").write_bytes(b"DECOY-CONTENT " * 100)
    os.symlink(decoy, videos)
    try:
        r = client.get("/video/long_shot")
        assert r.status_code == 404 and b"DECOY-CONTENT" not in r.data
    finally:
        os.unlink(videos)
        os.replace(moved, videos)
        shutil.rmtree(decoy)


def test_a_changed_image_file_is_not_served_as_the_indexed_one(hostile):
    client = hostile["app"].test_client()
    row = _image_row(hostile, "still_2.jpg")
    path = Path(row.path)
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\0" * 10)
        assert client.get(f"/item/{row.ref}/picture").status_code == 404
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(row.mtime_ns, row.mtime_ns))
    assert client.get(f"/item/{row.ref}/picture").status_code == 200


def test_links_inside_an_indexed_folder_are_skipped(tmp_path, media_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(media_dir / "images" / "still_0.jpg", folder / "real.jpg")
    os.symlink(tmp_path / "elsewhere.jpg", folder / "link.jpg")
    shutil.copy(media_dir / "images" / "still_1.jpg", tmp_path / "elsewhere.jpg")
    proc = cli("index", str(folder), "--data-dir", str(tmp_path / "data"), "--pretrained", "none", *TINY_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "added 1" in proc.stdout and "link.jpg" in proc.stderr and "symbolic link" in proc.stderr


@pytest.mark.parametrize("path", ["/item/..%2F..%2Finstance@1/picture", "/item/cuts_and_dissolve%2F..@1/picture",
                                  "/video/..%2F..%2Fetc%2Fpasswd", "/item/%2E%2E@1", "/item/image:..%2F1/picture"])
def test_paths_never_traverse(hostile, path):
    r = hostile["app"].test_client().get(path)
    assert r.status_code == 404 and b"root:" not in r.data


# -- 13: a broken data dir explains itself; a damaged generation falls back ---------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory, media_dir) -> Path:
    """A collection with two index generations, made once by two `offline.py index` runs; tests damage copies."""
    root = tmp_path_factory.mktemp("two-generations")
    images = root / "images"
    shutil.copytree(media_dir / "images", images)
    data = root / "data"
    assert cli("index", str(images), "--data-dir", str(data), "--pretrained", "none", *TINY_ARGS).returncode == 0
    shutil.copy(media_dir / "videos" / "long_shot.webm", images / "later.webm")
    assert cli("index", str(images), "--data-dir", str(data), "--pretrained", "none", *TINY_ARGS).returncode == 0
    return data


@pytest.fixture()
def collection(tmp_path, pristine) -> Path:
    """This test's own copy of the collection (a data dir is self-contained: its files, index and SQLite catalogue)."""
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    return data


def _serve_fails(data: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "server.py"), "--data-dir", str(data), "--model-config",
                           str(TINY_CONFIG), "--device", "cpu", "--port", "1"], capture_output=True, text=True,
                          timeout=120)


def test_a_damaged_current_generation_falls_back_to_the_previous_one(collection):
    index_dir = DataLayout.from_data_dir(collection).index_dir
    current = (index_dir / "CURRENT").read_text().strip()
    faiss_file = index_dir / current / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])  # truncated
    with server_process(collection) as base:
        status, _, body = get(base + "/api/search?q=anything&k=3")
        assert status == 200 and b"results" in body
    (index_dir / "CURRENT").write_text("20990101T000000-000000000\n")  # names a generation that is gone
    with server_process(collection) as base:
        status, _, body = get(base + "/api/search?q=anything&k=3")
        assert status == 200 and b"results" in body


def test_no_readable_generation_is_one_sentence_naming_the_file_and_the_fix(collection):
    index_dir = DataLayout.from_data_dir(collection).index_dir
    for generation in (p for p in index_dir.iterdir() if p.is_dir()):
        (generation / "ids.npy").write_bytes(b"\x93NUMPY broken")
    proc = _serve_fails(collection)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "ids.npy" in proc.stderr and "offline.py index" in proc.stderr


def test_a_damaged_catalogue_is_one_sentence_naming_the_file_and_the_fix(collection):
    db = collection / "instance" / "framefinder.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    proc = _serve_fails(collection)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(db) in proc.stderr and "damaged" in proc.stderr
    indexing = cli("index", str(collection), "--data-dir", str(collection), *TINY_ARGS)
    assert indexing.returncode == 2 and "Traceback" not in indexing.stderr and "damaged" in indexing.stderr


def test_an_empty_catalogue_beside_an_index_is_one_sentence(collection):
    db = collection / "instance" / "framefinder.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    proc = _serve_fails(collection)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "knows none of them" in proc.stderr and str(db) in proc.stderr


def test_an_instance_folder_that_is_a_file_is_one_sentence(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "instance").write_text("not a folder")
    proc = _serve_fails(data)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "instance" in proc.stderr
