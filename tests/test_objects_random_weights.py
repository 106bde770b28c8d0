"""Objects end to end with a random-weight detector and the tiny random-weight CLIP (the boxes mean nothing; the
pipeline is what is checked): offline.py detects and stores machine boxes and embeds their crops, server.py searches
them, the object filters and categories hold, human boxes survive re-detection. Separate processes, as a user runs
them."""
from __future__ import annotations

import json
import shutil
import sqlite3
import urllib.parse
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import db_url
from tests.face_media import FACES
from tests.processes import TINY_ARGS, cli, get, post_image, server_process

DETECTOR = ["--detector", "fasterrcnn_mobilenet_v3_large_320_fpn", "--detector-weights", "none",
            "--object-threshold", "0", "--no-faces", "--no-concepts"]


def _db(data: Path) -> sqlite3.Connection:
    url = db_url(data)
    if not url.startswith("sqlite"):
        pytest.skip("reads the SQLite catalogue directly")
    return sqlite3.connect(url.split("///", 1)[1])


@pytest.fixture(scope="module")
def objects_site(tmp_path_factory, media_dir):
    root = tmp_path_factory.mktemp("objects")
    media = root / "media"
    media.mkdir()
    for name in ("obama_1", "biden_1", "astronaut_1"):
        shutil.copy(FACES / f"{name}.jpg", media)
    shutil.copy(media_dir / "videos" / "cuts_and_dissolve.mp4", media)
    data = root / "data"
    done = cli("index", str(media), "--data-dir", str(data), "--pretrained", "none", *TINY_ARGS, *DETECTOR)
    assert done.returncode == 0, done.stderr
    with server_process(data) as base:
        yield {"root": root, "media": media, "data": data, "base": base, "output": done.stdout}


def _detections(data: Path) -> list[tuple]:
    with _db(data) as db:
        return db.execute("select d.id, d.label, d.score, d.x, d.y, d.w, d.h, d.model, d.keyframe_id, d.image_id, "
                          "(select count(*) from detection_data x where x.detection_id = d.id) from detections d "
                          "order by d.id").fetchall()


def test_random_weights_detections_are_stored_as_machine_boxes_in_source_pixels(objects_site):
    rows = _detections(objects_site["data"])
    assert rows and "objects: " in objects_site["output"]
    with _db(objects_site["data"]) as db:
        sizes = {("i", i): (w, h) for i, w, h in db.execute("select id, width, height from images")}
        sizes.update({("k", k): (w, h) for k, w, h in db.execute(
            "select k.id, v.width, v.height from keyframes k join videos v on v.id = k.video_pk")})
    for _, _label, score, x, y, w, h, model, kf, img, _vector in rows:
        width, height = sizes[("k", kf) if kf else ("i", img)]
        assert 0 <= x and 0 <= y and x + w <= width + 0.5 and y + h <= height + 0.5
        assert model == "fasterrcnn_mobilenet_v3_large_320_fpn:none" and 0 <= score <= 1
    assert sum(r[-1] for r in rows) > 0  # crops were embedded into the regions index


