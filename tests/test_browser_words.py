"""Words in Debian's Chromium: a word shown on screen and a phrase spoken in the test video are found, each result
says why, the transcript line of the spoken moment seeks the video, and the OCR boxes can be hidden."""
from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, CHROMIUM, db_url, index_media, serve
from tests.text_media import SPEECH, caption_pictures, caption_video, have_tools

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or not have_tools(),
                                reason="needs Debian chromium, espeak-ng and the fonts")


@pytest.fixture(scope="module")
def words_app(tmp_path_factory, tiny_encoder):
    from app import create_app

    root = tmp_path_factory.mktemp("browser-words")
    media = root / "media"
    media.mkdir()
    caption_video(media / "news.mp4")
    caption_pictures(media / "signs")
    data = root / "data"
    index_media(data, db_url(data), media, tiny_encoder, words=True)
    return create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True})


@pytest.mark.parametrize("width", [1280, 390])
def test_words_on_screen_and_in_speech_are_found_and_explained(browser, words_app, width):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    with serve(words_app) as base:
        page.goto(f"{base}/?q=storm")
        first = page.locator("figure.card").first
        assert "storm" in first.locator(".why-ocr mark").first.inner_text().lower()
        page.wait_for_function("() => document.querySelector('figure.card .ocr-box').style.width !== ''")
        box = first.locator(".ocr-box").first.bounding_box()
        picture = first.locator("img").bounding_box()
        assert box and picture and box["width"] > 10 and picture["x"] <= box["x"] < picture["x"] + picture["width"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"words-results-ocr-{width}.png"), full_page=True)
        with_words = page.locator("figure.card[data-words='1']").count()
        page.locator("#min_score").fill("95")  # the slider filters pictures; results that matched words stay
        page.locator("#min_score").dispatch_event("input")
        assert with_words >= 2 and page.locator("figure.card[data-words='1']:not([hidden])").count() == with_words
        assert page.locator("figure.card:not([data-words]):not([hidden])").count() == 0
        assert page.evaluate("document.documentElement.scrollWidth") <= width

        spoken = SPEECH[1]  # "the president will speak tomorrow morning", at 7.5 s
        page.goto(f"{base}/?q=" + urllib.parse.quote('"president will speak"'))
        why = page.locator("figure.card").first.locator("a.why-asr")
        assert "said at 00:00:0" in why.inner_text() and "president" in why.locator("mark").first.inner_text()
        page.screenshot(path=str(ARTIFACTS / f"words-results-speech-{width}.png"), full_page=True)
        why.click()
        page.wait_for_selector("#transcript li.now")
        assert "president will speak" in page.inner_text("#transcript li.now")
        page.wait_for_function("() => document.getElementById('player').readyState >= 1", timeout=20000)
        start = page.evaluate("document.getElementById('player').currentTime")
        assert abs(start - spoken.at) <= 1.0  # the player opens where the words were said

        later = page.locator("#transcript li", has_text="watching").locator("button.seek")
        later.click()
        page.wait_for_function("() => Math.abs(document.getElementById('player').currentTime - "
                               f"{SPEECH[2].at}) < 1.0", timeout=10000)
        assert "watching" in page.inner_text("#transcript li.now")
        page.screenshot(path=str(ARTIFACTS / f"words-keyframe-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width

        page.goto(f"{base}/?q=ocr:storm")
        page.locator("figure.card a").first.click()
        boxes = page.locator(".frame-wrap .ocr-box")
        page.wait_for_function("() => document.querySelector('.frame-wrap .ocr-box').style.width !== ''")
        assert boxes.count() >= 1 and boxes.first.is_visible()
        assert "storm" in page.inner_text("#ocr-lines").lower()
        page.uncheck("#ocr-toggle")
        assert not boxes.first.is_visible()
        page.check("#ocr-toggle")
        assert boxes.first.is_visible()

        page.goto(f"{base}/collection")  # what has been read, and by which models
        told = page.inner_text("#collection-words")
        assert "on-screen lines" in told and f"{len(SPEECH)} speech segments" in told and "pocketsphinx" in told
        page.screenshot(path=str(ARTIFACTS / f"words-collection-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    context.close()
