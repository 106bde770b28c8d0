"""Objects in headless Chromium with a random-weight detector and the tiny CLIP: on an item's page, draw a box around
a detected object and search the objects; the result shows that object first with its box drawn; an object filter
from the search form keeps only frames that meet it. Indexed and served in separate processes."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, CHROMIUM, db_url
from tests.face_media import FACES
from tests.processes import TINY_ARGS, cli, server_process

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
DETECTOR = ["--detector", "fasterrcnn_mobilenet_v3_large_320_fpn", "--detector-weights", "none",
            "--object-threshold", "0", "--no-faces", "--no-concepts"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-objects")
    media = root / "media"
    media.mkdir()
    for name in ("obama_1", "biden_1"):
        shutil.copy(FACES / f"{name}.jpg", media)
    done = cli("index", str(media), "--data-dir", str(root / "data"), "--pretrained", "none", *TINY_ARGS, *DETECTOR)
    assert done.returncode == 0, done.stderr
    url = db_url(root / "data")
    if not url.startswith("sqlite"):
        pytest.skip("reads the SQLite catalogue directly")
    with sqlite3.connect(url.split("///", 1)[1]) as db:
        biggest = db.execute("select d.x, d.y, d.w, d.h, d.label, i.content_hash, i.width from detections d join "
                             "images i on i.id = d.image_id join detection_data x on x.detection_id = d.id "
                             "where i.name = 'biden_1.jpg' order by d.w * d.h desc limit 1").fetchone()
        label_counts = db.execute("select label, count(*) from detections group by label").fetchall()
    with server_process(root / "data") as base:
        yield base, biggest, label_counts


@pytest.mark.parametrize("width", [1280, 390])
def test_draw_a_box_on_an_object_and_find_it_among_objects(page, site, width):
    base, (x, y, w, h, label, content_hash, source_width), _ = site
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"{base}/item/image:{content_hash}")
    assert page.locator("#objects li").count() > 0  # the detector's boxes are listed, machine-made
    canvas = page.locator("#region-canvas")
    box = canvas.bounding_box()
    s = box["width"] / source_width
    page.mouse.move(box["x"] + x * s + 1, box["y"] + y * s + 1)
    page.mouse.down()
    page.mouse.move(box["x"] + (x + w) * s - 1, box["y"] + (y + h) * s - 1, steps=5)
    page.mouse.up()
    page.click("#region-objects")
    page.wait_for_selector("#results .card")
    first = page.locator("#results .card").first
    assert "biden_1.jpg" in first.inner_text()
    drawn = first.locator(".face-box.matched")
    assert drawn.count() == 1 and label in drawn.inner_text()
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"objects-search-{width}.png"), full_page=True)


def test_an_object_filter_from_the_search_form(page, site):
    base, _, label_counts = site
    label, most = max(label_counts, key=lambda lc: lc[1])
    page.goto(base + "/")
    page.fill("#q", "anything")
    page.click("details.options summary")
    page.fill("input[name=objects]", f"{label}>=1")
    page.click("#search-button")
    page.wait_for_selector("#results .card")
    assert f"objects={label}" in page.url.replace("%3E", ">").replace("+", " ")
    assert page.locator("#results .card").count() == 2  # both pictures carry that class
    page.fill("input[name=objects]", "unicorn>=2")
    page.click("#search-button")
    assert "unknown class 'unicorn'" in page.locator("#error").inner_text()
