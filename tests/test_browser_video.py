"""The keyframe page's player in Debian's Chromium: an old-codec video plays through its proxy, seeks to
the keyframe's time, and a video that cannot play says so instead of showing a dead 0:00 player."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.paths import DataLayout
from tests.conftest import ARTIFACTS, CHROMIUM, db_url, frame_item, index_media, serve

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


def _player_state(page) -> dict:
    page.wait_for_function("() => { const v = document.getElementById('player'); "
                           "return (v && v.readyState >= 1) || !document.getElementById('player-error').hidden; }",
                           timeout=20000)
    return page.evaluate("() => { const v = document.getElementById('player'); return {ready: v.readyState, "
                         "duration: v.duration, time: v.currentTime, error: v.error && v.error.code, "
                         "message_hidden: document.getElementById('player-error').hidden}; }")


@pytest.mark.parametrize("width", [1280, 390])
def test_old_codec_video_plays_from_the_keyframe_time(browser, app, indexed, truths, width, kf):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    with serve(app) as base:
        page.goto(f"{base}/item/{kf('cuts_and_dissolve/2')}")
        state = _player_state(page)
        assert state["message_hidden"] and state["error"] is None
        assert state["duration"] == pytest.approx(truths["cuts_and_dissolve"].frames / 25.0, abs=0.1)
        expected = float(page.get_attribute("#player", "src").split("#t=")[1])
        assert state["time"] == pytest.approx(expected, abs=0.05)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"keyframe-video-{width}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    context.close()


def test_a_video_that_cannot_play_says_why(browser, tmp_path, media_dir, tiny_encoder):
    from app import create_app

    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(media_dir / "videos" / "cuts_and_dissolve.mp4", media / "old_codec.mp4")
    data = tmp_path / "data"
    index_media(data, db_url(data), media, tiny_encoder)
    DataLayout.from_data_dir(data).proxy_path("old_codec").unlink()  # as if the proxy could not be made
    application = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True})
    page = browser.new_page()
    with serve(application) as base:
        page.goto(f"{base}/item/{frame_item(data, 'old_codec', 1)}")
        state = _player_state(page)
        assert not state["message_hidden"]
        message = page.inner_text("#player-error")
        assert "cannot play" in message and "old_codec.mp4" in message
        assert page.locator(".strip").count() == 1
        page.screenshot(path=str(ARTIFACTS / "keyframe-video-unplayable.png"), full_page=True)
    page.close()
