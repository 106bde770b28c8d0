"""Annotations through the API, on SQLite always and on PostgreSQL when TEST_DATABASE_URL is set."""
from __future__ import annotations

import io
import json
import threading

import pytest

from tests.conftest import BACKENDS, PASSWORD, add_users, csrf_of, database_env, index_media, login


@pytest.fixture(scope="module", params=BACKENDS)
def env(request, tmp_path_factory, media_dir, tiny_encoder):
    from app import create_app

    data = tmp_path_factory.mktemp(f"annotations-{request.param}")
    with database_env(request.param, data) as url:
        index_media(data, url, media_dir, tiny_encoder)
        application = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True,
                                  "LOGIN_RATE_LIMIT": "1000 per minute"})
    tokens = add_users(application.extensions["sessions"])
    return {"app": application, "tokens": tokens, "backend": request.param, "url": url, "data": data}


def bearer(env, name):
    return {"Authorization": f"Bearer {env['tokens'][name]}"}


def post(client, env, name, payload):
    return client.post("/api/annotations", json=payload, headers=bearer(env, name))


KF: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _items(kf):
    """Items by '<video>/<n>' of the test media (the same frames in every collection indexed from it)."""
    for name in ("cuts_and_dissolve/1", "cuts_and_dissolve/4", "long_shot/1", "long_shot/2", "long_shot/3"):
        KF[name] = kf(name)


def I(name: str) -> str:  # noqa: E743 - reads as 'item'
    return KF[name]


def box(**change) -> dict:
    return {"item": I("cuts_and_dissolve/1"), "box": [10, 20, 50, 40], "label": "disc", "note": "first", **change}


def test_credentials_and_roles(env):
    client = env["app"].test_client()
    r = client.post("/api/annotations", json=box())
    assert r.status_code == 401 and "log in" in r.get_json()["error"]
    r = post(client, env, "vic", box())
    assert r.status_code == 403 and "annotator" in r.get_json()["error"]
    r = post(client, env, "ann", box())
    assert r.status_code == 201, r.get_json()
    record = r.get_json()
    assert record["id"] > 0 and record["box"] == [10, 20, 50, 40] and record["author"] == "ann"
    assert record["item"] == I("cuts_and_dissolve/1") and record["version"] == 1
    listed = client.get("/api/annotations?video_id=cuts_and_dissolve&label=disc&author=ann").get_json()
    assert record["id"] in [a["id"] for a in listed["annotations"]]
    again = next(a for a in listed["annotations"] if a["id"] == record["id"])
    assert again["created"] == record["created"] and record["created"].endswith("+00:00")  # one format
    assert client.get("/api/annotations?author=nobody").get_json()["count"] == 0


@pytest.mark.parametrize(("change", "status", "message"), [
    ({"box": [10, 10, -5, 20]}, 400, "positive width and height"),
    ({"box": [300, 10, 50, 20]}, 400, "lies outside the 320x180 image"),
    ({"box": [1, 2, 3]}, 400, "box must be [x, y, w, h]"),
    ({"label": "x" * 10240}, 400, "the limit is 100"),
    ({"label": "  "}, 400, "label must be a non-empty text"),
    ({"note": "n" * 3000}, 400, "the limit is 2000"),
    ({"item": "cuts_and_dissolve@99999"}, 404, "has no keyframe at frame 99999"),
    ({"item": "cuts_and_dissolve/1"}, 400, "names no item"),
    ({"item": "image:" + "0" * 40}, 404, "no image with content"),
])
def test_bad_boxes_are_refused_and_nothing_is_written(env, change, status, message):
    client = env["app"].test_client()
    before = client.get("/api/annotations").get_json()["count"]
    r = post(client, env, "ann", box(**change))
    assert r.status_code == status and message in r.get_json()["error"]
    assert client.get("/api/annotations").get_json()["count"] == before


def test_html_in_a_label_is_shown_as_text(env):
    client = env["app"].test_client()
    evil = "<script>alert(1)</script>"
    r = post(client, env, "ann", {**box(), "label": evil, "note": "<img src=x onerror=alert(2)>"})
    assert r.status_code == 201
    page = client.get("/annotations").get_data(as_text=True)
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page


