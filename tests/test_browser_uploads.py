"""Uploading from the browser, in headless Chromium: log in, drop a zip of photos and a real video on the upload page,
watch the job reach 'done', find a photo of the zip and a moment of the video, delete the video from the collection
page and see it leave the results with its box listed as orphaned. Every page is looked at at 1280 and 390 px.

The jobs run as they do for users: the app's job worker starts an `offline.py job` process for each."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, CHROMIUM, TINY_CONFIG, add_users, browser_log_in, index_media, serve
from tests.test_jobs_processes import OPENCV_DATA, frame_of

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture(scope="module")
def site(tmp_path_factory, media_dir, tiny_encoder):
    from app import create_app
    from app.job_worker import start_job_worker

    data = tmp_path_factory.mktemp("browser-uploads")
    url = f"sqlite:///{data / 'instance' / 'framefinder.db'}"
    index_media(data, url, media_dir, tiny_encoder)
    application = create_app({"DATA_DIR": str(data), "DATABASE_URL": url, "MODEL_CONFIG": str(TINY_CONFIG),
                              "DEVICE": "cpu", "ENCODER": tiny_encoder, "LOGIN_RATE_LIMIT": "1000 per minute"})
    tokens = add_users(application.extensions["sessions"])
    worker = start_job_worker(application)
    with serve(application) as base:
        yield {"url": base, "tokens": tokens, "data": data, "app": application}
    worker.stop()


def _meta_names(header: str) -> str:
    """The file names a tus Upload-Metadata header carries (base64 values)."""
    import base64

    return " ".join(base64.b64decode(pair.split(" ", 1)[1]).decode() for pair in header.split(",") if " " in pair)


def _fits(page, width: int, what: str) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{what} is wider than {width} px"


def _shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(100)
        _fits(page, width, name)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def _wait_done(page) -> str:
    page.wait_for_selector("#job[data-status=done], #job[data-status=failed], #job[data-status=cancelled]",
                           timeout=240_000)
    return page.locator("#job-status").inner_text()


def _first_results(page, base: str, image: Path, n: int = 3) -> list[str]:
    page.goto(f"{base}/")
    page.set_input_files("#image", str(image))
    with page.expect_navigation():
        page.click("#search-button")
    return page.eval_on_selector_all("#results figure.card", f"cs => cs.slice(0, {n}).map(c => c.dataset.item)")


def test_drop_watch_search_delete(browser, site, tmp_path):
    base = site["url"]
    zpath = tmp_path / "holiday.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in ("fruits.jpg", "baboon.jpg", "HappyFish.jpg", "building.jpg"):
            zf.write(OPENCV_DATA / name, name)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    browser_log_in(page, base, "ann")
    page.goto(f"{base}/upload")
    assert "each at most 4.0 GB" in page.locator("#upload-limits").inner_text()
    page.set_input_files("#upload-files", [str(zpath), str(OPENCV_DATA / "Megamind.avi"), str(empty)])
    rows = page.locator("#upload-list li")
    assert rows.count() == 3
    assert "empty file (0 bytes)" in rows.nth(2).inner_text()  # refused before anything is sent
    _shoot(page, "upload")
    with page.expect_navigation(timeout=60_000):
        page.click("#upload-start")
    assert "/jobs/" in page.url
    assert _wait_done(page) == "done", page.locator("#job-message").inner_text()
    files = page.eval_on_selector_all("#job-files tbody tr", "rs => rs.map(r => r.innerText)")
    assert any("Megamind.avi" in f and "added" in f for f in files), files
    assert sum("holiday.zip/" in f and "added" in f for f in files) == 4, files
    assert int(page.locator("tr[data-stage=keyframes] .stage-count").inner_text()) >= 2
    link = page.locator("#job-files td.name a", has_text="Megamind.avi").get_attribute("href")
    assert link == "/collection/videos/Megamind", link  # each file links to the item it became
    assert page.locator("#job-search").is_visible() and not page.locator("#job-cancel").is_visible()
    _shoot(page, "job")

    found = _first_results(page, base, OPENCV_DATA / "fruits.jpg", 1)
    name = page.locator("#results figure.card figcaption").first.inner_text()
    assert found and found[0].startswith("image:") and "fruits.jpg" in name, (found, name)
    moment = frame_of(OPENCV_DATA / "Megamind.avi", 40, tmp_path / "moment.jpg")
    hits = _first_results(page, base, moment)
    assert hits[0].startswith("Megamind@"), hits

    client = site["app"].test_client()  # a box on the video's frame, through the API, as a script would
    r = client.post("/api/annotations", json={"item": hits[0], "box": [5, 5, 30, 20], "label": "hero"},
                    headers={"Authorization": f"Bearer {site['tokens']['ann']}"})
    assert r.status_code == 201, r.get_json()
    box_id = r.get_json()["id"]

    page.goto(f"{base}/collection")
    assert page.locator("#videos-table tr[data-video=Megamind]").count() == 1
    _shoot(page, "collection")
    page.click("#videos-table tr[data-video=Megamind] a")
    assert page.locator("#video-keyframes figure").count() >= 2
    _shoot(page, "collection-video")
    asked = []
    page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
    with page.expect_navigation():
        page.click("form.delete-form button")
    assert asked and "boxes on it are kept as orphans" in asked[0]
    assert _wait_done(page) == "done", page.locator("#job-message").inner_text()
    deleted = page.locator("#job-files tbody tr").first.inner_text()
    assert "deleted" in deleted and f"box {box_id}" in deleted and "hero" in deleted, deleted
    _shoot(page, "job-delete")
    page.goto(f"{base}/jobs")
    assert page.locator("#jobs-table tbody tr").count() == 2
    _shoot(page, "jobs")
    assert not any(h.startswith("Megamind@") for h in _first_results(page, base, moment, 10))
    page.goto(f"{base}/annotations?orphaned=1")
    assert f"{box_id}" in page.locator("main").inner_text()
    page.goto(f"{base}/collection")
    assert page.locator("#videos-table tr[data-video=Megamind]").count() == 0
    job = json.loads(client.get("/api/jobs", headers={"Authorization": f"Bearer {site['tokens']['ann']}"})
                     .get_data(as_text=True))["jobs"]
    assert [j["status"] for j in job] == ["done", "done"]
    context.close()


def test_the_upload_page_says_why_a_file_is_refused(browser, site, tmp_path):
    """A file that does not arrive keeps the page (no job is made behind the user's back) and says so; a fake video
    is sent, then refused by the server's check with its reason on the job's page."""
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(io.BytesIO(b"not a video" * 500).getvalue())
    lost = tmp_path / "lost.jpg"
    lost.write_bytes((OPENCV_DATA / "baboon.jpg").read_bytes())
    context = browser.new_context(viewport={"width": 390, "height": 900})
    page = context.new_page()
    browser_log_in(page, site["url"], "ann")
    page.goto(f"{site['url']}/upload")

    def refuse_lost(route):
        if route.request.method == "POST" and "lost.jpg" in route.request.headers.get("upload-metadata", "") + \
                _meta_names(route.request.headers.get("upload-metadata", "")):
            route.fulfill(status=415, content_type="application/json",
                          body=json.dumps({"error": "refused for the test", "status": 415}))
        else:
            route.continue_()

    page.route("**/api/uploads/tus", refuse_lost)
    page.set_input_files("#upload-files", [str(fake), str(lost)])
    page.click("#upload-start")
    page.wait_for_selector("#upload-partial:not([hidden])")
    assert "1 file(s) did not arrive: lost.jpg" in page.locator("#upload-error").inner_text()
    assert "refused for the test" in page.locator("#upload-list li").nth(1).inner_text()
    assert "/upload" in page.url
    page.unroute("**/api/uploads/tus")
    with page.expect_navigation(timeout=60_000):
        page.click("#upload-partial")  # go on with what arrived
    assert _wait_done(page) == "done"
    row = page.locator("#job-files tbody tr").first.inner_text()
    assert "failed" in row and "not a video" in row, row
    assert "nothing to index" in page.locator("#job-message").inner_text()
    context.close()
