"""Boxes stay on their frame and pixels when a video is indexed again with other keyframe settings, and boxes
saved in the old form (keyframe number, keyframe pixels, image path) are converted by the migration."""
from __future__ import annotations

import io
import shutil

import av
import numpy as np
import pytest
from alembic import command
from PIL import Image
from sqlalchemy import create_engine, text

import offline
from app.db import alembic_config
from tests.conftest import db_url, index_args
from tests.helpers import current_index

PASSWORD = "stable boxes password"


def _source_frame(path, frame_idx: int) -> np.ndarray:
    """The frame decoded straight from the video file (RGB), independently of the indexer."""
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == frame_idx:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"no frame {frame_idx}")


@pytest.fixture()
def collection(tmp_path, media_dir, monkeypatch):
    if not db_url(tmp_path).startswith("sqlite"):
        pytest.skip("runs on its own SQLite collection")
    video = tmp_path / "media" / "long_shot.webm"
    video.parent.mkdir()
    shutil.copy(media_dir / "videos" / "long_shot.webm", video)
    data = tmp_path / "data"
    args = index_args(data)
    assert offline.main(["index", str(video), *args, "--keyframe-interval", "2", "--keyframe-size", "160"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert offline.main(["users", "add", "ann", "--role", "annotator", "--password-stdin", "--data-dir",
                         str(data)]) == 0
    return video, data, args


def _app(data, tiny_encoder):
    from app import create_app

    return create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True,
                       "LOGIN_RATE_LIMIT": "1000 per minute"})


def _bearer(app) -> dict:
    from app import accounts

    with app.extensions["sessions"]() as s:
        return {"Authorization": f"Bearer {accounts.issue_token(s, 'ann')}"}


def test_reindex_with_other_interval_and_size_keeps_every_box_on_its_frame_and_pixels(collection, tiny_encoder,
                                                                                       capsys):
    video, data, args = collection
    app = _app(data, tiny_encoder)
    client, auth = app.test_client(), _bearer(app)
    results = client.get("/api/search?q=x&k=100&video=long_shot").get_json()["results"]
    items = sorted({r["item"] for r in results})[:3]
    assert len(items) == 3
    boxes = {}
    for i, item in enumerate(items):  # source pixels: the video is 320x180, its keyframes 160x90 now
        r = client.post("/api/annotations", json={"item": item, "box": [40 + i * 10, 30, 120, 90], "label": "kept"},
                        headers=auth)
        assert r.status_code == 201, r.get_json()
        boxes[r.get_json()["id"]] = (item, [40 + i * 10, 30, 120, 90])
    capsys.readouterr()
    assert offline.main(["index", str(video), *args, "--force", "--keyframe-interval", "0.7",
                         "--keyframe-size", "240"]) == 0
    # the served index holds the new keyframes (same content, new rows), not the old ones
    from sqlalchemy import create_engine

    engine = create_engine(db_url(data))
    with engine.connect() as c:
        catalogue = {r[0] for r in c.execute(text("SELECT id FROM keyframes"))}
    engine.dispose()
    ids = current_index(data).ids
    assert {int(i) for k, i in ids.tolist() if k == 0} == catalogue
    app = _app(data, tiny_encoder)
    client = app.test_client()
    for n, jpg in enumerate(sorted((data / "keyframes" / "long_shot").glob("*.jpg"))[:3], start=1):
        found = client.post("/api/search", data={"image": (io.BytesIO(jpg.read_bytes()), "q.jpg"), "k": "1"})
        assert found.get_json()["results"][0]["n"] == n  # a new keyframe finds itself
    listed = {a["id"]: a for a in client.get("/api/annotations?label=kept").get_json()["annotations"]}
    assert set(listed) == set(boxes)
    for box_id, (item, box) in boxes.items():
        a = listed[box_id]
        assert (a["item"], a["box"], a["orphaned"]) == (item, box, False)
        picture = Image.open(io.BytesIO(client.get(f"/item/{item}/picture").data))
        assert picture.size == (240, 135)  # the new --keyframe-size
        crop = np.asarray(Image.open(io.BytesIO(client.get(f"/annotations/{box_id}/crop.jpg").data)).convert("RGB"),
                          dtype=np.float32)
        x, y, w, h = box
        truth = _source_frame(video, int(item.rpartition("@")[2]))[y:y + h, x:x + w]
        truth = np.asarray(Image.fromarray(truth).resize((crop.shape[1], crop.shape[0])), dtype=np.float32)
        assert np.abs(crop - truth).mean() < 12, "the crop shows another frame or other pixels"
    page = client.get("/annotations").get_data(as_text=True)
    assert "orphan-notice" not in page