def test_session_calls_need_the_csrf_token(env):
    client = env["app"].test_client()
    login(client, "ann")
    r = client.post("/api/annotations", json=box())
    assert r.status_code == 400 and "CSRF" in r.get_json()["error"]
    r = client.post("/api/annotations", json=box(), headers={"X-CSRFToken": csrf_of(client)})
    assert r.status_code == 201


def test_only_the_author_or_an_admin_may_change_a_box(env):
    client = env["app"].test_client()
    rec = post(client, env, "ann", box()).get_json()
    url = f"/api/annotations/{rec['id']}"
    r = client.patch(url, json={"label": "mine now", "version": rec["version"]}, headers=bearer(env, "bob"))
    assert r.status_code == 403 and "belongs to ann" in r.get_json()["error"]
    assert client.delete(url, headers=bearer(env, "bob")).status_code == 403
    r = client.patch(url, json={"box": [0, 0, 20, 20], "version": rec["version"]}, headers=bearer(env, "ann"))
    assert r.status_code == 200 and r.get_json()["version"] == rec["version"] + 1
    assert client.delete(url, headers=bearer(env, "boss")).status_code == 204  # admins may
    assert client.delete(url, headers=bearer(env, "boss")).status_code == 404


def test_an_edit_of_a_box_changed_meanwhile_is_refused(env):
    client = env["app"].test_client()
    rec = post(client, env, "ann", box()).get_json()
    url = f"/api/annotations/{rec['id']}"
    assert client.patch(url, json={"label": "car", "version": 1}, headers=bearer(env, "boss")).status_code == 200
    r = client.patch(url, json={"label": "truck", "version": 1}, headers=bearer(env, "ann"))
    assert r.status_code == 409 and "changed meanwhile" in r.get_json()["error"]
    listed = client.get(f"/api/annotations?item={I('cuts_and_dissolve/1')}").get_json()["annotations"]
    assert next(a for a in listed if a["id"] == rec["id"])["label"] == "car"  # not silently lost


