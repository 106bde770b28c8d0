"""Real-browser tests: Debian's headless Chromium driven by Playwright, against a live server."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.paths import DataLayout
from tests.conftest import ARTIFACTS, CHROMIUM, serve

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture(scope="module")
def live_url(app):
    with serve(app) as url:
        yield url


def test_type_a_query_and_see_results_then_screenshot(page, live_url):
    page.goto(live_url)
    page.fill("#q", "a red bus in the rain")
    page.click("#search-button")
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card:visible").count() > 0
    assert "encode" in page.inner_text("#timing") and "search" in page.inner_text("#timing")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "results.png"), full_page=False)


def test_upload_a_keyframe_and_see_it_ranked_first(page, live_url, indexed, kf):
    page.goto(live_url)
    jpg = DataLayout.from_data_dir(indexed).keyframes_dir / "cuts_and_dissolve" / "002.jpg"
    page.set_input_files("#image", str(jpg))
    page.click("#search-button")
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card").first.get_attribute("data-item") == kf("cuts_and_dissolve/2")


def test_draw_a_region_on_the_upload_and_search_it(page, live_url, indexed):
    page.goto(live_url)
    kf = DataLayout.from_data_dir(indexed).keyframes_dir / "long_shot" / "001.jpg"
    page.set_input_files("#image", str(kf))
    canvas = page.locator("#preview-canvas")
    canvas.wait_for(state="visible")
    page.wait_for_function("() => document.getElementById('preview-canvas').getBoundingClientRect().width > 50")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 10, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    value = page.input_value("#box")
    x, y, w, h = map(int, value.split(","))
    assert x >= 0 and y >= 0 and w > 20 and h > 20
    page.click("#search-button")
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card").count() > 0


def test_draw_a_region_on_a_keyframe_page(page, live_url, kf):
    page.goto(f"{live_url}/item/{kf('long_shot/2')}")
    page.wait_for_function("() => document.getElementById('frame').naturalWidth > 0")
    assert page.locator("#region-search").is_disabled()
    box = page.locator("#region-canvas").bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + 150, box["y"] + 100, steps=5)
    page.mouse.up()
    assert page.locator("#region-search").is_enabled()
    page.click("#region-search")
    page.wait_for_selector("#results .card")


def test_slider_until_no_result_then_download_csv(page, live_url, tmp_path):
    page.goto(f"{live_url}/?q=mountains&k=20")
    page.wait_for_selector("#results .card")
    assert page.locator("#no-result").is_hidden()
    page.locator("#min_score").fill("100")
    page.locator("#no-result").wait_for(state="visible")
    assert "No result above 100%" in page.inner_text("#no-result")
    page.locator("#min_score").fill("0")
    with page.expect_download() as info:
        page.click("#download-csv")
    target = tmp_path / "submission.csv"
    shutil.copy(info.value.path(), target)
    lines = target.read_text().strip().splitlines()
    assert 0 < len(lines) <= 20
    assert all(len(ln.split(",")) == 2 and ln.split(",")[1].isdigit() for ln in lines)


def test_keyframe_page_shows_frame_neighbours_and_video(page, live_url, kf):
    page.goto(f"{live_url}/item/{kf('long_shot/2')}")
    assert page.locator(".strip a").count() >= 1
    src = page.get_attribute("#player", "src")
    assert "/video/long_shot#t=" in src
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")


@pytest.mark.parametrize("width", [1280, 390])
def test_groups_sequences_and_the_live_count(browser, live_url, width):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.goto(f"{live_url}/?q=x&k=30&group=1")
    groups = page.locator("#results details.group")
    assert groups.count() >= 2
    first = groups.first
    assert "result" in first.locator("summary").inner_text() and "best" in first.locator("summary").inner_text()
    first.locator("summary").click()  # collapse, then expand again
    assert not first.locator(".card").first.is_visible()
    first.locator("summary").click()
    assert first.locator(".card").first.is_visible()
    total = int(page.get_attribute("#result-count", "data-total"))
    page.fill("#min_score", "100")
    page.dispatch_event("#min_score", "input")
    assert page.inner_text("#result-count").startswith(("0 results", "1 result ")) or \
        page.inner_text("#result-count").endswith(f"of {total}")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    ARTIFACTS.mkdir(exist_ok=True)
    page.dispatch_event("#min_score", "change")  # the slider is part of the address
    assert "min_score=100" in page.url
    page.reload()
    assert page.input_value("#min_score") == "100"
    page.fill("#min_score", "0")
    page.dispatch_event("#min_score", "input")
    page.dispatch_event("#min_score", "change")  # below the served floor: the query runs again
    page.wait_for_url(lambda url: "min_score" not in url)
    page.wait_for_selector("#results .card")
    assert page.inner_text("#result-count") == f"{total} results"
    page.screenshot(path=str(ARTIFACTS / f"search-grouped-{width}.png"), full_page=False)

    page.goto(f"{live_url}/?q1=first+event&q2=second+event&gap=3&k=5")
    moment = page.locator("#moments .moment").first
    head = moment.locator(".moment-head").inner_text()
    assert "A" in head and "B" in head and " s " in head
    assert moment.locator('.event-card[data-event="A"] .card').count() == 1
    assert moment.locator('.event-card[data-event="B"] .card').count() == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    moment.screenshot(path=str(ARTIFACTS / f"search-sequence-{width}.png"))
    context.close()


def test_queries_have_addresses_reload_back_and_forward(page, live_url, indexed):
    """A text query and an image-region query each live at a URL that gives the same results when reloaded;
    the query image and its region stay on the page; back and forward go between them."""
    def cards():
        page.wait_for_selector("#results .card")
        return [c.get_attribute("data-item") for c in page.locator("#results .card").all()]

    page.goto(live_url)
    page.fill("#q", "a bridge at dusk")
    page.click("#search-button")
    text_cards = cards()
    text_url = page.url
    assert "q=a+bridge+at+dusk" in text_url
    page.reload()
    assert cards() == text_cards

    jpg = DataLayout.from_data_dir(indexed).keyframes_dir / "long_shot" / "001.jpg"
    page.fill("#q", "")
    page.set_input_files("#image", str(jpg))
    page.wait_for_function("() => document.getElementById('preview-canvas').getBoundingClientRect().width > 50")
    canvas = page.locator("#preview-canvas").bounding_box()
    page.mouse.move(canvas["x"] + 5, canvas["y"] + 5)
    page.mouse.down()
    page.mouse.move(canvas["x"] + canvas["width"] * 0.6, canvas["y"] + canvas["height"] * 0.6, steps=5)
    page.mouse.up()
    box = page.input_value("#box")
    page.click("#search-button")
    region_cards = cards()
    region_url = page.url
    assert "image=" in region_url and f"box={box}" in region_url and "min_score" not in region_url
    assert page.is_visible("#preview-canvas") and page.input_value("#box") == box  # kept beside the results
    page.reload()
    assert cards() == region_cards and page.input_value("#box") == box
    page.screenshot(path=str(ARTIFACTS / "search-image-region-1280.png"), full_page=False)
    page.go_back()
    page.wait_for_url(text_url)
    assert cards() == text_cards
    page.go_forward()
    page.wait_for_url(region_url)
    assert cards() == region_cards
