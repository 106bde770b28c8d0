"""Machine boxes on the annotation page and the categories page in headless Chromium, with a random-weight detector
(and the tiny random-weight CLIP): see the dashed boxes, pick one, accept it (it becomes a human box that survives a
reload), reject and restore another; /categories at 1280 and 390 px."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

import offline
from tests.conftest import ARTIFACTS, CHROMIUM, add_users, browser_log_in, db_url, index_args, serve

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture(scope="module")
def collection(tmp_path_factory, media_dir, tiny_encoder):
    from app import create_app

    root = tmp_path_factory.mktemp("detections-browser-random-weights")
    data = root / "data"
    if not db_url(data).startswith("sqlite"):
        pytest.skip("runs on its own SQLite collection")
    video = root / "media" / "long_shot.webm"
    video.parent.mkdir()
    shutil.copy(media_dir / "videos" / "long_shot.webm", video)
    assert offline.main(["index", str(video), *index_args(data), "--detector-weights", "none",
                         "--object-threshold", "0", "--no-faces", "--no-concepts"]) == 0
    app = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True,
                      "LOGIN_RATE_LIMIT": "1000 per minute"})
    add_users(app.extensions["sessions"])
    return app


def first_frame(app) -> str:
    from app.models import Keyframe, Video

    with app.extensions["sessions"]() as s:
        frame = s.scalar(select(Keyframe.frame_idx).join(Video).where(Video.video_id == "long_shot")
                         .order_by(Keyframe.n).limit(1))
    return f"long_shot@{frame}"


def open_frame(page, base: str, item: str) -> None:
    page.goto(f"{base}/annotate/{item}")
    page.wait_for_function("() => document.getElementById('picture').complete && "
                           "document.getElementById('boxes-canvas').width > 100")


def detections(page, item: str) -> list[dict]:
    return page.evaluate(f"fetch('/api/detections?item={item}').then(r => r.json())")["detections"]


def humans(page, item: str) -> list[dict]:
    return page.evaluate(f"fetch('/api/annotations?item={item}').then(r => r.json())")["annotations"]


def canvas_point(page, x: float, y: float) -> tuple[float, float]:
    """A point in the video's 320x180 source pixels, on the screen."""
    box = page.locator("#boxes-canvas").bounding_box()
    return box["x"] + x * box["width"] / 320, box["y"] + y * box["height"] / 180


def smallest_at(found: list[dict], x: float, y: float) -> dict:
    inside = [d for d in found if d["status"] == "new" and d["box"][0] <= x <= d["box"][0] + d["box"][2]
              and d["box"][1] <= y <= d["box"][1] + d["box"][3]]
    return min(inside, key=lambda d: d["box"][2] * d["box"][3])


