"""Hostile requests against a served collection (findings 2, 4, 5, 6, 8, 9, 10, 11, 14 of the attack run,
and the cases that held: CSRF, XSS, IDOR), on SQLite and on PostgreSQL when TEST_DATABASE_URL is set."""
from __future__ import annotations

import io
import json
import re

import pytest

from tests.conftest import PASSWORD, csrf_of, login
from tests.helpers import run_together
from tests.security.conftest import bearer

BOX = {"item": "", "box": [10, 20, 50, 40], "label": "disc", "note": ""}
KF: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _items(kf):
    """Items of the test media's keyframes (the same frames in every collection indexed from it)."""
    KF.update({name: kf(name) for name in ("cuts_and_dissolve/1", "long_shot/1", "long_shot/2")})
    BOX["item"] = KF["cuts_and_dissolve/1"]


def _create(client, env, name="ann", **change):
    r = client.post("/api/annotations", json={**BOX, **change}, headers=bearer(env, name))
    assert r.status_code == 201, r.get_json()
    return r.get_json()


# -- 2: redirects after login stay on this site -------------------------------------------------------
@pytest.mark.parametrize("target", ["/%09/evil.example/phish", "/%0A/evil.example", "//evil.example/x",
                                    "/%5Cevil.example", "https://evil.example/", "/%20/evil.example",
                                    "javascript:alert(1)", "/\\/evil.example"])
