"""Face search with the real dlib model on real faces: offline.py indexes and server.py serves, in separate processes.

What each query should find comes from how the media were made (which photo shows whom, where, and when in the
video), never from the code under test.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from tests.conftest import db_url
from tests.face_media import FACES, face_video, group_photo
from tests.processes import TINY_ARGS, cli, get, post_image, server_process

# the collection: which people each file shows (by construction)
SINGLES = {"obama_1": {"obama"}, "obama_2": {"obama"}, "biden_1": {"biden"}, "astronaut_1": {"astronaut"}}
GROUPS = {"g_obama_biden": (["obama_2", "biden_1"], 1), "g_biden_astronaut": (["biden_1", "astronaut_1"], 2),
          "g_obama_astronaut": (["obama_1", "astronaut_1"], 3)}
SEGMENTS = [("obama_4", 2.0), ("astronaut_1", 2.0), (["biden_1", "astronaut_1"], 2.0), ("obama_5", 2.0)]


def _who(name: str) -> set[str]:
    return {n.rsplit("_", 1)[0] for n in name.split("+")}


@pytest.fixture(scope="module")
def faces_collection(tmp_path_factory):
    """Photos, group photos and a video with known people; indexed with faces by offline.py."""
    root = tmp_path_factory.mktemp("faces")
    media = root / "media"
    media.mkdir()
    for name in SINGLES:
        shutil.copy(FACES / f"{name}.jpg", media / f"{name}.jpg")
    regions = {}
    for name, (people, seed) in GROUPS.items():
        regions[name] = group_photo(media / f"{name}.jpg", people, seed=seed)
    timeline = face_video(media / "faces.mp4", SEGMENTS)
    data = root / "data"
    done = cli("index", str(media), "--data-dir", str(data), "--pretrained", "none", *TINY_ARGS)
    assert done.returncode == 0, done.stderr
    assert "faces:" in done.stdout
    with server_process(data) as base:
        yield {"root": root, "data": data, "base": base, "regions": regions, "timeline": timeline,
               "index_output": done.stdout}


def _who_is_in(result: dict, timeline) -> set[str]:
    """Who the result shows, from the media's construction."""
    if result["video_id"] is None:
        stem = result["name"].rsplit(".", 1)[0]
        return SINGLES.get(stem) or {p.rsplit("_", 1)[0] for p in GROUPS[stem][0]}
    t = result["pts_time"]
    for name, start, end in timeline:
        if start <= t < end:
            return _who(name)
    raise AssertionError(f"frame at {t} s is in no segment")


def _search(base: str, photo: Path, **fields) -> tuple[int, dict]:
    return post_image(f"{base}/api/faces/search", photo, {k: str(v) for k, v in fields.items()})


def test_one_person_finds_every_photo_and_frame_of_that_person_first(faces_collection):
    c = faces_collection
    status, body = _search(c["base"], FACES / "obama_3.jpg", k=50)  # a photo of Obama that is not in the collection
    assert status == 200, body
    assert len(body["faces"]) == 1 and body["chosen"] == [0]
    shown = [_who_is_in(r, c["timeline"]) for r in body["results"]]
    assert shown and all("obama" in who for who in shown), shown
    names = {r["name"] for r in body["results"] if r["video_id"] is None}
    assert {"obama_1.jpg", "obama_2.jpg", "g_obama_biden.jpg", "g_obama_astronaut.jpg"} <= names
    frames = [r for r in body["results"] if r["video_id"] is not None]
    assert {_who_is_in(r, c["timeline"]).pop() for r in frames} == {"obama"} and frames
    for r in body["results"]:
        assert r["score"] >= body["floor"] and len(r["faces"]) == 1
        assert r["faces"][0]["score"] == pytest.approx(r["score"])


def test_matched_face_box_lies_on_that_person(faces_collection):
    c = faces_collection
    _, body = _search(c["base"], FACES / "biden_1.jpg", k=50, min_score=0)
    group = next(r for r in body["results"] if r["name"] == "g_obama_biden.jpg")
    (x, y, w, h), = [f["box"] for f in group["faces"]]
    rx, ry, rw, rh = dict(c["regions"]["g_obama_biden"])["biden_1"]
    assert rx <= x + w / 2 <= rx + rw and ry <= y + h / 2 <= ry + rh  # the box's centre is on Biden's photo


def test_a_loose_hand_drawn_box_finds_the_face_inside_it(faces_collection, tmp_path):
    c = faces_collection
    query = tmp_path / "pair.jpg"
    placed = dict(group_photo(query, ["obama_3", "biden_1"], seed=5))
    x, y, w, h = placed["biden_1"]  # the whole of Biden's photo, far looser than his face
    status, body = _search(c["base"], query, box=f"{x},{y},{w},{h}", k=50)
    assert status == 200, body
    (face,) = body["faces"]
    assert x <= face["box"][0] and face["box"][0] + face["box"][2] <= x + w and face["box"][2] < w / 2
    assert body["results"] and all("biden" in _who_is_in(r, c["timeline"]) for r in body["results"])


