"""Machine boxes with a random-weight detector (and the tiny random-weight CLIP): accept (a human box is made from the
detection and linked), reject, restore, who may, re-detection keeps every human box, and /categories counts.

Random weights give up to 30 meaningless boxes per picture: enough to exercise the pipeline, nothing about quality.
"""
from __future__ import annotations

import io
import math
import re
import shutil
from html.parser import HTMLParser

import pytest
from flask import url_for
from PIL import Image
from sqlalchemy import delete, select

import offline
from app.categories import default_hierarchy, descendants
from app.models import Annotation, Detection, Keyframe, Video
from app.models import Image as ImageRow
from tests.conftest import add_users, csrf_of, db_url, index_args, login

DETECTOR_ARGS = ["--detector-weights", "none", "--object-threshold", "0", "--no-faces", "--no-concepts"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, media_dir, tiny_encoder):
    from app import create_app

    root = tmp_path_factory.mktemp("detections-random-weights")
    if not db_url(root / "data").startswith("sqlite"):
        pytest.skip("runs on its own SQLite collection")
    media = root / "media"
    (media / "images").mkdir(parents=True)
    shutil.copy(media_dir / "videos" / "long_shot.webm", media / "long_shot.webm")
    for jpg in sorted((media_dir / "images").glob("*.jpg"))[:2]:
        shutil.copy(jpg, media / "images" / jpg.name)
    data = root / "data"
    args = [*index_args(data), *DETECTOR_ARGS]
    assert offline.main(["index", str(media), *args]) == 0
    app = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True,
                      "LOGIN_RATE_LIMIT": "1000 per minute"})
    tokens = add_users(app.extensions["sessions"])
    return {"app": app, "tokens": tokens, "data": data, "media": media, "args": args}


def bearer(env, name: str) -> dict:
    return {"Authorization": f"Bearer {env['tokens'][name]}"}


def rows(env, *where) -> list[Detection]:
    with env["app"].extensions["sessions"]() as s:
        return list(s.scalars(select(Detection).where(*where).order_by(Detection.id)))


def frame_items(env) -> list[str]:
    with env["app"].extensions["sessions"]() as s:
        return [f"long_shot@{f}" for f in s.scalars(select(Keyframe.frame_idx).join(Video)
                                                     .where(Video.video_id == "long_shot").order_by(Keyframe.n))]


def listed(client, item: str) -> list[dict]:
    r = client.get(f"/api/detections?item={item}")
    assert r.status_code == 200, r.get_json()
    return r.get_json()["detections"]


def pick(env, n: int = 0, item: str | None = None) -> dict:
    """A 'new' machine box of the video's first keyframe not used by another test."""
    item = item or frame_items(env)[0]
    fresh = [d for d in listed(env["app"].test_client(), item) if d["status"] == "new"]
    assert len(fresh) > n, "the random-weight detector found too few boxes"
    return fresh[n]


def whole(box: list[float], width: int = 320, height: int = 180) -> list[int]:
    """Independently: a float box rounded to whole pixels inside the picture."""
    x, y, w, h = box
    left, top = min(max(0, math.floor(x + .5)), width - 1), min(max(0, math.floor(y + .5)), height - 1)
    right = min(max(left + 1, math.floor(x + w + .5)), width)
    bottom = min(max(top + 1, math.floor(y + h + .5)), height)
    return [left, top, right - left, bottom - top]


def test_random_weights_machine_boxes_are_stored_beside_no_human_boxes(env):
    client = env["app"].test_client()
    items = frame_items(env)
    assert len(items) >= 2
    found = listed(client, items[0])
    assert 1 <= len(found) <= 30
    for d in found:
        x, y, w, h = d["box"]
        assert d["machine"] is True and d["status"] == "new" and d["model"].endswith(":none")
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 320.5 and y + h <= 180.5  # the video's pixels
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
    with env["app"].extensions["sessions"]() as s:
        digest = s.scalar(select(ImageRow.content_hash).order_by(ImageRow.id))
    assert listed(client, f"image:{digest}"), "images get machine boxes too"
    assert client.get("/api/detections").status_code == 400
    assert client.get("/api/detections?item=long_shot@999999").status_code == 404
    assert client.get("/api/detections?item=nonsense").status_code == 400