def test_random_weights_detector_is_the_same_network_in_every_process(objects_site, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(FACES / "obama_1.jpg", media)
    done = cli("index", str(media), "--data-dir", str(tmp_path / "data"), "--pretrained", "none", *TINY_ARGS,
               *DETECTOR)
    assert done.returncode == 0, done.stderr
    with _db(tmp_path / "data") as db:
        again = db.execute("select label, round(x, 3), round(y, 3), round(w, 3), round(h, 3) from detections "
                           "order by id").fetchall()
    with _db(objects_site["data"]) as db:
        first = db.execute("select label, round(d.x, 3), round(d.y, 3), round(d.w, 3), round(d.h, 3) from "
                           "detections d join images i on i.id = d.image_id where i.name = 'obama_1.jpg' "
                           "order by d.id").fetchall()
    assert again == first and again


def test_random_weights_a_crop_of_an_object_finds_that_object_first(objects_site, tmp_path):
    c = objects_site
    with _db(c["data"]) as db:
        did, x, y, w, h, name = db.execute(
            "select d.id, d.x, d.y, d.w, d.h, i.name from detections d join images i on i.id = d.image_id "
            "join detection_data x on x.detection_id = d.id order by d.w * d.h desc limit 1").fetchone()
    crop = tmp_path / "crop.png"
    Image.open(c["media"] / name).convert("RGB").crop((int(x), int(y), int(x + w), int(y + h))).save(crop)
    status, body = post_image(f"{c['base']}/api/search", crop, {"target": "objects", "k": "5"})
    assert status == 200, body
    first = body["results"][0]
    assert first["name"] == name and first["score"] > 0.99
    assert any(o["detection_id"] == did for o in first["objects"]) or first["objects"][0]["box"] == pytest.approx(
        [x, y, w, h], abs=1.0)


def test_random_weights_object_filters_count_what_is_not_rejected(objects_site):
    c = objects_site
    with _db(c["data"]) as db:
        per_item = db.execute("select coalesce('k' || keyframe_id, 'i' || image_id), label, count(*) from detections "
                              "group by 1, 2 order by 3 desc").fetchall()
    owner, label, most = per_item[0]
    status, _, raw = get(f"{c['base']}/api/search?q=x&k=1000&objects={label}>={most}")
    body = json.loads(raw)
    assert status == 200, body
    expected = {o for o, lab, n in per_item if lab == label and n >= most}
    assert len(body["results"]) == len(expected)
    # an annotator rejects all but one of that item's boxes: it no longer has `most` of them
    with _db(c["data"]) as db:
        column = "keyframe_id" if owner[0] == "k" else "image_id"
        ids = [r[0] for r in db.execute(f"select id from detections where {column} = ? and label = ?",
                                        (int(owner[1:]), label))]
        db.executemany("update detections set status = 'rejected' where id = ?", [(i,) for i in ids[1:]])
    status, _, raw = get(f"{c['base']}/api/search?q=x&k=1000&objects={label}>={most}")
    assert len(json.loads(raw)["results"]) == len(expected) - 1 if most > 1 else True
    with _db(c["data"]) as db:
        db.execute("update detections set status = 'new'")


def test_random_weights_a_bare_class_means_at_least_one(objects_site):
    c = objects_site
    with _db(c["data"]) as db:
        label = db.execute("select label from detections limit 1").fetchone()[0]
    _, _, bare = get(f"{c['base']}/api/search?q=x&k=1000&objects={urllib.parse.quote(label)}")
    _, _, one = get(f"{c['base']}/api/search?q=x&k=1000&objects={urllib.parse.quote(label + '>=1')}")
    assert json.loads(bare)["results"] == json.loads(one)["results"] and json.loads(one)["results"]


def test_random_weights_a_category_filter_takes_in_its_descendants(objects_site):
    c = objects_site
    with _db(c["data"]) as db:
        labels = {r[0] for r in db.execute("select distinct label from detections")}
    from app.categories import default_hierarchy

    parents = default_hierarchy()
    label = sorted(labels)[0]
    category = parents[label] or label
    _, _, by_label = get(f"{c['base']}/api/search?q=x&k=1000&objects={label}>=1")
    _, _, by_category = get(f"{c['base']}/api/search?q=x&k=1000&objects={category}>=1")
    labelled = {r["item"] for r in json.loads(by_label)["results"]}
    assert labelled <= {r["item"] for r in json.loads(by_category)["results"]}
    assert json.loads(by_category)["results"]


@pytest.mark.parametrize(("value", "words"), [("person>=abc", "'abc' in 'person>=abc' is not a whole number"),
                                              ("unicorn>=1", "unknown class 'unicorn'"),
                                              ("person>=0", "must be between 1 and"),
                                              ("person<=2", "only NAME>=COUNT, NAME>COUNT or NAME"),
                                              (">=2", "the class name is missing"),
                                              ("person>=", "has no count after >="),
                                              ("person>=\u0663", "is not a whole number")])
def test_bad_object_filters_name_the_part(objects_site, value, words):
    status, _, raw = get(f"{objects_site['base']}/api/search?q=x&objects={urllib.parse.quote(value)}")
    assert status == 400 and words in json.loads(raw)["error"], raw


def test_human_boxes_survive_detecting_again(objects_site, tmp_path):
    c = objects_site
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from app import accounts, boxes
    from app.paths import DataLayout

    engine = create_engine(db_url(c["data"]))
    with Session(engine) as session:
        user = accounts.add(session, "ann", "correct horse battery", "annotator")
        image_hash = session.execute(text("select content_hash from images where name = 'obama_1.jpg'")).scalar()
        box = boxes.create(session, DataLayout.from_data_dir(c["data"]), user,
                           {"item": f"image:{image_hash}", "box": [10, 10, 50, 60], "label": "my label"})
        box_id = box.id
    engine.dispose()
    before = {r[0] for r in _detections(c["data"])}
    (c["media"] / "obama_1.jpg").write_bytes((c["media"] / "obama_1.jpg").read_bytes() + b"\0")  # changed file
    done = cli("index", str(c["media"]), "--data-dir", str(c["data"]), *TINY_ARGS, *DETECTOR)
    assert done.returncode == 0, done.stderr
    after = {r[0] for r in _detections(c["data"])}
    assert after != before and after - before  # that image's objects were detected anew
    with _db(c["data"]) as db:
        assert db.execute("select x, y, w, h from annotations where id = ?", (box_id,)).fetchone() == (10, 10, 50, 60)


def test_a_detector_that_cannot_load_stops_before_any_work(tmp_path, capsys):
    """Each refusal is told before any work. In this process (offline.main, as the command line calls it): the
    answers are the same, without five interpreter start-ups."""
    from tests.helpers import offline_main

    def cli(*args):  # noqa: F811 - offline.py's own entry point, in-process
        return offline_main(capsys, *args)

    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(FACES / "obama_1.jpg", media)
    done = cli("index", str(media), "--data-dir", str(tmp_path / "data"), "--pretrained", "none", *TINY_ARGS,
               "--detector", "fasterrcnn_resnet50_fpn_v2", "--no-faces")
    assert done.returncode == 2 and "--detector-weights" in done.stderr, done.stderr
    assert "files seen" not in done.stdout
    bad = tmp_path / "cycle.yaml"
    bad.write_text("shirt: top\ntop: clothing\nclothing: shirt\n")
    done = cli("index", str(media), "--data-dir", str(tmp_path / "data2"), "--pretrained", "none", *TINY_ARGS,
               *DETECTOR, "--hierarchy", str(bad))
    assert done.returncode == 2 and "a cycle:" in done.stderr, done.stderr
    bad.write_text('{"shirt": "top"}')
    bad = bad.rename(tmp_path / "unknown.json")
    done = cli("index", str(media), "--data-dir", str(tmp_path / "data3"), "--pretrained", "none", *TINY_ARGS,
               "--no-detector", "--no-faces", "--hierarchy", str(bad))  # checked even when this run detects nothing
    assert done.returncode == 2 and "its parent 'top' is not defined" in done.stderr, done.stderr
    not_weights = tmp_path / "weights.txt"
    not_weights.write_text("not a checkpoint")
    done = cli("index", str(media), "--data-dir", str(tmp_path / "data4"), "--pretrained", "none", *TINY_ARGS,
               "--detector", "fasterrcnn_mobilenet_v3_large_320_fpn", "--detector-weights", str(not_weights),
               "--no-faces")
    assert done.returncode == 2 and "are not fasterrcnn_mobilenet_v3_large_320_fpn weights" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    huge = tmp_path / "huge.yaml"
    huge.write_text("a: null\n" + "".join(f"c{i}: a\n" for i in range(300_000)))
    done = cli("index", str(media), "--data-dir", str(tmp_path / "data5"), "--pretrained", "none", *TINY_ARGS,
               "--no-detector", "--no-faces", "--hierarchy", str(huge))
    assert done.returncode == 2 and "a hierarchy file is at most" in done.stderr, done.stderr
