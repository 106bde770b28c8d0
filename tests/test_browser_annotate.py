"""The annotation page in headless Chromium: draw, label, save, reload, restart, and be refused
deleting someone else's box. Runs on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, BACKENDS, CHROMIUM, add_users, browser_log_in, database_env, index_media, serve

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
FRAMES: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _frames(kf):
    FRAMES.update({"2": kf("cuts_and_dissolve/2"), "3": kf("cuts_and_dissolve/3")})


@pytest.fixture(scope="module", params=BACKENDS)
def collection(request, tmp_path_factory, media_dir, tiny_encoder):
    data = tmp_path_factory.mktemp(f"annotate-browser-{request.param}")
    with database_env(request.param, data) as url:
        add_users(index_media(data, url, media_dir, tiny_encoder))
    return data, url


def new_server(collection, tiny_encoder):
    from app import create_app

    data, url = collection
    return serve(create_app({"DATA_DIR": str(data), "DATABASE_URL": url, "ENCODER": tiny_encoder}))


def drag(page, start: tuple[float, float], end: tuple[float, float], steps: int = 5) -> None:
    """A mouse drag on the drawing canvas, between points given as fractions of its size."""
    box = page.locator("#boxes-canvas").bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=steps)
    page.mouse.up()


def open_frame(page, base: str) -> None:
    page.goto(f"{base}/annotate/{FRAMES['2']}")
    page.wait_for_function("() => document.getElementById('picture').complete && "
                           "document.getElementById('boxes-canvas').width > 100")


def test_draw_save_reload_restart_and_refuse_foreign_delete(page, collection, tiny_encoder):
    with new_server(collection, tiny_encoder) as base:
        browser_log_in(page, base, "ann")
        open_frame(page, base)
        drag(page, (0.2, 0.2), (0.6, 0.6), steps=8)
        page.fill("#label", "red <b>disc</b>")
        page.fill("#note", "drawn in the browser")
        page.click("#save-button")
        page.wait_for_selector("#status:has-text('Saved box')")
        stored = page.evaluate("fetch('/api/annotations?item=" + FRAMES["2"] + "').then(r => r.json())")["annotations"]
        assert len(stored) == 1
        x, y, w, h = stored[0]["box"]  # in the video's own 320x180 pixels, whatever the display size
        assert abs(x - 64) <= 3 and abs(y - 36) <= 3 and abs(w - 128) <= 4 and abs(h - 72) <= 4
        page.reload()
        page.wait_for_selector("#box-list li")
        assert page.locator("#box-list li .box-label").inner_text() == "red <b>disc</b>"  # shown as text
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#box-list li").first.click()
        page.screenshot(path=str(ARTIFACTS / "annotate.png"), full_page=True)
    with new_server(collection, tiny_encoder) as base:  # a restarted server
        open_frame(page, base)
        page.wait_for_selector("#box-list li")
        assert "red <b>disc</b>" in page.locator("#box-list").inner_text()
        page.click("#logout-button")
        browser_log_in(page, base, "bob")
        open_frame(page, base)
        page.locator("#box-list li").first.click()
        page.keyboard.press("Delete")
        page.wait_for_selector("#status.error")
        assert "belongs to ann" in page.inner_text("#status")
        page.reload()
        page.wait_for_selector("#box-list li")
        assert page.locator("#box-list li").count() == 1


def test_undo_and_next_keyframe_shortcut(page, collection, tiny_encoder):
    with new_server(collection, tiny_encoder) as base:
        browser_log_in(page, base, "bob")
        open_frame(page, base)
        before = page.locator("#box-list li").count()
        drag(page, (0.7, 0.1), (0.9, 0.3))
        page.fill("#label", "temporary")
        page.keyboard.press("Enter")
        page.wait_for_selector("#status:has-text('Saved box')")
        assert page.locator("#box-list li").count() == before + 1
        # drag the new box by its middle: it moves, in image pixels, and the move is stored
        url = "/api/annotations?author=bob&label=temporary"
        first = page.evaluate(f"fetch('{url}').then(r => r.json())")["annotations"][0]["box"]
        drag(page, (0.8, 0.2), (0.6, 0.5))
        page.wait_for_selector("#status:has-text('moved')")
        moved = page.evaluate(f"fetch('{url}').then(r => r.json())")["annotations"][0]["box"]
        assert moved[2:] == first[2:] and abs((first[0] - moved[0]) - 64) <= 3 and abs((moved[1] - first[1]) - 54) <= 3
        page.click("#undo-button")  # undoes the move
        page.wait_for_selector("#status:has-text('Undone')")
        assert page.evaluate(f"fetch('{url}').then(r => r.json())")["annotations"][0]["box"] == first
        page.click("#undo-button")  # undoes the creation
        page.wait_for_function(f"() => document.querySelectorAll('#box-list li').length === {before}")
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("n")
        page.wait_for_url(f"**/annotate/{FRAMES['3']}")


@pytest.mark.parametrize("width", [1280, 390])
def test_orphaned_boxes_are_listed_and_an_image_page_fits(browser, collection, tiny_encoder, width):
    """A box whose frame is no longer catalogued (as after a re-index of another revision) is listed, marked and
    kept; an image's own page (region search, more like this) fits a phone."""
    from sqlalchemy import select

    from app.models import Annotation, Image, Label, User

    data, url = collection
    with new_server(collection, tiny_encoder) as base:
        from app.db import open_database

        sessions = open_database(url)
        with sessions() as s:
            if s.scalar(select(Annotation).where(Annotation.frame_idx == 99999)) is None:
                label = s.scalar(select(Label).where(Label.name == "gone")) or Label(name="gone")
                author = s.scalar(select(User).where(User.name == "ann"))
                s.add(Annotation(video_id="cuts_and_dissolve", frame_idx=99999, x=1, y=1, w=5, h=5, label=label,
                                 author_id=author.id))
                s.commit()
            image_hash = s.scalar(select(Image.content_hash).order_by(Image.id))
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        browser_log_in(page, base, "ann")
        page.goto(f"{base}/annotations")
        notice = page.locator("#orphan-notice")
        assert notice.is_visible() and "no longer catalogued" in notice.inner_text()
        page.click("#orphan-notice a")
        page.wait_for_url("**/annotations?orphaned=1")
        assert "cuts_and_dissolve@99999 (orphaned)" in page.inner_text("#annotation-table")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"annotations-orphaned-{width}.png"), full_page=True)
        page.goto(f"{base}/item/image:{image_hash}")
        page.wait_for_function("() => document.getElementById('frame').complete")
        assert page.locator("h1").inner_text().endswith(".jpg") and page.locator(".strip").count() == 0
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(ARTIFACTS / f"item-image-{width}.png"), full_page=True)
        context.close()


