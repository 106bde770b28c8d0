"""Flask test-client tests of every route and every bad input (tiny random-weight CLIP)."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from app.paths import DataLayout
from tests.conftest import db_url, frame_item


def _jpeg(indexed, video="long_shot", n=1) -> bytes:
    return (DataLayout.from_data_dir(indexed).keyframes_dir / video / f"{n:03d}.jpg").read_bytes()


def _csrf(client) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)


def test_text_search_api_returns_documented_fields(client):
    r = client.get("/api/search?q=a+dog+on+a+beach&k=5")
    assert r.status_code == 200
    body = r.get_json()
    assert len(body["results"]) == 5
    first = body["results"][0]
    for key in ("item", "video_id", "n", "frame_idx", "pts_time", "score", "picture_url", "page_url", "name"):
        assert key in first
    assert not any(str(r["name"]).startswith("/") for r in body["results"])  # never a server path
    assert set(body["timing_ms"]) >= {"encode", "search"}
    scores = [x["score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_exact_keyframe_as_image_query_comes_back_first_via_api(client, indexed):
    r = client.post("/api/search", data={"image": (io.BytesIO(_jpeg(indexed, n=2)), "q.jpg"), "k": "3"},
                    content_type="multipart/form-data")
    assert r.status_code == 200
    top = r.get_json()["results"][0]
    assert (top["video_id"], top["n"]) == ("long_shot", 2)
    assert top["score"] > 0.99


def test_exact_keyframe_upload_through_the_page_is_rank_one_at_an_address_that_repeats_it(client, indexed, kf):
    """Post/redirect/get: the upload is kept under its id and the results live at a GET address."""
    r = client.post("/", data={"csrf_token": _csrf(client), "image": (io.BytesIO(_jpeg(indexed, n=3)), "q.jpg"),
                               "k": "7", "box": "", "q": ""}, content_type="multipart/form-data")
    assert r.status_code == 303
    where = r.headers["Location"]
    assert re.fullmatch(r"/\?k=7&image=[0-9a-f]{32}", where), where
    pages = [client.get(where).get_data(as_text=True) for _ in range(2)]  # a reload is the same query
    cards = [re.findall(r'data-item="([^"]+)"', p) for p in pages]
    assert cards[0] == cards[1] and cards[0][0] == kf("long_shot/3") and len(cards[0]) == 7
    image_id = where.rsplit("=", 1)[1]
    assert f'data-image-url="/query-image/{image_id}"' in pages[0]
    assert client.get(f"/query-image/{image_id}").data == _jpeg(indexed, n=3)
    w, h = Image.open(io.BytesIO(_jpeg(indexed, n=3))).size
    region = client.get(f"{where}&box=0,0,{w // 2},{h // 2}").get_data(as_text=True)
    assert f'data-box="0,0,{w // 2},{h // 2}"' in region


def test_a_kept_query_image_expires_with_a_clear_message(client, indexed, tmp_path):
    import os
    import time

    from app import query_images

    r = client.post("/", data={"csrf_token": _csrf(client), "image": (io.BytesIO(_jpeg(indexed, n=2)), "q.jpg")},
                    content_type="multipart/form-data")
    image_id = r.headers["Location"].rsplit("=", 1)[1]
    kept = query_images.query_image_dir(indexed) / image_id
    old = time.time() - query_images.MAX_AGE_S - 60
    os.utime(kept, (old, old))
    page = client.get(f"/?image={image_id}")
    assert page.status_code == 400 and "has expired" in page.get_data(as_text=True)
    assert client.get("/?image=../../etc/passwd").status_code == 400
    root = tmp_path / "kept"
    ids = [query_images.put(root, bytes([i]) * 10) for i in range(3)]
    (root / ids[0]).unlink()  # evicted by another request: a clear "no longer kept", and a new upload keeps it again
    with pytest.raises(query_images.QueryImageGone, match="no longer kept"):
        query_images.get(root, ids[0])
    assert query_images.put(root, bytes([0]) * 10) == ids[0] and query_images.get(root, ids[0]) == bytes([0]) * 10
    assert query_images.prune(root, now=time.time() + query_images.MAX_AGE_S + 1) == 3


def test_a_posted_sequence_keeps_its_events_in_the_address(client):
    r = client.post("/", data={"csrf_token": _csrf(client), "q1": "first event", "q2": "second event", "gap": "3"})
    assert r.status_code == 303 and "q1=first+event" in r.headers["Location"] and "gap=3" in r.headers["Location"]
    assert 'data-event="B"' in client.get(r.headers["Location"]).get_data(as_text=True)


def test_page_form_without_csrf_token_is_refused(client, indexed):
    r = client.post("/", data={"image": (io.BytesIO(_jpeg(indexed)), "q.jpg")}, content_type="multipart/form-data")
    assert r.status_code == 400 and b"CSRF" in r.data


def test_region_query_crops_before_encoding(client, indexed):
    jpeg = _jpeg(indexed, n=1)
    w, h = Image.open(io.BytesIO(jpeg)).size
    full = client.post("/api/search", data={"image": (io.BytesIO(jpeg), "q.jpg"), "k": "1"}).get_json()
    crop = client.post("/api/search", data={"image": (io.BytesIO(jpeg), "q.jpg"), "k": "1",
                                            "box": f"0,0,{w // 3},{h // 3}"}).get_json()
    assert full["results"][0]["score"] > 0.99
    assert crop["results"][0]["score"] < full["results"][0]["score"] - 1e-3


def test_combined_text_and_image_and_more_like_this(client, indexed, kf):
    r = client.post("/api/search", data={"image": (io.BytesIO(_jpeg(indexed, n=2)), "q.jpg"), "q": "night",
                                         "text_weight": "0.2"})
    assert r.get_json()["kind"] == "combined"
    like = client.get(f"/api/search?like={kf('long_shot/2')}&k=1").get_json()
    assert (like["results"][0]["video_id"], like["results"][0]["n"]) == ("long_shot", 2)
    assert client.get(f"/?like={kf('long_shot/2')}").status_code == 200


def test_filters_apply_before_top_k(client, media_dir):
    r = client.get("/api/search?q=anything&k=3&video=cuts_and_dissolve").get_json()
    assert len(r["results"]) == 3 and {x["video_id"] for x in r["results"]} == {"cuts_and_dissolve"}
    images = client.get("/api/search", query_string={"q": "x", "k": 50, "folder": str(media_dir / "images")})
    assert len(images.get_json()["results"]) == 3
    assert all(x["video_id"] is None for x in images.get_json()["results"])
    partial = client.get("/api/search?q=anything&k=50&folder=images").get_json()
    assert partial["results"] == []  # a folder is a real path prefix, not a substring


def test_min_score_absolute_and_relative(client, kf):
    everything = client.get("/api/search?q=x&k=100").get_json()["results"]
    best = everything[0]["score"]
    passed = client.get(f"/api/search?like={kf('long_shot/2')}&k=100&min_score=99.99").get_json()["results"]
    assert passed and len(passed) < len(everything) and all(r["score"] * 100 >= 99.99 for r in passed)
    rel = client.get("/api/search?q=x&k=100&min_score=100&score_mode=rel").get_json()["results"]
    assert [r["score"] for r in rel] == [best] * len(rel)
    page = client.get("/?q=x&min_score=100")
    assert b"No result above" in page.data


def test_group_by_video_and_one_per_shot(client, truths):
    grouped = client.get("/api/search?q=x&k=30&group=1").get_json()["results"]
    order = [r["video_id"] or r["name"] for r in grouped]
    assert all(order.index(v) == i or order[i - 1] == v for i, v in enumerate(order))

    def true_shot(frame: int) -> int:  # from the generator's own plan, not from the indexer
        return next(i for i, (a, b) in enumerate(truths["long_shot"].shots) if a <= frame <= b)

    everything = client.get("/api/search?q=x&k=100&video=long_shot").get_json()["results"]
    shots_all = [true_shot(r["frame_idx"]) for r in everything if truths_has(truths, r["frame_idx"])]
    assert len(shots_all) > len(set(shots_all)), "the test needs a shot with several keyframes"
    collapsed = client.get("/api/search?q=x&k=100&collapse=1&video=long_shot").get_json()["results"]
    shots = [true_shot(r["frame_idx"]) for r in collapsed if truths_has(truths, r["frame_idx"])]
    assert len(shots) == len(set(shots)) and set(shots) == set(shots_all)


def truths_has(truths, frame: int) -> bool:
    """Frames inside a clean shot range (dissolve frames belong to no one shot)."""
    return any(a <= frame <= b for a, b in truths["long_shot"].shots)


def test_sequence_query_finds_ordered_distinct_moments_within_the_gap(client):
    body = client.get("/api/search?q1=first+event&q2=second+event&gap=3&k=10").get_json()
    assert body["kind"] == "sequence" and body["moments"]
    seen = []
    for m in body["moments"]:
        a, b = m["hits"]
        assert a["video_id"] == b["video_id"] and 0 < b["pts_time"] - a["pts_time"] <= 3
        assert m["gaps_s"] == [pytest.approx(b["pts_time"] - a["pts_time"], abs=0.01)]
        seen += [a["item"], b["item"]]
    assert len(seen) == len(set(seen))  # a frame belongs to one moment only
    page = client.get("/?q1=first+event&q2=second+event&gap=3&k=10").get_data(as_text=True)
    n = len(body["moments"])
    assert f"{n} moment{'' if n == 1 else 's'}" in page and 'data-event="A"' in page and 'data-event="B"' in page


def test_counts_plurals_groups_unknown_video_and_favicon(client):
    one = client.get("/?q=x&k=1").get_data(as_text=True)
    assert ">1 result<" in one and "1 results" not in one
    grouped = client.get("/?q=x&k=30&group=1").get_data(as_text=True)
    headers = re.findall(r'<details class="group" open data-key="([^"]+)">', grouped)
    results = client.get("/api/search?q=x&k=30&group=1").get_json()["results"]
    assert headers == list(dict.fromkeys(r["video_id"] or r["name"] for r in results))
    assert "AI Challenge submission CSV (video frames only)" in grouped and "images included" in grouped
    r = client.get("/api/search?q=x&video=zzz")
    assert r.get_json()["results"] == [] and any("no video 'zzz'" in n for n in r.get_json()["notices"])
    assert "There is no video" in client.get("/?q=x&video=zzz").get_data(as_text=True)
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and b"<svg" in icon.data


def test_csv_export_is_submission_format(client):
    r = client.get("/api/search?q=x&k=7&format=csv")
    lines = r.get_data(as_text=True).strip().splitlines()
    assert 0 < len(lines) <= 7 and all(re.fullmatch(r"[A-Za-z0-9_.-]+,\d+", ln) for ln in lines)


def test_keyframe_record_page_neighbours_and_video_range(client, indexed):
    item = frame_item(indexed, "long_shot", 2)
    rec = client.get(f"/api/items/{item}").get_json()
    assert rec["n"] == 2 and rec["previous"][0]["n"] == 1 and rec["shot"] is not None
    assert rec["previous"][0]["item"] == frame_item(indexed, "long_shot", 1)
    page = client.get(f"/item/{item}")
    assert page.status_code == 200 and b"#t=" in page.data
    img = client.get(rec["picture_url"])
    assert img.status_code == 200 and img.mimetype == "image/jpeg" and "max-age" in img.headers["Cache-Control"]
    part = client.get(rec["video"]["url"], headers={"Range": "bytes=10-29"})
    assert part.status_code == 206 and len(part.data) == 20


def test_long_query_is_truncated_with_a_notice(client):
    body = client.get("/api/search?q=" + "word " * 200).get_json()
    assert body["results"] and any("only its beginning was used" in n for n in body["notices"])


def _bomb_png() -> bytes:
    # a real PNG header declaring 20000x20000 pixels; PIL must refuse it before decoding
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def test_bad_inputs_get_clear_4xx_and_server_keeps_serving(client, indexed):
    jpeg = _jpeg(indexed)
    cases = [
        client.get("/api/search?q="),
        client.get("/api/search?q=" + "x" * 100_000),
        client.post("/api/search", data={"image": (io.BytesIO(b"not an image at all"), "a.jpg")}),
        client.post("/api/search", data={"image": (io.BytesIO(jpeg[: len(jpeg) // 2]), "t.jpg")}),
        client.post("/api/search", data={"image": (io.BytesIO(_bomb_png()), "bomb.png")}),
        client.post("/api/search", data={"image": (io.BytesIO(jpeg), "a.jpg"), "box": "0,0,99999,5"}),
        client.post("/api/search", data={"image": (io.BytesIO(jpeg), "a.jpg"), "box": "5,5,-3,4"}),
        client.get("/api/search?q=x&k=-1"),
        client.get("/api/search?q=x&k=99999999"),
        client.get("/api/search?q=x&k=abc"),
        client.get("/api/search?like=nope/1"),
        client.get("/api/search?like=nope@1"),
    ]
    assert "too many pixels" in cases[4].get_json()["error"]
    for r in cases:
        assert r.status_code == 400, r.get_data(as_text=True)
        assert r.get_json()["error"]
    for r in (client.get("/api/items/no_such_video@1"), client.get("/item/..%2F..%2Fetc@1/picture"),
              client.get("/item/../../etc/passwd"), client.get("/video/nope"), client.get("/item/nope/1"),
              client.get("/item/no_such_video@1"), client.get("/item/image:abc/picture")):
        assert r.status_code == 404
    assert b"Traceback" not in client.get("/item/nope@1").data
    page = client.get("/?q=x&k=-5")
    assert page.status_code == 400 and b"k must be between" in page.data
    assert client.get("/api/search?q=still+serving").status_code == 200


def test_upload_over_the_size_limit_is_413_with_message(app, indexed):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    try:
        r = app.test_client().post("/api/search", data={"image": (io.BytesIO(b"x" * 5000), "big.jpg")})
    finally:
        app.config["MAX_CONTENT_LENGTH"] = 20 * 1024 * 1024
    assert r.status_code == 413 and "limit" in r.get_json()["error"]


def test_server_picks_up_a_new_index_without_restart(indexed, tiny_encoder, tmp_path):
    """On its own copy of the collection: the shared session index stays as it was for the other tests."""
    import shutil

    from sqlalchemy.orm import sessionmaker

    from app import create_app
    from app.db import make_engine
    from app.index_build import rebuild_index

    if not db_url(indexed).startswith("sqlite"):
        pytest.skip("the copy shares a server database")
    data = tmp_path / "copy"
    shutil.copytree(indexed, data)
    app = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True, "INDEX_CHECK_SECONDS": 0})
    client = app.test_client()
    before = client.get("/api/search?q=x&k=1000").get_json()["results"]
    layout = DataLayout.from_data_dir(data)
    with sessionmaker(make_engine(db_url(layout.data_dir)))() as s:
        rebuild_index(s, layout, tiny_encoder.identity, tiny_encoder.dim, "hnsw")
    client.get("/api/search?q=x&k=1")  # notices the new generation and loads it in the background
    app.extensions["collection"].wait()
    after = client.get("/api/search?q=x&k=1000").get_json()["results"]
    assert app.extensions["collection"].snapshot().bundle.meta["params"]["type"] == "hnsw"
    assert len(after) == len(before)
    np.testing.assert_allclose(sorted(r["score"] for r in after), sorted(r["score"] for r in before), atol=1e-4)


def test_index_knobs_are_checked_and_accepted(client):
    r = client.get("/api/search?q=a%20dog&nprobe=0")
    assert r.status_code == 400 and "nprobe must be between 1 and 65536" in r.get_json()["error"]
    r = client.get("/api/search?q=a%20dog&ef=lots")
    assert r.status_code == 400 and "ef must be a whole number" in r.get_json()["error"]
    assert client.get("/api/search?q=a%20dog&ef=200&nprobe=8&rerank=500").status_code == 200