def test_two_annotators_saving_at_once_both_keep_their_boxes(env):
    app = env["app"]
    target = box(item=I("long_shot/2"))
    results = []

    def save(name):
        results.append(post(app.test_client(), env, name, {**target, "label": f"from {name}"}).status_code)

    threads = [threading.Thread(target=save, args=(n,)) for n in ("ann", "bob") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [201] * 6
    listed = app.test_client().get(f"/api/annotations?item={I('long_shot/2')}").get_json()["annotations"]
    assert sorted(a["label"] for a in listed) == ["from ann"] * 3 + ["from bob"] * 3


def test_export_then_import_gives_the_same_annotations(env):
    client = env["app"].test_client()
    post(client, env, "bob", {"item": I("long_shot/1"), "box": [5, 6, 70, 80], "label": "export me", "note": "a,b"})
    r = client.get("/api/annotations?author=bob").get_json()["annotations"]
    assert r
    key = sorted((a["item"], tuple(a["box"]), a["label"], a["note"]) for a in r)
    for fmt, name in (("coco", "a.json"), ("csv", "a.csv")):
        exported = client.get(f"/api/annotations/export?format={fmt}&author=bob").get_data()
        for a in client.get("/api/annotations?author=bob").get_json()["annotations"]:
            assert client.delete(f"/api/annotations/{a['id']}", headers=bearer(env, "bob")).status_code == 204
        r = client.post("/api/annotations/import", data={"file": (io.BytesIO(exported), name)},
                        headers=bearer(env, "bob"), content_type="multipart/form-data")
        assert r.status_code == 201, r.get_json()
        back = client.get("/api/annotations?author=bob").get_json()["annotations"]
        assert sorted((a["item"], tuple(a["box"]), a["label"], a["note"]) for a in back) == key, fmt
    aic = json.loads(client.get("/api/annotations/export?format=aic&author=bob").get_data())
    entry = aic[I("long_shot/1")]
    assert "export me" in entry["detection_class_names"]
    i = entry["detection_class_names"].index("export me")
    assert entry["detection_boxes"][i] == pytest.approx([6 / 180, 5 / 320, 86 / 180, 75 / 320], abs=1e-6)


@pytest.mark.parametrize(("name", "data", "message"), [
    ("bad.json", b"{not json", "not a JSON file"),
    ("bad.json", b'{"images": []}', "not a COCO file"),
    ("bad.csv", b"item,x,y,w,h,label\nKF1,0,0,10,10,ok\nKF1,0,0,-1,10,bad\n",
     "row 2: box [0, 0, -1, 10] must have a positive"),
    ("old.csv", b"target,x,y,w,h,label\ncuts_and_dissolve/1,0,0,10,10,ok\n", "export it again from this version"),
    ("bad.txt", b"x", "upload a COCO .json or a .csv"),
])
def test_a_malformed_import_writes_nothing(env, name, data, message):
    client = env["app"].test_client()
    before = client.get("/api/annotations").get_json()["count"]
    data = data.replace(b"KF1", I("cuts_and_dissolve/1").encode())
    r = client.post("/api/annotations/import", data={"file": (io.BytesIO(data), name)},
                    headers=bearer(env, "ann"), content_type="multipart/form-data")
    assert r.status_code == 400 and message in r.get_json()["error"]
    assert client.get("/api/annotations").get_json()["count"] == before


def test_tokens_can_be_revoked(env):
    from app import accounts

    client = env["app"].test_client()
    sessions = env["app"].extensions["sessions"]
    with sessions() as s:
        token = accounts.issue_token(s, "bob")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/annotations", json=box(), headers=headers).status_code == 201
    with sessions() as s:
        accounts.revoke_token(s, "bob")
    assert client.post("/api/annotations", json=box(), headers=headers).status_code == 401
    with sessions() as s:
        env["tokens"]["bob"] = accounts.issue_token(s, "bob")


def test_label_page_and_crops(env):
    client = env["app"].test_client()
    rec = post(client, env, "ann", {**box(), "label": "crop test"}).get_json()
    page = client.get("/labels/crop%20test").get_data(as_text=True)
    assert f"/annotations/{rec['id']}/crop.jpg" in page
    crop = client.get(f"/annotations/{rec['id']}/crop.jpg")
    from PIL import Image

    assert crop.status_code == 200 and Image.open(io.BytesIO(crop.data)).size == (50, 40)
    counts = client.get("/annotations?label=crop%20test").get_data(as_text=True)
    assert "crop test" in counts


def test_wrong_password_and_rate_limit(env, tiny_encoder):
    from app import create_app

    application = create_app({"DATA_DIR": str(env["data"]), "ENCODER": tiny_encoder, "TESTING": True,
                              "DATABASE_URL": env["url"], "LOGIN_RATE_LIMIT": "3 per minute"})
    client = application.test_client()
    assert login(client, "ann", "wrong password").status_code == 401
    login(client, "ann", "wrong password")
    login(client, "ann", "wrong password")
    r = login(client, "ann", PASSWORD)
    assert r.status_code == 429 and "Too many attempts" in r.get_data(as_text=True)


def test_search_can_require_login(env, tiny_encoder):
    from app import create_app

    application = create_app({"DATA_DIR": str(env["data"]), "ENCODER": tiny_encoder, "TESTING": True,
                              "DATABASE_URL": env["url"], "SEARCH_REQUIRES_LOGIN": True,
                              "LOGIN_RATE_LIMIT": "1000 per minute"})
    client = application.test_client()
    assert client.get("/api/search?q=a").status_code == 401
    assert client.get("/api/search?q=a", headers=bearer(env, "vic")).status_code == 200


def test_search_can_be_limited_to_frames_annotated_with_a_label(env):
    client = env["app"].test_client()
    for frame in (I("cuts_and_dissolve/4"), I("long_shot/2")):
        assert post(client, env, "bob", {"item": frame, "box": [0, 0, 30, 30], "label": "only these"}) \
            .status_code == 201
    results = client.get("/api/search?q=anything&k=50&label=only%20these").get_json()["results"]
    assert sorted(r["item"] for r in results) == sorted([I("cuts_and_dissolve/4"), I("long_shot/2")])
    assert client.get("/api/search?q=anything&label=no%20such%20label").get_json()["results"] == []