def test_annotation_traps_enter_n_unsaved_box_and_a_box_inside_a_box(page, collection, tiny_encoder):
    """Each trap a new user fell into is a step here: Enter then N, N with an unsaved box, a box drawn inside
    another (a face inside a person), and a press inside another box that must not move it."""
    with new_server(collection, tiny_encoder) as base:
        browser_log_in(page, base, "bob")
        open_frame(page, base)
        url = f"/api/annotations?author=bob&item={FRAMES['2']}"
        before = len(page.evaluate(f"fetch('{url}').then(r => r.json())")["annotations"])
        drag(page, (0.1, 0.1), (0.9, 0.9), steps=6)  # the person
        page.fill("#label", "trap person")
        page.press("#label", "Enter")
        page.wait_for_selector("#status:has-text('Saved box')")
        assert page.evaluate("document.activeElement.id") == "boxes-canvas"
        page.keyboard.press("Escape")  # nothing selected now
        outer = page.evaluate(f"fetch('{url}').then(r => r.json())")["annotations"][-1]
        page.keyboard.down("Shift")  # the face, drawn inside the person
        drag(page, (0.4, 0.4), (0.6, 0.6), steps=6)
        page.keyboard.up("Shift")
        page.fill("#label", "trap face")
        page.press("#label", "Enter")
        page.wait_for_selector("#status:has-text('trap face')")
        stored = page.evaluate(f"fetch('{url}').then(r => r.json())")["annotations"]
        assert len(stored) == before + 2
        face = next(a for a in stored if a["label"] == "trap face")
        x, y, w, h = face["box"]
        ox, oy, ow, oh = outer["box"]
        assert ox < x and oy < y and x + w < ox + ow and y + h < oy + oh  # inside the other box
        page.locator("body").click(position={"x": 5, "y": 5})
        drag(page, (0.2, 0.2), (0.3, 0.35), steps=4)  # a press inside the (unselected) person only selects it
        after = next(a for a in page.evaluate(f"fetch('{url}').then(r => r.json())")["annotations"]
                     if a["id"] == outer["id"])
        assert after["box"] == outer["box"] and after["version"] == outer["version"]

        drag(page, (0.95, 0.3), (0.99, 0.5), steps=4)  # a new box (away from the others): keys go to the label
        assert page.evaluate("document.activeElement.id") == "label"
        page.keyboard.press("Escape")  # ...and Esc leaves it, discarding the box: N works again
        page.wait_for_selector("#status:has-text('discarded')")
        assert page.evaluate("document.activeElement.id") == "boxes-canvas"
        page.keyboard.press("d")  # draw-inside mode by key: a new box, left unsaved
        drag(page, (0.45, 0.45), (0.55, 0.55), steps=4)
        page.locator("body").click(position={"x": 5, "y": 5})
        asked = []
        page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
        page.keyboard.press("n")
        page.wait_for_selector("#status:has-text('The new box is kept')")
        assert asked and "not saved" in asked[0] and f"/annotate/{FRAMES['2']}" in page.url
        page.once("dialog", lambda d: d.accept())
        page.keyboard.press("n")
        page.wait_for_url(f"**/annotate/{FRAMES['3']}")
        assert len(page.evaluate(f"fetch('{url}').then(r => r.json())")["annotations"]) == before + 2


@pytest.mark.parametrize("width", [1280, 390])
def test_the_shortcut_list_opens_with_a_question_mark(browser, collection, tiny_encoder, width):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    with new_server(collection, tiny_encoder) as base:
        browser_log_in(page, base, "ann")
        open_frame(page, base)
        assert not page.is_visible("#help-overlay")
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("?")
        assert page.is_visible("#help-overlay") and "Shift" in page.inner_text("#help-overlay")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(ARTIFACTS / f"annotate-help-{width}.png"), full_page=False)
        page.keyboard.press("Escape")
        assert not page.is_visible("#help-overlay")
    context.close()