def test_login_never_redirects_off_site(hostile, target):
    client = hostile["app"].test_client()
    token = csrf_of(client)
    r = client.post(f"/login?next={target}", data={"name": "ann", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 302
    location = r.headers["Location"]
    assert location.startswith("/") and not location.startswith("//") and "evil" not in location, location


def test_login_keeps_a_local_next(hostile):
    client = hostile["app"].test_client()
    token = csrf_of(client)
    r = client.post("/login?next=/annotations?label=disc", data={"name": "ann", "password": PASSWORD,
                                                                  "csrf_token": token})
    assert r.headers["Location"] == "/annotations?label=disc"


# -- 4: CSV exports cannot run formulas ---------------------------------------------------------------
def test_csv_export_escapes_formulas_and_imports_back(hostile):
    client = hostile["app"].test_client()
    evil = "=HYPERLINK(\"http://evil.example\",\"x\")"
    made = _create(client, hostile, label="+cmd|' /C calc'!A0", note=evil)
    text = client.get("/api/annotations/export?format=csv").get_data(as_text=True)
    line = next(row for row in text.splitlines() if str(made["box"][0]) in row and "calc" in row)
    cells = next(iter(__import__("csv").reader([line])))
    assert cells[5].startswith("'+") and cells[6].startswith("'=")
    for cell in cells:
        assert not cell.startswith(("=", "+", "-", "@"))
    from app.annotation_io import records_from_csv

    records = records_from_csv(text.encode())
    assert any(r["label"] == "+cmd|' /C calc'!A0" and r["note"] == evil for r in records)


# -- 5: ids are never reused --------------------------------------------------------------------------
def test_a_deleted_box_id_is_never_given_again(hostile):
    client = hostile["app"].test_client()
    first = _create(client, hostile, label="short-lived")
    r = client.delete(f"/api/annotations/{first['id']}?version={first['version']}", headers=bearer(hostile, "ann"))
    assert r.status_code == 204
    second = _create(client, hostile, "bob", label="newcomer")
    assert second["id"] > first["id"]
    stale = client.patch(f"/api/annotations/{first['id']}", json={"version": 1, "label": "hijack"},
                         headers=bearer(hostile, "ann"))
    assert stale.status_code == 404
    again = client.get("/api/annotations?author=bob&label=newcomer").get_json()["annotations"]
    assert [a["label"] for a in again] == ["newcomer"]


# -- 6: concurrent edits are 200 once, 409 otherwise; one edit is one version step ----------------------
def test_concurrent_patches_with_one_version_give_one_success_and_409s(hostile):
    client = hostile["app"].test_client()
    box = _create(client, hostile, label="contested")
    statuses: list[int] = []

    def patch(i: int) -> None:
        c = hostile["app"].test_client()
        r = c.patch(f"/api/annotations/{box['id']}", json={"version": box["version"], "box": [10 + i, 20, 50, 40],
                                                            "label": f"contested-{i % 3}"},
                    headers=bearer(hostile, "ann"))
        statuses.append(r.status_code)

    run_together(patch, 24)
    assert set(statuses) <= {200, 409}, statuses
    assert statuses.count(200) == 1
    final = client.get("/api/annotations?author=ann").get_json()["annotations"]
    assert next(a for a in final if a["id"] == box["id"])["version"] == box["version"] + 1


def test_one_patch_changing_box_and_adding_a_label_is_one_version_step(hostile):
    client = hostile["app"].test_client()
    box = _create(client, hostile, label="before")
    r = client.patch(f"/api/annotations/{box['id']}", json={"version": box["version"], "box": [12, 22, 40, 30],
                                                            "label": "a brand new label"},
                     headers=bearer(hostile, "ann"))
    assert r.status_code == 200 and r.get_json()["version"] == box["version"] + 1


# -- 8: uploads cannot blow up memory --------------------------------------------------------------------
def test_a_tiny_png_declaring_a_huge_picture_is_refused_before_decoding(hostile):
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    width = height = 6300
    raw = zlib.compress(b"\x00" * (width + 1) * 64)  # a few rows; the header is what matters
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big")
                                         + bytes([8, 0, 0, 0, 0])) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    assert len(png) < 40_000
    r = hostile["app"].test_client().post("/api/search", data={"image": (io.BytesIO(png), "bomb.png")})
    assert r.status_code == 400 and "6300x6300" in r.get_json()["error"]


def test_decodes_are_capped():
    from app import uploads

    assert uploads.DECODE_SLOTS <= 2 and uploads.MAX_PIXELS <= 25_000_000


# -- 9: sessions end with logout and with a new password -------------------------------------------------
def _logged_in_cookie(app, name: str) -> tuple[object, str]:
    client = app.test_client()
    login(client, name)
    cookie = client.get_cookie("session")
    assert cookie is not None
    return client, cookie.value


def _who(app, cookie_value: str) -> int:
    other = app.test_client()
    other.set_cookie("session", cookie_value)
    return other.get("/api/annotations/import", headers={"Accept": "application/json"}).status_code


def test_a_saved_session_cookie_stops_working_after_logout(hostile):
    app = hostile["app"]
    client, saved = _logged_in_cookie(app, "bob")
    page = client.get("/").get_data(as_text=True)
    assert 'id="who"' in page
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    client.post("/logout", data={"csrf_token": token})
    replay = app.test_client()
    replay.set_cookie("session", saved)
    assert 'id="who"' not in replay.get("/").get_data(as_text=True)


def test_a_saved_session_cookie_stops_working_after_a_password_change(hostile):
    from app import accounts

    app = hostile["app"]
    _, saved = _logged_in_cookie(app, "vic")
    replay = app.test_client()
    replay.set_cookie("session", saved)
    assert 'id="who"' in replay.get("/").get_data(as_text=True)
    with app.extensions["sessions"]() as session:
        accounts.set_password(session, "vic", PASSWORD + " changed")
        accounts.set_password(session, "vic", PASSWORD)
    assert 'id="who"' not in replay.get("/").get_data(as_text=True)


# -- 10: inputs that used to give a 500 -------------------------------------------------------------------
HUGE = "99999999999999999999999"


def _deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_no_input_gives_a_server_error(hostile):
    app = hostile["app"]
    client = app.test_client()
    ann = bearer(hostile, "ann")
    box = _create(client, hostile, label="target")
    bad_boxes = ["Infinity", "1e400", str(10**400), "NaN", "-Infinity"]
    responses = []
    for value in bad_boxes:
        body = '{"item": "' + KF["cuts_and_dissolve/1"] + '", "label": "x", "box": [' + value + ", 1, 5, 5]}"
        responses.append(client.post("/api/annotations", data=body, content_type="application/json", headers=ann))
        responses.append(client.patch(f"/api/annotations/{box['id']}", content_type="application/json", headers=ann,
                                      data='{"version": 1, "box": [1, 1, ' + value + ", 5]}"))
        responses.append(client.get(f"/api/search?like={KF['cuts_and_dissolve/1']}&box={value},0,10,10"))
        responses.append(client.post("/api/search", data={"region_of": KF["cuts_and_dissolve/1"],
                                                           "box": f"0,0,{value},10"}))
    for odd in ("%C2%B2", "%D9%A5", "9" * 25, "9" * 5000):  # '²' and '٥' are digits to str.isdigit
        responses.append(client.get(f"/api/search?region_of=cuts_and_dissolve/{odd}"))
        responses.append(client.get(f"/api/search?region_of=cuts_and_dissolve@{odd}"))
        responses.append(client.get(f"/api/search?region_of=image:{odd}"))
        responses.append(client.get(f"/api/annotations?item=cuts_and_dissolve@{odd}"))
        responses.append(client.get(f"/evaluation/compare?a={odd}&b=1"))
        responses.append(client.delete(f"/api/annotations/{box['id']}?version={odd}", headers=ann))
    for target in ("cuts_and_dissolve@²", "cuts_and_dissolve@" + "9" * 25, "image:" + "f" * 5000):
        responses.append(client.post("/api/annotations", json={**BOX, "item": target}, headers=ann))
        responses.append(client.post("/api/annotations/import", headers=ann, data={"file": (io.BytesIO(
            f"item,x,y,w,h,label\n{target},0,0,5,5,x\n".encode()), "odd.csv")}))
    responses.append(client.patch(f"/api/annotations/{box['id']}", json={"version": "²"}, headers=ann))
    for field in ("label", "note"):  # lone surrogates
        responses.append(client.post("/api/annotations", data='{"item": "' + KF["cuts_and_dissolve/1"] + '", "box": '
                                     '[1, 1, 5, 5], "label": "x", "' + field + '": "\\ud800"}',
                                     content_type="application/json", headers=ann))
    for items in ("5", "null", "{}"):
        doc = '{"images": [], "categories": [], "annotations": ' + items + "}"
        responses.append(client.post("/api/annotations/import", headers=ann,
                                     data={"file": (io.BytesIO(doc.encode()), "odd.json")}))
    for path in (f"/item/image:{HUGE}/picture", f"/item/cuts_and_dissolve@{HUGE}/picture",
                 f"/item/cuts_and_dissolve@{HUGE}", f"/api/items/cuts_and_dissolve@{HUGE}",
                 f"/annotate/cuts_and_dissolve@{HUGE}", f"/annotate/image:{HUGE}", f"/annotations/{HUGE}/crop.jpg",
                 f"/evaluation/runs/{HUGE}",
                 f"/evaluation/runs/{HUGE}.json", f"/evaluation/runs/{HUGE}/progress",
                 f"/evaluation/runs/1/queries/{HUGE}", f"/?like=image:{HUGE}", f"/api/search?like=image:{HUGE}",
                 f"/api/search?like=cuts_and_dissolve@{HUGE}"):
        responses.append(client.get(path))
    responses.append(client.patch(f"/api/annotations/{HUGE}", json={"version": 1}, headers=ann))
    responses.append(client.delete(f"/api/annotations/{HUGE}", headers=ann))
    responses.append(client.post("/api/annotations", data=_deep_json(10_000), content_type="application/json",
                                 headers=ann))
    k1 = KF["cuts_and_dissolve/1"]
    for name, content in (("inf.csv", f"item,x,y,w,h,label\n{k1},inf,0,5,5,x\n"),
                          ("big.csv", f"item,x,y,w,h,label,note\n{k1},0,0,5,5,x," + "n" * 200_000),
                          ("nan.csv", f"item,x,y,w,h,label\n{k1},nan,0,5,5,x\n")):
        responses.append(client.post("/api/annotations/import", headers=ann,
                                     data={"file": (io.BytesIO(content.encode()), name)}))
    coco = {"images": [{"id": 1, "file_name": "x.jpg", "item": k1}], "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [float("inf"), 0, 5, 5]}]}
    responses.append(client.post("/api/annotations/import", headers=ann,
                                 data={"file": (io.BytesIO(json.dumps(coco).encode()), "c.json")}))
    responses.append(client.post("/api/annotations/import", headers=ann,
                                 data={"file": (io.BytesIO(_deep_json(10_000)), "deep.json")}))
    assert len(responses) >= 27
    for r in responses:
        assert r.status_code < 500, (r.request.path, r.status_code, r.get_data(as_text=True)[:300])
        if r.status_code >= 400 and r.is_json:
            assert r.get_json()["error"]


# -- 11: the login costs the same for unknown names --------------------------------------------------------
def test_login_does_one_password_hash_whether_or_not_the_name_exists(hostile, monkeypatch):
    from werkzeug import security

    from app import accounts

    calls = {"check": 0, "generate": 0}
    real_check, real_generate = security.check_password_hash, security.generate_password_hash

    def check(*a, **k):
        calls["check"] += 1
        return real_check(*a, **k)

    def generate(*a, **k):
        calls["generate"] += 1
        return real_generate(*a, **k)

    monkeypatch.setattr(accounts, "check_password_hash", check)
    monkeypatch.setattr(accounts, "generate_password_hash", generate)
    with hostile["app"].extensions["sessions"]() as session:
        accounts.authenticate(session, "nobody-at-all", "x")  # warms the dummy hash
        for name in ("nobody-at-all", "ann"):
            calls.update(check=0, generate=0)
            assert accounts.authenticate(session, name, "wrong password") is None
            assert calls == {"check": 1, "generate": 0}, (name, calls)


# -- 14: headers, passwords, names, CSRF with a bogus bearer, strict versions ------------------------------
def test_pages_carry_security_headers(hostile):
    r = hostile["app"].test_client().get("/")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("password", [" " * 8, "        x", "aaaaaaaaaaaa", "ab ab ab ab", "password", "12345678",
                                      "qwertyui", "abcdefgh", "Password", "weakling99"])
def test_weak_passwords_are_refused(hostile, password):
    from app import accounts

    with hostile["app"].extensions["sessions"]() as session, pytest.raises(accounts.AccountError):
        accounts.add(session, "weakling", password, "viewer")


def test_user_names_are_unique_without_regard_to_case(hostile):
    from app import accounts

    with hostile["app"].extensions["sessions"]() as session:
        with pytest.raises(accounts.AccountError, match="already exists"):
            accounts.add(session, "ANN", PASSWORD, "admin")
        assert accounts.find(session, "ANN").name == "ann"


def test_a_bogus_bearer_header_does_not_skip_csrf_for_a_cookie(hostile):
    app = hostile["app"]
    client = app.test_client()
    login(client, "ann")
    r = client.post("/api/annotations", json=BOX, headers={"Authorization": "Bearer x"})
    assert r.status_code == 400 and "CSRF" in r.get_json()["error"]
    token = csrf_of(client)
    r = client.post("/api/annotations", json=BOX, headers={"X-CSRFToken": token})
    assert r.status_code == 201


def test_versions_are_whole_numbers_and_checked_on_delete(hostile):
    client = hostile["app"].test_client()
    box = _create(client, hostile, label="versioned")
    for bad in ("abc", 1.5, True, [1], "1e3"):
        r = client.patch(f"/api/annotations/{box['id']}", json={"version": bad, "label": "y"},
                         headers=bearer(hostile, "ann"))
        assert r.status_code == 400 and "whole number" in r.get_json()["error"], bad
    r = client.patch(f"/api/annotations/{box['id']}", json={"version": str(box["version"]), "label": "y"},
                     headers=bearer(hostile, "ann"))
    assert r.status_code == 200  # "1" means version 1, not a misleading 409
    r = client.delete(f"/api/annotations/{box['id']}?version=abc", headers=bearer(hostile, "ann"))
    assert r.status_code == 400
    assert any(a["id"] == box["id"] for a in client.get("/api/annotations?author=ann").get_json()["annotations"])


# -- cases that held: CSRF on forms, XSS in labels, IDOR on boxes -----------------------------------------
def test_forms_without_a_csrf_token_are_refused(hostile):
    r = hostile["app"].test_client().post("/login", data={"name": "ann", "password": PASSWORD})
    assert r.status_code == 400 and "CSRF" in r.get_data(as_text=True)


def test_labels_are_shown_as_text_not_markup(hostile):
    client = hostile["app"].test_client()
    _create(client, hostile, label="<script>alert(1)</script>")
    page = client.get("/annotations").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_another_annotators_box_cannot_be_changed(hostile):
    client = hostile["app"].test_client()
    box = _create(client, hostile, label="mine")
    r = client.patch(f"/api/annotations/{box['id']}", json={"version": box["version"], "label": "theirs"},
                     headers=bearer(hostile, "bob"))
    assert r.status_code == 403
    r = client.delete(f"/api/annotations/{box['id']}", headers=bearer(hostile, "bob"))
    assert r.status_code == 403


def test_a_removed_users_cookie_never_belongs_to_the_next_user(hostile):
    """Ids are never reused, so a cookie kept from a removed account cannot become a new admin's."""
    from app import accounts

    app = hostile["app"]
    with app.extensions["sessions"]() as session:
        accounts.add(session, "shortlived", PASSWORD, "viewer")
    _, saved = _logged_in_cookie(app, "shortlived")
    with app.extensions["sessions"]() as session:
        accounts.remove(session, "shortlived")
        accounts.add(session, "newadmin", PASSWORD, "admin")
    replay = app.test_client()
    replay.set_cookie("session", saved)
    page = replay.get("/").get_data(as_text=True)
    assert 'id="who"' not in page and "newadmin" not in page


def test_a_damaged_keyframe_is_a_clear_4xx(hostile):
    from app.paths import DataLayout

    jpg = DataLayout.from_data_dir(hostile["data"]).keyframes_dir / "long_shot" / "002.jpg"
    original = jpg.read_bytes()
    client = hostile["app"].test_client()
    try:
        jpg.write_bytes(original[:100])
        r = client.get(f"/api/search?region_of={KF['long_shot/2']}&box=0,0,10,10")
        assert r.status_code == 400 and "damaged" in r.get_json()["error"]
        r = client.post("/api/annotations", json={**BOX, "item": KF["long_shot/2"]}, headers=bearer(hostile, "ann"))
        assert r.status_code == 404 and "damaged" in r.get_json()["error"]
    finally:
        jpg.write_bytes(original)


def test_a_hard_link_in_the_data_dir_is_not_served(hostile):
    import os

    from app.paths import DataLayout

    layout = DataLayout.from_data_dir(hostile["data"])
    jpg = layout.keyframes_dir / "long_shot" / "001.jpg"
    backup = jpg.with_name("001.bak")
    os.replace(jpg, backup)
    os.link(layout.instance_dir / "secret_key", jpg)
    try:
        r = hostile["app"].test_client().get(f"/item/{KF['long_shot/1']}/picture")
        assert r.status_code == 404 and (layout.instance_dir / "secret_key").read_bytes() not in r.data
    finally:
        jpg.unlink()
        os.replace(backup, jpg)


def test_an_empty_secret_key_is_replaced(tmp_path, tiny_encoder):
    from app import create_app

    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / "secret_key").write_text("  \n")
    app = create_app({"DATA_DIR": str(tmp_path), "ENCODER": tiny_encoder, "TESTING": True})
    assert len(app.config["SECRET_KEY"]) >= 32
    assert app.test_client().get("/login").status_code == 200


def test_generated_passwords_always_pass_the_rule():
    """The demo's admin password is drawn at random; a draw of letters only must never reach the rule."""
    from app import accounts

    for _ in range(2000):
        accounts._check_password(accounts.random_password("demo"), "demo")


def test_attack_on_items_and_imports_of_the_stable_identities(hostile):
    """From the attack on ItemRef and box anchoring: huge numbers in COCO sizes, Unicode digits in ids, other
    spellings of one item, sizes that are not sizes."""
    client = hostile["app"].test_client()
    ann = bearer(hostile, "ann")
    k1 = KF["cuts_and_dissolve/1"]
    huge = "9" * 5000
    docs = [
        '{"images": [{"id": 1, "item": "' + k1 + '", "width": 320, "height": 180, "source_width": ' + "1" + "0" * 400
        + ', "source_height": 180}], "categories": [{"id": 1, "name": "x"}], '
        '"annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}',
        '{"images": [], "categories": [], "annotations": [], "x": ' + huge + "}",
        '{"images": [{"id": 1, "item": "' + k1 + '", "width": 0, "height": 180, "source_width": 320, '
        '"source_height": 180}], "categories": [{"id": 1, "name": "x"}], '
        '"annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}',
        '{"images": [{"id": 1, "file_name": "keyframes/cuts_and_dissolve/001.jpg", "width": -320, "height": -180}], '
        '"categories": [{"id": 1, "name": "x"}], "annotations": [{"image_id": 1, "category_id": 1, '
        '"bbox": [-1, -1, -5, -5]}]}',
    ]
    before = client.get("/api/annotations").get_json()["count"]
    for doc in docs:
        r = client.post("/api/annotations/import", headers=ann, data={"file": (io.BytesIO(doc.encode()), "a.json")})
        assert r.status_code == 400 and r.get_json()["error"], r.get_data(as_text=True)[:300]
    assert client.get("/api/annotations").get_json()["count"] == before
    box = _create(client, hostile, label="unicode id")
    arabic_digits = "".join(chr(0x0660 + int(d)) for d in str(box["id"]))  # whatever the id, every digit another script
    assert client.delete(f"/api/annotations/{arabic_digits}", headers=ann).status_code in (404, 405)
    assert client.post("/api/annotations", json={**BOX, "box": ["\uff11", 1, 5, 5]}, headers=ann).status_code == 400
    video, _, frame = k1.partition("@")
    for other, in_url in ((f"{video}@0{frame}", f"{video}@0{frame}"), (f" {k1}", f"%20{k1}"), (f"{k1}\t", f"{k1}%09")):
        assert client.get(f"/api/items/{in_url}").status_code == 404, other
        assert client.post("/api/annotations", json={**BOX, "item": other}, headers=ann).status_code == 400
    assert client.get(f"/api/items/{k1}").status_code == 200