def test_random_weights_accept_makes_a_linked_human_box_and_a_second_accept_is_refused(env):
    client = env["app"].test_client()
    d = pick(env, 0)
    r = client.post(f"/api/detections/{d['id']}/accept", headers=bearer(env, "ann"))
    assert r.status_code == 201, r.get_json()
    out = r.get_json()
    a = out["annotation"]
    stored = rows(env, Detection.id == d["id"])[0].box  # the detection's own (float) box
    assert a["label"] == d["label"] and a["box"] == whole(list(stored)) and a["author"] == "ann"
    assert a["item"] == d["item"]
    assert out["detection"]["status"] == "accepted" and out["detection"]["annotation_id"] == a["id"]
    (row,) = rows(env, Detection.id == d["id"])
    assert (row.status, row.annotation_id) == ("accepted", a["id"])
    humans = client.get(f"/api/annotations?item={d['item']}").get_json()["annotations"]
    assert [h["id"] for h in humans if h["id"] == a["id"]] == [a["id"]]
    again = client.post(f"/api/detections/{d['id']}/accept", headers=bearer(env, "bob"))
    assert again.status_code == 409 and f"box {a['id']}" in again.get_json()["error"]
    assert client.post(f"/api/detections/{d['id']}/reject", headers=bearer(env, "bob")).status_code == 409
    assert len(client.get(f"/api/annotations?item={d['item']}").get_json()["annotations"]) == len(humans)
    # corrected as any human box: the detection keeps its own box, the link stays
    r = client.patch(f"/api/annotations/{a['id']}", json={"box": [1, 2, 30, 40], "label": "my label",
                                                           "version": a["version"]}, headers=bearer(env, "ann"))
    assert r.status_code == 200
    (row,) = rows(env, Detection.id == d["id"])
    assert row.annotation_id == a["id"] and row.box == stored
    listed_again = {x["id"]: x for x in listed(client, d["item"])}
    assert listed_again[d["id"]]["status"] == "accepted"


def test_random_weights_deleting_the_accepted_box_frees_the_detection(env):
    client = env["app"].test_client()
    d = pick(env, 1)
    a = client.post(f"/api/detections/{d['id']}/accept", headers=bearer(env, "bob")).get_json()["annotation"]
    assert client.delete(f"/api/annotations/{a['id']}", headers=bearer(env, "bob")).status_code == 204
    assert {x["id"]: x for x in listed(client, d["item"])}[d["id"]]["status"] == "new"
    r = client.post(f"/api/detections/{d['id']}/accept", headers=bearer(env, "bob"))
    assert r.status_code == 201 and r.get_json()["annotation"]["id"] != a["id"]


def test_random_weights_reject_and_restore(env):
    client = env["app"].test_client()
    d = pick(env, 2)
    r = client.post(f"/api/detections/{d['id']}/reject", headers=bearer(env, "ann"))
    assert r.status_code == 200 and r.get_json()["detection"]["status"] == "rejected"
    assert {x["id"]: x for x in listed(client, d["item"])}[d["id"]]["status"] == "rejected"
    assert rows(env, Detection.id == d["id"])[0].status == "rejected"
    r = client.post(f"/api/detections/{d['id']}/restore", headers=bearer(env, "boss"))
    assert r.status_code == 200 and r.get_json()["detection"]["status"] == "new"
    assert rows(env, Detection.id == d["id"])[0].status == "new"
    # a rejected one may still be accepted
    client.post(f"/api/detections/{d['id']}/reject", headers=bearer(env, "ann"))
    assert client.post(f"/api/detections/{d['id']}/accept", headers=bearer(env, "ann")).status_code == 201


def test_random_weights_who_may_and_bad_ids(env):
    client = env["app"].test_client()
    d = pick(env, 3)
    for action in ("accept", "reject", "restore"):
        url = f"/api/detections/{d['id']}/{action}"
        assert client.post(url).status_code == 401
        r = client.post(url, headers=bearer(env, "vic"))
        assert r.status_code == 403 and "annotator" in r.get_json()["error"]
        r = client.post(f"/api/detections/987654321/{action}", headers=bearer(env, "ann"))
        assert r.status_code == 404 and "no detection 987654321" in r.get_json()["error"]
    assert client.post("/api/detections/99999999999999999999999/accept", headers=bearer(env, "ann")).status_code == 404
    assert rows(env, Detection.id == d["id"])[0].status == "new"  # nothing changed