def test_two_people_find_only_the_pictures_with_both(faces_collection, tmp_path):
    c = faces_collection
    query = tmp_path / "query.jpg"
    placed = group_photo(query, ["obama_3", "biden_1"], seed=7)  # other photo of Obama, Biden mirrored/scaled
    status, body = _search(c["base"], query, face="all")
    assert status == 200, body
    assert len(body["faces"]) == 2 and body["chosen"] == [0, 1]
    names = [r["name"] for r in body["results"]]
    assert names == ["g_obama_biden.jpg"], names  # no single photo, no other pair, no video frame has both
    hit = body["results"][0]
    assert len(hit["faces"]) == 2 and {f["query_face"] for f in hit["faces"]} == {0, 1}
    assert len(hit["matrix"]["similarity"]) == 2 and len(hit["matrix"]["similarity"][0]) == 2
    assert hit["score"] == pytest.approx(min(f["score"] for f in hit["faces"]))
    # each query face matched the face on the same person's photo in the result
    by_query = {f["query_face"]: f["box"] for f in hit["faces"]}
    query_boxes = {f["index"]: f["box"] for f in body["faces"]}
    for qi, qbox in query_boxes.items():
        who = next(n for n, (x, y, w, h) in placed if x <= qbox[0] + qbox[2] / 2 <= x + w)
        bx, by, bw, bh = by_query[qi]
        rx, ry, rw, rh = dict(c["regions"]["g_obama_biden"])[who if who != "obama_3" else "obama_2"]
        assert rx <= bx + bw / 2 <= rx + rw, (who, by_query)


def test_two_people_in_the_video_find_the_moment_they_are_together(faces_collection, tmp_path):
    c = faces_collection
    query = tmp_path / "query.jpg"
    group_photo(query, ["astronaut_1", "biden_1"], seed=9)
    _, body = _search(c["base"], query, face="0,1", k=100)
    assert body["results"], body
    for r in body["results"]:
        assert _who_is_in(r, c["timeline"]) >= {"biden", "astronaut"}
    frames = [r for r in body["results"] if r["video_id"]]
    together = next((s, e) for n, s, e in c["timeline"] if n == "biden_1+astronaut_1")
    assert frames and all(together[0] <= r["pts_time"] < together[1] for r in frames)


def test_item_page_shows_the_matrix_of_a_several_people_result(faces_collection, tmp_path):
    c = faces_collection
    query = tmp_path / "query.jpg"
    group_photo(query, ["obama_3", "biden_1"], seed=7)
    opener, location = _post_face_form(c["base"], query)
    assert "mode=faces" in location and "image=" in location
    text = opener.open(location + "&face=0&face=1", timeout=60).read().decode()
    assert 'id="face-picker"' in text and "g_obama_biden" in text
    start = text.index('href="/item/') + len('href="')
    item_link = text[start:text.index('"', start)].replace("&amp;", "&")
    assert "face_query=" in item_link and "faces=0%2C1" in item_link or "faces=0,1" in item_link
    page = opener.open(c["base"] + item_link, timeout=60).read().decode()
    assert 'id="face-matrix"' in page and "query face 1" in page


