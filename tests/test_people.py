"""People: real faces (dlib's shipped model) clustered by `offline.py index` (a separate process), named, merged and
taken apart through the People page's forms, names kept across re-indexing, and identity retrieval mAP on the named
people checked against a ranking computed here by hand.

The photos (tests/data/faces): Obama five times; Biden and Eileen Collins (astronaut) each once plus a mirrored copy
(same person, cosine 0.99), so each is a person of two faces; Messi once (a lone face: in no person).
"""
from __future__ import annotations

import html
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.conftest import TINY_CONFIG, add_users, csrf_of, index_args, login
from tests.face_media import FACES
from tests.processes import cli

PHOTOS = ["obama_1", "obama_2", "obama_3", "obama_4", "obama_5", "biden_1", "astronaut_1", "messi_1"]
MIRRORED = ["biden_1", "astronaut_1"]


def face_media(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        shutil.copy(FACES / f"{name}.jpg", folder / f"{name}.jpg")
    for name in MIRRORED:
        ImageOps.mirror(Image.open(FACES / f"{name}.jpg")).save(folder / f"{name}_mirrored.jpg", quality=92)
    return folder


def change_photo(photo: Path) -> None:
    with Image.open(photo) as im:
        changed = im.resize((im.width - 10, im.height - 8))
    changed.save(photo, quality=90)


def index(media: Path, data: Path, *extra: str) -> str:
    proc = cli("index", str(media), *index_args(data), *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from app import create_app

    root = tmp_path_factory.mktemp("people")
    media, data = face_media(root / "media"), root / "data"
    out = index(media, data)
    assert "faces: 10 in 10 pictures" in out and "people: 3 (0 named)" in out, out
    application = create_app({"DATA_DIR": str(data), "MODEL_CONFIG": str(TINY_CONFIG), "DEVICE": "cpu",
                              "TESTING": True, "LOGIN_RATE_LIMIT": "1000 per minute"})  # CSRF on
    add_users(application.extensions["sessions"])
    return {"app": application, "media": media, "data": data, "sessions": application.extensions["sessions"]}


def people_by_photos(env) -> dict[frozenset[str], tuple[int, str | None]]:
    """{set of photo stems of a person's faces: (person id, name)} as the catalogue has it now."""
    from sqlalchemy import select

    from app.models import Face, Image, Person

    groups: dict[int, set[str]] = {}
    names = {}
    with env["sessions"]() as s:
        for person_id, name, path in s.execute(select(Person.id, Person.name, Image.path)
                                               .join(Face, Face.person_id == Person.id)
                                               .join(Image, Image.id == Face.image_id)):
            groups.setdefault(person_id, set()).add(Path(path).stem)
            names[person_id] = name
    return {frozenset(v): (k, names[k]) for k, v in groups.items()}


def obama(env) -> tuple[int, str | None]:
    return people_by_photos(env)[frozenset(f"obama_{i}" for i in range(1, 6))]


def logged_in(env, name: str = "ann"):
    client = env["app"].test_client()
    assert login(client, name).status_code == 302
    return client, csrf_of(client)


def post(client, token: str, url: str, **form):
    return client.post(url, data={"csrf_token": token, **form})


def notices(client) -> list[str]:
    page = client.get("/people").get_data(as_text=True)
    return [html.unescape(n) for n in re.findall(r'<p class="notice">(.*?)</p>', page)]


def page_error(response) -> str:
    found = re.search(r'id="people-error">(.*?)</p>', response.get_data(as_text=True), re.S)
    return html.unescape(found.group(1)) if found else ""


def hand_identity_map(env) -> tuple[float, float, dict[str, float]]:
    """Identity mAP, P@1 and per-person AP computed here: every face of a named person with two or more faces ranks
    all other faces by cosine similarity (ties by face id); AP by Oxford's rule (trapezoids from precision 1)."""
    from sqlalchemy import select

    from app.models import Face, FaceData, Person

    with env["sessions"]() as s:
        rows = s.execute(select(Face.id, Person.name, FaceData.vector).join(FaceData, FaceData.face_id == Face.id)
                         .outerjoin(Person, Person.id == Face.person_id).order_by(Face.id)).all()
    ids = [r[0] for r in rows]
    who = [r[1] for r in rows]
    vectors = np.stack([np.frombuffer(r[2], np.float32).astype(np.float64) for r in rows])
    sims = vectors @ vectors.T
    size = {n: who.count(n) for n in set(who) if n}
    aps, top1, per = [], [], {}
    for q in range(len(ids)):
        if not who[q] or size[who[q]] < 2:
            continue
        others = sorted((j for j in range(len(ids)) if j != q), key=lambda j: (-sims[q, j], ids[j]))
        flags = [who[j] == who[q] for j in others]
        npos, hits, ap, old_recall, old_precision = sum(flags), 0, 0.0, 0.0, 1.0
        for rank, hit in enumerate(flags, start=1):
            hits += hit
            recall, precision = hits / npos, hits / rank
            ap += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
        aps.append(ap)
        top1.append(float(flags[0]))
        per.setdefault(who[q], []).append(ap)
    return float(np.mean(aps)), float(np.mean(top1)), {n: float(np.mean(v)) for n, v in per.items()}


def check_identity_map(env) -> dict:
    from app.face_eval import identity_map

    with env["sessions"]() as s:
        got = identity_map(s, None)
    expected_map, expected_p1, expected_per = hand_identity_map(env)
    assert 0.0 <= got["mAP"] <= 1.0
    assert got["mAP"] == pytest.approx(expected_map, abs=1e-9)
    assert got["P@1"] == pytest.approx(expected_p1, abs=1e-9)
    assert {p["name"]: p["AP"] for p in got["people"]} == pytest.approx(expected_per, abs=1e-9)
    return got


def test_faces_cluster_into_people_and_a_name_survives_reindexing(env):
    anonymous = env["app"].test_client()
    listing = anonymous.get("/api/people").get_json()
    assert sorted(p["faces"] for p in listing["people"]) == [2, 2, 5] and listing["unassigned"] == 1
    assert all(p["name"] is None and p["search_url"] is None and p["label"].startswith("Unnamed person ")
               for p in listing["people"])
    assert listing["people"][0]["faces"] == 5 and len(listing["people"][0]["thumbs"]) == 5  # biggest first
    groups = people_by_photos(env)
    assert set(groups) == {frozenset(f"obama_{i}" for i in range(1, 6)), frozenset({"biden_1", "biden_1_mirrored"}),
                           frozenset({"astronaut_1", "astronaut_1_mirrored"})}
    thumb = anonymous.get(listing["people"][0]["thumbs"][0])
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg" and thumb.data[:2] == b"\xff\xd8"
    page = anonymous.get("/people").get_data(as_text=True)
    assert "1 face in no person" in page and 'id="people-readonly"' in page and "Cluster again" not in page

    # nothing named yet: no identity ground truth
    proc = cli("evaluate", "@people", "--data-dir", str(env["data"]))
    assert proc.returncode == 2 and "no named person has two or more faces" in proc.stderr

    person_id, _ = obama(env)
    r = post(anonymous, csrf_of(anonymous), "/people/name", person=person_id, name="Obama")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    viewer, token = logged_in(env, "vic")
    r = post(viewer, token, "/people/name", person=person_id, name="Obama")
    assert r.status_code == 403
    assert obama(env) == (person_id, None)

    client, token = logged_in(env, "ann")
    assert "Cluster again" in client.get("/people").get_data(as_text=True)
    r = post(client, token, "/people/name", person=person_id, name="  Obama ")
    assert r.status_code == 303 and r.headers["Location"].endswith("/people")
    assert notices(client) == [f"Unnamed person {person_id} is now named Obama."]
    assert obama(env) == (person_id, "Obama")
    api = client.get("/api/people").get_json()
    first = api["people"][0]
    assert (first["name"], first["faces"], first["search_url"]) == ("Obama", 5, "/?person=Obama")
    assert api["named"] == 1

    # a changed file (re-indexed; see test_a_changed_photo_is_scanned_for_faces_again for its faces)
    change_photo(env["media"] / "obama_3.jpg")
    out = index(env["media"], env["data"])
    assert "updated 1" in out, out
    assert obama(env) == (person_id, "Obama")
    # every face found anew (all face ids new): the name finds its person by the centroid
    out = index(env["media"], env["data"], "--faces-redo")
    assert "faces: 10 in 10 pictures" in out, out
    assert obama(env)[1] == "Obama"
    assert [p["name"] for p in client.get("/api/people").get_json()["people"]].count("Obama") == 1


def test_identity_map_on_named_people(env):
    client, token = logged_in(env, "ann")
    groups = people_by_photos(env)
    for photos, name in ((frozenset({"biden_1", "biden_1_mirrored"}), "Biden"),
                         (frozenset({"astronaut_1", "astronaut_1_mirrored"}), "Eileen Collins")):
        assert post(client, token, "/people/name", person=groups[photos][0], name=name).status_code == 303
    if obama(env)[1] != "Obama":  # when this test runs alone
        assert post(client, token, "/people/name", person=obama(env)[0], name="Obama").status_code == 303
    got = check_identity_map(env)
    assert (got["n_queries"], got["n_people"], got["n_faces"]) == (9, 3, 10)
    assert got["mAP"] == pytest.approx(1.0) and got["P@1"] == 1.0  # three people apart: every ranking is perfect

    proc = cli("evaluate", "@people", "--data-dir", str(env["data"]))
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["mAP"] == pytest.approx(got["mAP"]) and last["n_queries"] == 9 and last["protocol"] == "identity"
    assert set(last["per_person"]) == {"Obama", "Biden", "Eileen Collins"}
    assert f"mAP {got['mAP']:.4f}" in proc.stdout

    # the same run from /evaluation (admin), stored and listed with the others
    boss, boss_token = logged_in(env, "boss")
    r = post(boss, boss_token, "/evaluation", gt="@people", model="clip")
    assert r.status_code == 303, r.get_data(as_text=True)
    run_url = r.headers["Location"]
    run_id = int(run_url.rstrip("/").split("/")[-1])
    for _ in range(100):
        if boss.get(f"/evaluation/runs/{run_id}/progress").get_json()["status"] != "running":
            break
        time.sleep(0.1)
    run = boss.get(f"/evaluation/runs/{run_id}.json").get_json()
    assert (run["status"], run["gt_format"], run["protocol"], run["gt_name"]) == ("done", "faces", "identity",
                                                                                   "@people")
    assert run["map_value"] == pytest.approx(got["mAP"]) and run["n_queries"] == 9
    html = boss.get(run_url).get_data(as_text=True)
    assert f'data-metric="mAP">{got["mAP"]:.4f}<' in html and "Eileen Collins" in html and 'id="people-ap"' in html
    assert boss.get(f"/evaluation/runs/{run_id}/queries/0").status_code == 404
    assert "Named people (faces)" in boss.get("/evaluation").get_data(as_text=True)
    assert boss.get(f"/evaluation/compare?a={run_id}&b={run_id}").status_code == 200


def test_merge_name_merge_and_take_a_face_out(env):
    client, token = logged_in(env, "ann")
    groups = people_by_photos(env)
    obama_id = obama(env)[0]
    biden_id = groups[frozenset({"biden_1", "biden_1_mirrored"})][0]
    astro_id = groups[frozenset({"astronaut_1", "astronaut_1_mirrored"})][0]

    # merge Biden into Obama (the target typed by its name); Obama keeps its name
    r = post(client, token, "/people/merge", person=biden_id, into="obama")
    assert r.status_code == 303
    assert any(n.startswith("Merged ") and "(2 faces) into Obama" in n for n in notices(client))
    merged = frozenset({f"obama_{i}" for i in range(1, 6)} | {"biden_1", "biden_1_mirrored"})
    assert people_by_photos(env)[merged] == (obama_id, "Obama")
    got = check_identity_map(env)  # Biden's two faces are Obama's now: their rankings are far from perfect
    assert 0.0 < got["mAP"] < 1.0 and got["n_queries"] == 9 and got["n_people"] == 2

    # naming a person with a name another has merges the two
    r = post(client, token, "/people/name", person=astro_id, name="OBAMA")
    assert r.status_code == 303
    assert any("already a person's name" in n for n in notices(client))
    everyone = merged | {"astronaut_1", "astronaut_1_mirrored"}
    assert people_by_photos(env)[everyone] == (obama_id, "OBAMA")  # the new spelling
    assert post(client, token, "/people/name", person=obama_id, name="Obama").status_code == 303
    assert notices(client) == ["Renamed OBAMA to Obama."]

    # take one astronaut face out: it stays out after clustering again
    from app.models import Face

    face_id = face_of(env, "astronaut_1_mirrored")
    r = post(client, token, "/people/remove-face", face=face_id, page="1")
    assert r.status_code == 303
    assert notices(client) == [f"Took face {face_id} out of Obama; clustering leaves it out."]
    r = post(client, token, "/people/recluster")
    assert r.status_code == 303
    assert any(n.startswith("Clustered again: ") for n in notices(client))
    with env["sessions"]() as s:
        face = s.get(Face, face_id)
        assert face.person_id is None and face.locked
    assert people_by_photos(env)[everyone - {"astronaut_1_mirrored"}] == (obama_id, "Obama")
    assert client.get("/api/people").get_json()["unassigned"] == 2  # Messi and the face taken out
    check_identity_map(env)
    person_page = client.get(f"/people/{obama_id}").get_data(as_text=True)
    assert person_page.count('class="face"') == 8 and "Search for Obama" in person_page


def face_of(env, stem: str) -> int:
    from sqlalchemy import select

    from app.models import Face, Image

    with env["sessions"]() as s:
        return s.scalar(select(Face.id).join(Image).where(Image.path.like(f"%/{stem}.jpg")))


def test_a_changed_photo_is_scanned_for_faces_again(env):
    """A changed file's face is found anew (a new face id) and joins its person by its neighbours' votes."""
    from collections import Counter

    from sqlalchemy import select

    from app.models import Face

    def person_of(stem: str):
        with env["sessions"]() as s:
            return s.scalar(select(Face.person_id).where(Face.id == face_of(env, stem)))

    before = face_of(env, "obama_2")
    change_photo(env["media"] / "obama_2.jpg")
    out = index(env["media"], env["data"])
    assert "updated 1" in out and "faces: 1 in 1 pictures" in out, out
    assert face_of(env, "obama_2") != before
    others = Counter(p for p in (person_of(f"obama_{i}") for i in (1, 3, 4, 5)) if p is not None)
    assert person_of("obama_2") == others.most_common(1)[0][0]


@pytest.mark.parametrize(("url", "form", "status", "message"), [
    ("/people/name", {"person": "abc", "name": "X"}, 400, "the person must be a number"),
    ("/people/name", {"name": "X"}, 400, "the person is missing"),
    ("/people/name", {"person": "999999", "name": "X"}, 404, "there is no person 999999"),
    ("/people/name", {"person": "PERSON", "name": "   "}, 400, "the name is empty"),
    ("/people/name", {"person": "PERSON", "name": "x" * 101}, 400, "the limit is 100"),
    ("/people/name", {"person": "PERSON", "name": "#12"}, 400, "cannot be only a number"),
    ("/people/name", {"person": "PERSON", "name": "a\x01b"}, 400, "control characters"),
    ("/people/name", {"person": "9" * 40, "name": "X"}, 400, "the person must be a number"),
    ("/people/merge", {"person": "PERSON", "into": "PERSON"}, 400, "cannot be merged into itself"),
    ("/people/merge", {"person": "PERSON", "into": ""}, 400, "is missing"),
    ("/people/merge", {"person": "PERSON", "into": "Nobody Here"}, 404, "no person is named"),
    ("/people/merge", {"person": "PERSON", "into": "#999999"}, 404, "there is no person 999999"),
    ("/people/merge", {"person": "1.5", "into": "PERSON"}, 400, "must be a number"),
    ("/people/remove-face", {"face": "999999"}, 404, "there is no face 999999"),
    ("/people/remove-face", {"face": "-3"}, 400, "the face must be a number"),
])
def test_bad_input_is_a_4xx_with_the_reason(env, url, form, status, message):
    client, token = logged_in(env, "ann")
    person = str(client.get("/api/people").get_json()["people"][0]["id"])
    form = {k: v.replace("PERSON", person) for k, v in form.items()}
    r = post(client, token, url, **form)
    assert r.status_code == status
    assert message in page_error(r)


def test_bad_requests_elsewhere(env):
    client, token = logged_in(env, "ann")
    assert client.get("/faces/999999/thumb.jpg").status_code == 404
    assert client.get("/people/999999").status_code == 404
    assert client.get("/api/people?per_page=0").status_code == 400
    assert client.get("/api/people?per_page=abc").status_code == 400
    assert client.get("/api/people?page=0").status_code == 400
    assert client.get("/people?page=abc").status_code == 200  # a bad page number shows the first page
    assert client.get("/people?page=99999").status_code == 200
    assert client.post("/people/name", data={"person": "1", "name": "X"}).status_code == 400  # no CSRF token
    assert post(client, token, "/evaluation", gt="@people").status_code == 403  # evaluations need admin


def test_login_gate_and_bearer_token(tmp_path_factory, env):
    """With search behind a login, the page, the thumbnails and the API need it too; a token works for the API."""
    from app import create_app

    application = create_app({"DATA_DIR": str(env["data"]), "MODEL_CONFIG": str(TINY_CONFIG), "DEVICE": "cpu",
                              "TESTING": True, "SEARCH_REQUIRES_LOGIN": True})
    tokens = add_users(application.extensions["sessions"])
    client = application.test_client()
    assert client.get("/people").status_code == 302
    assert client.get("/api/people").status_code == 401
    thumb = env["app"].test_client().get("/api/people").get_json()["people"][0]["thumbs"][0]
    assert client.get(thumb).status_code == 302
    r = client.get("/api/people", headers={"Authorization": f"Bearer {tokens['vic']}"})
    assert r.status_code == 200 and r.get_json()["people"]


def test_a_collection_without_faces_has_an_empty_people_page(tmp_path):
    from app import create_app

    data = tmp_path / "data"
    application = create_app({"DATA_DIR": str(data), "MODEL_CONFIG": str(TINY_CONFIG), "DEVICE": "cpu",
                              "TESTING": True, "WTF_CSRF_ENABLED": False})
    add_users(application.extensions["sessions"])
    client = application.test_client()
    assert 'id="no-people"' in client.get("/people").get_data(as_text=True)
    assert client.get("/api/people").get_json() == {"people": [], "unassigned": 0, "faces": 0, "total": 0,
                                                    "named": 0, "page": 1, "pages": 1}
    login(client, "ann")
    r = client.post("/people/recluster")
    assert r.status_code == 409 and "no faces yet" in page_error(r)