def test_random_weights_session_calls_need_the_csrf_token(env):
    client = env["app"].test_client()
    login(client, "ann")
    d = pick(env, 4)
    r = client.post(f"/api/detections/{d['id']}/reject")
    assert r.status_code == 400 and "CSRF" in r.get_json()["error"]
    assert rows(env, Detection.id == d["id"])[0].status == "new"
    r = client.post(f"/api/detections/{d['id']}/reject", headers={"X-CSRFToken": csrf_of(client)})
    assert r.status_code == 200
    client.post(f"/api/detections/{d['id']}/restore", headers={"X-CSRFToken": csrf_of(client)})


def test_random_weights_the_annotation_page_carries_the_machine_boxes(env):
    client = env["app"].test_client()
    login(client, "ann")
    item = frame_items(env)[1]
    page = client.get(f"/annotate/{item}").get_data(as_text=True)
    assert 'id="machine-list"' in page and "machine-made" in page
    live = [d for d in listed(client, item) if d["status"] != "rejected"]
    assert f'<span id="machine-count">{len(live)}</span>' in page
    assert '"detections_api": "/api/detections"' in page


def test_random_weights_crops_and_the_login_gate(env, tiny_encoder):
    from app import create_app

    client = env["app"].test_client()
    d = pick(env, 0, frame_items(env)[1])
    r = client.get(f"/detections/{d['id']}/crop.jpg")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    Image.open(io.BytesIO(r.data)).verify()
    assert client.get("/detections/987654321/crop.jpg").status_code == 404
    gated = create_app({"DATA_DIR": str(env["data"]), "ENCODER": tiny_encoder, "TESTING": True,
                        "SEARCH_REQUIRES_LOGIN": True}).test_client()
    assert gated.get(f"/detections/{d['id']}/crop.jpg").status_code == 302
    assert gated.get("/categories").status_code == 302
    assert gated.get(f"/api/detections?item={d['item']}").status_code == 401