def _post_face_form(base: str, photo: Path):
    """The search form's POST with mode=faces, as a browser sends it (session cookie, CSRF token); returns the
    opener (with the cookie) and the address the server redirected to."""
    import http.cookiejar
    import urllib.request
    import uuid

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(base + "/", timeout=60).read().decode()
    token = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="mode"\r\n\r\nfaces\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    once = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    req = urllib.request.Request(base + "/", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Referer": base + "/"})
    try:
        once.open(req, timeout=60)
    except urllib.error.HTTPError as exc:
        assert exc.code == 303, exc.read()
        location = exc.headers["Location"]
        return opener, location if location.startswith("http") else base + location
    raise AssertionError("the form POST did not redirect")


@pytest.mark.parametrize("case", ["no_face", "same_person_twice", "face_out_of_range", "face_not_a_number",
                                  "tiny_box", "box_without_face", "unknown_person", "long_person", "bad_score_mode",
                                  "no_image", "not_an_image"])
def test_bad_face_queries_get_a_clear_400(faces_collection, tmp_path, case):
    base = faces_collection["base"]
    plain = tmp_path / "plain.jpg"
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(plain)
    twice = tmp_path / "twice.jpg"
    group_photo(twice, ["obama_1", "obama_3"], seed=4)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a picture at all")
    photo, fields, words = {
        "no_face": (plain, {}, "no face found in this image"),
        "same_person_twice": (twice, {"face": "0,1"}, "same person"),
        "face_out_of_range": (FACES / "obama_1.jpg", {"face": "3"}, "does not exist"),
        "face_not_a_number": (FACES / "obama_1.jpg", {"face": "left"}, "face must be"),
        "tiny_box": (FACES / "obama_1.jpg", {"box": "10,10,5,5"}, "too small"),
        "box_without_face": (plain, {"box": "10,10,120,120"}, "no face found in the box"),
        "unknown_person": (FACES / "obama_1.jpg", {"person": "Nobody"}, "no person named 'Nobody'"),
        "long_person": (FACES / "obama_1.jpg", {"person": "b" * 10_000}, "names are at most 100"),
        "bad_score_mode": (FACES / "obama_1.jpg", {"score_mode": "junk"}, "score_mode must be"),
        "no_image": (None, {}, "multipart field 'image'"),
        "not_an_image": (junk, {}, "not an image"),
    }[case]
    if photo is None:
        import urllib.request

        req = urllib.request.Request(f"{base}/api/faces/search", data=b"face=0", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            urllib.request.urlopen(req, timeout=30)
            raise AssertionError("accepted a search without a photo")
        except urllib.error.HTTPError as exc:
            status, body = exc.code, json.loads(exc.read())
    else:
        status, body = _search(base, photo, **fields)
    assert status == 400 and words in body["error"], body


def test_a_crowd_is_capped_and_says_so(tmp_path):
    from app.face_model import MAX_FACES, load_face_model
    from app.face_search import read_photo
    from bench.faces import crowd_picture

    model = load_face_model("dlib")
    path = crowd_picture(model, tmp_path, 1280, rows=7, columns=9, tile=128)
    photo = read_photo(model, Image.open(path))
    assert len(photo.faces) == MAX_FACES
    assert any(f"the {MAX_FACES} largest are offered" in n for n in photo.notices), photo.notices


def test_person_filter_by_name(faces_collection):
    """A name given to a person (here written straight to the catalogue, as the People page does) filters searches."""
    c = faces_collection
    engine = create_engine(db_url(c["data"]))
    from app.models import Face, Person
    from app.people import update_centroids

    with Session(engine) as session:
        _, body = _search(c["base"], FACES / "obama_3.jpg", k=50)
        face_ids = [f["face_id"] for r in body["results"] for f in r.get("faces", []) if "face_id" in f]
        person = Person(name="Obama")
        session.add(person)
        session.flush()
        obama_items = {r["item"] for r in body["results"]}
        rows = session.execute(
            update(Face).where(Face.id.in_(face_ids)).values(person_id=person.id)) if face_ids else None
        update_centroids(session)
        session.commit()
    engine.dispose()
    assert rows is not None, "results carry their face ids"
    status, _, raw = get(c["base"] + "/api/search?q=person:Obama&k=100")
    body = json.loads(raw)
    assert status == 200, body
    assert {r["item"] for r in body["results"]} == obama_items
    status, _, raw = get(c["base"] + "/api/search?q=person:Nobody")
    assert status == 400 and "no person named" in json.loads(raw)["error"]
    status, _, raw = get(c["base"] + "/?q=person:obama")  # the name in any case; the page boxes where he is
    page = raw.decode()
    assert status == 200 and page.count('class="card"') == len(obama_items)
    assert page.count("face-box matched") == len(obama_items)


def test_faces_added_to_an_indexed_collection_redo_neither_shots_nor_clip(tmp_path, capsys):
    from tests.helpers import offline_main

    media = tmp_path / "media"
    media.mkdir()
    for name in ("obama_1", "biden_1"):
        shutil.copy(FACES / f"{name}.jpg", media)
    face_video(media / "clip.mp4", [("astronaut_1", 2.0)])
    data = tmp_path / "data"
    first = cli("index", str(media), "--data-dir", str(data), "--pretrained", "none", "--no-faces", *TINY_ARGS)
    assert first.returncode == 0 and "faces:" not in first.stdout, first.stdout + first.stderr
    second = cli("index", str(media), "--data-dir", str(data), *TINY_ARGS, "--faces")
    assert second.returncode == 0, second.stderr
    assert "added 0, updated 0, unchanged 3" in second.stdout and "keyframes 0, images 0" in second.stdout
    assert "faces: 3 in" in second.stdout or "faces: " in second.stdout
    scanned = int(second.stdout.split("faces: ", 1)[1].split(" in ", 1)[1].split(" pictures", 1)[0])
    assert scanned >= 3  # both images and the video's keyframes
    third = offline_main(capsys, "index", str(media), "--data-dir", str(data), *TINY_ARGS)  # in this process
    assert " in 0 pictures scanned" in third.stdout, third.stdout
    other = offline_main(capsys, "index", str(media), "--data-dir", str(data), *TINY_ARGS, "--face-model",
                         "insightface:/nonexistent")
    assert other.returncode == 2 and "--face-model insightface:/nonexistent: no such folder" in other.stderr