def test_a_box_whose_frame_is_gone_is_kept_and_listed_as_orphaned(collection, tiny_encoder):
    video, data, args = collection
    app = _app(data, tiny_encoder)
    client, auth = app.test_client(), _bearer(app)
    item = client.get("/api/search?q=x&k=1&video=long_shot").get_json()["results"][0]["item"]
    assert client.post("/api/annotations", json={"item": item, "box": [1, 1, 20, 20], "label": "lost"},
                       headers=auth).status_code == 201
    video.unlink()
    assert offline.main(["index", str(data / "nothing"), *args, "--prune"]) in (0, 1)
    listed = client.get("/api/annotations?orphaned=1").get_json()["annotations"]
    assert [(a["item"], a["label"], a["orphaned"]) for a in listed] == [(item, "lost", True)]
    page = client.get("/annotations").get_data(as_text=True)
    assert "orphan-notice" in page and "1 box on a frame or image" in page


def test_migration_converts_old_boxes_to_frames_source_pixels_and_image_hashes(tmp_path):
    """A database at revision 0004 holding boxes in the old form, upgraded to head."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    data = tmp_path / "data"
    (data / "keyframes" / "v1").mkdir(parents=True)
    Image.new("RGB", (640, 360)).save(data / "keyframes" / "v1" / "002.jpg")  # keyframe of a 1280x720 video
    command.upgrade(alembic_config(url), "0004")
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("INSERT INTO videos (id, video_id, path, source, content_hash, size, mtime_ns, fps, frames, "
                       "duration, width, height, indexed_at) VALUES (1, 'v1', '/m/v1.mp4', 'video', 'h', 1, 1, 25, "
                       "100, 4, 1280, 720, '2026-01-01')"))
        c.execute(text("INSERT INTO keyframes (id, video_pk, n, frame_idx, pts_time, image_path) VALUES "
                       "(1, 1, 1, 0, 0, 'keyframes/v1/001.jpg'), (2, 1, 2, 57, 2.28, 'keyframes/v1/002.jpg')"))
        c.execute(text("INSERT INTO images (id, path, content_hash, size, mtime_ns, width, height, indexed_at) "
                       "VALUES (1, '/photos/a/cat.jpg', 'ab12cd34ef56ab12cd34', 1, 1, 800, 600, '2026-01-01')"))
        c.execute(text("INSERT INTO users (id, name, password_hash, role, created_at, session_version) VALUES "
                       "(1, 'ann', 'x', 'annotator', '2026-01-01', 1)"))
        c.execute(text("INSERT INTO labels (id, name) VALUES (1, 'car')"))
        for box_id, video, n, path, box in ((1, "v1", 2, None, (10, 20, 100, 50)), (2, None, None, "/photos/a/cat.jpg",
                                            (5, 6, 7, 8)), (3, "v1", 9, None, (1, 1, 2, 2)),
                                            (4, None, None, "/gone.jpg", (1, 1, 2, 2))):
            c.execute(text("INSERT INTO annotations (id, video_id, n, image_path, x, y, w, h, label_id, note, "
                           "author_id, created_at, updated_at, version) VALUES (:i, :v, :n, :p, :x, :y, :w, :h, 1, "
                           "'', 1, '2026-01-01', '2026-01-01', 1)"),
                      {"i": box_id, "v": video, "n": n, "p": path, "x": box[0], "y": box[1], "w": box[2], "h": box[3]})
    engine.dispose()
    command.upgrade(alembic_config(url, data), "head")
    engine = create_engine(url)
    with engine.connect() as c:
        rows = {r.id: r for r in c.execute(text("SELECT * FROM annotations ORDER BY id"))}
        name = c.execute(text("SELECT name FROM images WHERE id = 1")).scalar()
    engine.dispose()
    # keyframe 2 is frame 57; its JPEG is 640x360 of a 1280x720 video: every number doubles
    assert (rows[1].video_id, rows[1].frame_idx, rows[1].n) == ("v1", 57, None)
    assert (rows[1].x, rows[1].y, rows[1].w, rows[1].h) == (20, 40, 200, 100)
    assert (rows[2].image_hash, rows[2].image_path, rows[2].x, rows[2].w) == ("ab12cd34ef56ab12cd34", None, 5, 7)
    assert (rows[3].frame_idx, rows[3].n) == (None, 9)  # its keyframe was already gone: kept as it was
    assert (rows[4].image_hash, rows[4].image_path) == (None, "/gone.jpg")
    assert name == "cat.jpg"
    command.downgrade(alembic_config(url, data), "0004")


def test_plain_coco_and_csv_exports_import_back_and_leave_orphans_out(collection, tiny_encoder):
    """A COCO file without our extra fields (bbox in the 160-px keyframe's pixels, file_name relative to the
    collection) imports to the same source-pixel boxes; an orphaned box is not exported (it could not import)."""
    import json

    video, data, args = collection
    app = _app(data, tiny_encoder)
    client, auth = app.test_client(), _bearer(app)
    item = client.get("/api/search?q=x&k=1&video=long_shot").get_json()["results"][0]["item"]
    made = client.post("/api/annotations", json={"item": item, "box": [40, 30, 120, 90], "label": "plain"},
                       headers=auth).get_json()
    with app.extensions["sessions"]() as s:
        from app.models import Annotation, Label, User

        s.add(Annotation(video_id="long_shot", frame_idx=99999, x=1, y=1, w=5, h=5, author_id=s.query(User).one().id,
                         label=s.query(Label).filter_by(name="plain").one()))
        s.commit()
    coco = json.loads(client.get("/api/annotations/export?format=coco&label=plain").data)
    assert [a["bbox"] for a in coco["annotations"]] == [[20, 15, 60, 45]]  # in the 160x90 keyframe's pixels
    assert coco["images"][0]["file_name"].startswith("keyframes/long_shot/") and not coco["skipped"]
    for image in coco["images"]:
        del image["item"], image["source_width"], image["source_height"]
    for a in coco["annotations"]:
        del a["source_bbox"]
    csv_text = client.get("/api/annotations/export?format=csv&label=plain").get_data(as_text=True)
    assert "@99999" not in csv_text
    orphans = client.get("/api/annotations/export?format=csv&label=plain&orphaned=1").get_data(as_text=True)
    assert "long_shot@99999" in orphans and item not in orphans
    assert client.delete(f"/api/annotations/{made['id']}?version=1", headers=auth).status_code == 204
    for name, body in (("plain.json", json.dumps(coco).encode()), ("back.csv", csv_text.encode())):
        r = client.post("/api/annotations/import", data={"file": (io.BytesIO(body), name)}, headers=auth,
                        content_type="multipart/form-data")
        assert r.status_code == 201, r.get_json()
        back = [a for a in client.get(f"/api/annotations?item={item}").get_json()["annotations"]]
        assert [(a["item"], a["box"]) for a in back] == [(item, [40, 30, 120, 90])], name
        for a in back:
            assert client.delete(f"/api/annotations/{a['id']}?version={a['version']}", headers=auth).status_code == 204
    r = client.patch(f"/api/annotations/{made['id'] + 1}", json={"version": 1, "item": "long_shot@0"}, headers=auth)
    assert r.status_code in (400, 404) and "error" in r.get_json()


def test_bad_settings_are_one_sentence(tmp_path, capsys, monkeypatch):
    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / "config.py").write_text("PORT = \n")
    assert offline.main(["users", "list", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.py, line 1 cannot be read: SyntaxError" in err and "Traceback" not in err
    (tmp_path / "instance" / "config.py").write_text("")
    monkeypatch.setenv("FRAMEFINDER_SEARCH_REQUIRES_LOGIN", "maybe")
    import server

    assert server.main(["--data-dir", str(tmp_path)]) == 2
    assert "search_requires_login from FRAMEFINDER_SEARCH_REQUIRES_LOGIN must be one of" in capsys.readouterr().err


def test_retrain_flag_builds_a_new_generation_of_an_unchanged_collection(collection):
    video, data, args = collection
    before = current_index(data)
    assert offline.main(["index", str(video), *args]) == 0
    assert current_index(data).generation == before.generation  # nothing changed: nothing written
    assert offline.main(["index", str(video), *args, "--retrain"]) == 0
    after = current_index(data)
    assert after.generation != before.generation and after.size == before.size