class _Nodes(HTMLParser):
    """The categories page's nodes: name -> (count, total), and each node's sample crop ids."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, tuple[int, int]] = {}
        self.samples: dict[str, list[int]] = {}  # a subtree's best (a leaf's own)
        self.own: dict[str, list[int]] = {}  # a category's own label's best, shown while it is open
        self.links: dict[str, str] = {}
        self._stack: list[str] = []
        self._depth: list[int] = []
        self._level = 0
        self._kind = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "li":
            self._level += 1
            if "data-name" in a:
                self.nodes[a["data-name"]] = (int(a["data-count"]), int(a["data-total"]))
                self._stack.append(a["data-name"])
                self._depth.append(self._level)
        if tag == "div" and "data-samples" in a:
            self._kind = a["data-samples"]
        m = re.fullmatch(r"/detections/(\d+)/crop\.jpg", a.get("src") or "")
        if tag == "img" and m and self._stack:
            into = self.samples if self._kind == "subtree" else self.own
            into.setdefault(self._stack[-1], []).append(int(m.group(1)))
        if tag == "a" and "cat-name" in (a.get("class") or "") and self._stack:
            self.links[self._stack[-1]] = a["href"]

    def handle_endtag(self, tag):
        if tag == "li":
            if self._depth and self._depth[-1] == self._level:
                self._depth.pop()
                self._stack.pop()
            self._level -= 1


def test_random_weights_categories_page_counts_equal_the_detection_rows(env):
    client = env["app"].test_client()
    # a rejected one is left out of the counts
    rejected = pick(env, 5)
    assert client.post(f"/api/detections/{rejected['id']}/reject", headers=bearer(env, "ann")).status_code == 200
    # random weights name few classes: a few more rows, under vehicle, and one label outside the hierarchy (a root)
    with env["app"].extensions["sessions"]() as s:
        kf = s.scalar(select(Keyframe.id).join(Video).where(Video.video_id == "long_shot").order_by(Keyframe.n.desc()))
        extra = [Detection(keyframe_id=kf, label=label, score=score, x=10, y=10, w=50, h=40, model="test")
                 for label, score in (("car", .9), ("truck", .8), ("car", .7), ("widget", .6), ("truck", .5))]
        s.add_all(extra)
        s.commit()
        extra_ids = [d.id for d in extra]
    assert client.post(f"/api/detections/{extra_ids[-1]}/reject", headers=bearer(env, "ann")).status_code == 200
    every = rows(env)
    kept = [d for d in every if d.status != "rejected"]
    own: dict[str, int] = {}
    for d in kept:
        own[d.label] = own.get(d.label, 0) + 1
    parents = default_hierarchy()
    for label in own:
        parents.setdefault(label, None)

    r = client.get("/categories?empty=1")
    assert r.status_code == 200
    parsed = _Nodes()
    parsed.feed(r.get_data(as_text=True))
    assert set(parsed.nodes) == set(parents)
    for name, (count, total) in parsed.nodes.items():
        below = descendants(parents, name)
        assert count == own.get(name, 0), name
        assert total == sum(own.get(n, 0) for n in below), name
        best = sorted((d for d in kept if d.label in below), key=lambda d: (-d.score, d.id))[:4]
        assert parsed.samples.get(name, []) == [d.id for d in best], name
        mine = sorted((d for d in kept if d.label == name), key=lambda d: (-d.score, d.id))[:4]
        assert parsed.own.get(name, []) == ([d.id for d in mine] if below != {name} else []), name
        with env["app"].test_request_context():
            assert parsed.links[name] == url_for("search.index", objects=f"{name}>=1"), name
    assert rejected["id"] not in {i for ids in parsed.samples.values() for i in ids}
    assert sum(c for c, _ in parsed.nodes.values()) == len(kept)

    shown = _Nodes()
    shown.feed(client.get("/categories").get_data(as_text=True))
    assert set(shown.nodes) == {n for n, (_, total) in parsed.nodes.items() if total > 0}
    assert shown.nodes and all(total > 0 for _, total in shown.nodes.values())
    assert parsed.nodes["vehicle"] == (0, 3) and parsed.nodes["car"] == (2, 2) and parsed.nodes["widget"] == (1, 1)
    assert parsed.samples["vehicle"] == extra_ids[:3]
    client.post(f"/api/detections/{rejected['id']}/restore", headers=bearer(env, "ann"))
    with env["app"].extensions["sessions"]() as s:
        s.execute(delete(Detection).where(Detection.id.in_(extra_ids)))
        s.commit()


def test_random_weights_redetection_keeps_every_human_box_and_replaces_detections(env, capsys):
    client = env["app"].test_client()
    item = frame_items(env)[0]
    d = pick(env, 6, item)
    assert client.post(f"/api/detections/{d['id']}/accept", headers=bearer(env, "ann")).status_code == 201
    drawn = client.post("/api/annotations", json={"item": item, "box": [5, 6, 70, 80], "label": "drawn by hand"},
                        headers=bearer(env, "bob"))
    assert drawn.status_code == 201
    with env["app"].extensions["sessions"]() as s:
        humans = {a.id: (a.target, (a.x, a.y, a.w, a.h), a.label.name, a.version)
                  for a in s.scalars(select(Annotation))}
        old_video = {d.id for d in s.scalars(select(Detection).where(Detection.keyframe_id.is_not(None)))}
        old_images = {d.id for d in s.scalars(select(Detection).where(Detection.image_id.is_not(None)))}
    assert len(humans) >= 3 and old_video
    capsys.readouterr()
    assert offline.main(["index", str(env["media"] / "long_shot.webm"), *env["args"], "--force"]) == 0
    assert "objects:" in capsys.readouterr().out
    with env["app"].extensions["sessions"]() as s:
        after = {a.id: (a.target, (a.x, a.y, a.w, a.h), a.label.name, a.version)
                 for a in s.scalars(select(Annotation))}
        new_video = {d.id for d in s.scalars(select(Detection).where(Detection.keyframe_id.is_not(None)))}
        new_images = {d.id for d in s.scalars(select(Detection).where(Detection.image_id.is_not(None)))}
    assert after == humans, "every human box (accepted ones too) is kept as it was"
    assert new_video and not new_video & old_video, "the video's detections were replaced"
    assert new_images == old_images, "the images were not detected again"
    listed_now = client.get(f"/api/annotations?item={item}").get_json()["annotations"]
    assert {a["label"] for a in listed_now} >= {d["label"], "drawn by hand"}
    assert all(not a["orphaned"] for a in listed_now)
    assert all(x["status"] == "new" for x in listed(client, item))