def test_random_weights_accept_a_machine_box_and_it_survives_a_reload(page, collection):
    item = first_frame(collection)
    with serve(collection) as base:
        browser_log_in(page, base, "ann")
        open_frame(page, base, item)
        found = detections(page, item)
        assert found and humans(page, item) == []
        page.wait_for_selector("#machine-list li")
        assert page.locator("#machine-list li").count() == len(found)
        assert page.inner_text("#machine-count") == str(len(found))
        assert "machine-made" in page.inner_text("#machine-title")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "annotate-machine-boxes-1280.png"), full_page=True)

        # a click on a dashed box picks it (the smallest one under the pointer), a drag over it draws a new box
        big = max(found, key=lambda d: d["box"][2] * d["box"][3])
        cx, cy = big["box"][0] + big["box"][2] / 2, big["box"][1] + big["box"][3] / 2
        expected = smallest_at(found, cx, cy)
        page.mouse.click(*canvas_point(page, cx, cy))
        page.wait_for_selector(f"#machine-list li.selected[data-id='{expected['id']}']")
        assert "Machine box" in page.inner_text("#status")
        page.mouse.move(*canvas_point(page, 20, 20))
        page.mouse.down()
        page.mouse.move(*canvas_point(page, 120, 100), steps=5)
        page.mouse.up()
        page.wait_for_selector("#status:has-text('New box')")
        assert page.evaluate("document.activeElement.id") == "label"
        page.keyboard.press("Escape")  # discard it: nothing was saved
        assert humans(page, item) == []

        # accept by key: it becomes a human box, selected for correction
        chosen = found[0]
        page.locator(f"#machine-list li[data-id='{chosen['id']}']").click()
        page.keyboard.press("a")
        page.wait_for_selector("#status:has-text('Accepted as box')")
        stored = humans(page, item)
        assert len(stored) == 1 and stored[0]["label"] == chosen["label"] and stored[0]["author"] == "ann"
        assert page.locator("#box-list li").count() == 1
        assert page.locator("#box-list li.selected .box-label").inner_text() == chosen["label"]
        assert page.input_value("#label") == chosen["label"]
        assert page.get_attribute(f"#machine-list li[data-id='{chosen['id']}']", "data-status") == "accepted"
        page.screenshot(path=str(ARTIFACTS / "annotate-machine-accepted-1280.png"), full_page=True)

        # correct it: the usual edit flow (relabel and save)
        page.fill("#label", f"{chosen['label']} (checked)")
        page.click("#save-button")
        page.wait_for_selector("#status:has-text('Updated box')")

        # reject another with R: hidden, then restored from "show rejected"
        other = found[1]
        page.locator(f"#machine-list li[data-id='{other['id']}']").click()
        page.keyboard.press("r")
        page.wait_for_selector(f"#machine-list li[data-id='{other['id']}'][data-status='rejected']", state="attached")
        assert page.locator(f"#machine-list li[data-id='{other['id']}']").is_hidden()  # hidden by default
        assert page.inner_text("#rejected-count") == "1"
        page.check("#show-rejected")
        page.click(f"#machine-list li[data-id='{other['id']}'] .restore-machine")
        page.wait_for_selector(f"#machine-list li[data-id='{other['id']}'][data-status='new']")
        page.uncheck("#show-machine")
        assert page.locator("#machine-list").is_hidden()
        page.check("#show-machine")

        page.reload()
        page.wait_for_selector("#box-list li")
        assert page.locator("#box-list li .box-label").all_inner_texts() == [f"{chosen['label']} (checked)"]
        assert page.get_attribute(f"#machine-list li[data-id='{chosen['id']}']", "data-status") == "accepted"
        assert page.inner_text("#machine-count") == str(len(found))
        page.keyboard.press("?")
        help_text = page.inner_text("#help-overlay")
        assert "accept the selected machine box" in help_text and "reject the selected machine box" in help_text
        page.keyboard.press("Escape")


@pytest.mark.parametrize("width", [1280, 390])
def test_random_weights_annotate_and_categories_pages_fit(browser, collection, width):
    item = first_frame(collection)
    with serve(collection) as base:
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        browser_log_in(page, base, "ann")
        open_frame(page, base, item)
        page.wait_for_selector("#machine-list li")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(ARTIFACTS / f"annotate-machine-{width}.png"), full_page=True)
        page.goto(f"{base}/categories")
        page.wait_for_selector("#category-tree > li")
        assert page.locator("nav a:has-text('Categories')").count() == 1
        roots = page.locator("#category-tree > li")
        assert roots.count() >= 1 and int(roots.first.get_attribute("data-total")) > 0
        page.wait_for_function("() => [...document.querySelectorAll('#category-tree > li:first-child "
                               ".cat-samples img')].some(i => i.complete && i.naturalWidth > 0)")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(ARTIFACTS / f"categories-{width}.png"), full_page=True)
        page.click("#empty-toggle")
        page.wait_for_selector("#category-tree li.empty")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(ARTIFACTS / f"categories-all-{width}.png"), full_page=True)
        context.close()
