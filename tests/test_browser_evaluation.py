"""The /evaluation page in headless Chromium: run an evaluation, open the worst query, see the labels."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, CHROMIUM, TINY_CONFIG, add_users, browser_log_in, serve
from tests.eval_fixtures import EXPECTED, build_oxford_fixture

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture(scope="module")
def eval_url(eval_collection, tiny_encoder):
    from app import create_app

    build_oxford_fixture(eval_collection, tiny_encoder, eval_collection / "groundtruth" / "oxford_browser")
    application = create_app({"DATA_DIR": str(eval_collection), "MODEL_CONFIG": str(TINY_CONFIG), "DEVICE": "cpu",
                              "BASELINE_WEIGHTS": "none"})  # CSRF on, as in production
    add_users(application.extensions["sessions"])
    with serve(application) as url:
        yield url


def test_run_an_evaluation_and_open_the_worst_query(page, eval_url):
    browser_log_in(page, eval_url, "boss")
    page.goto(f"{eval_url}/evaluation")
    page.select_option("#gt", "oxford_browser")
    page.select_option("#model", "clip")
    page.click("#run-button")
    page.wait_for_selector("#summary", timeout=60_000)  # the progress page reloads into the results
    headline = page.locator('#summary tr[data-protocol="standard"] td[data-metric="mAP"]').inner_text()
    assert headline == f"{EXPECTED['standard']['mAP']:.4f}"
    assert page.locator("svg.pr-curve polyline").count() >= 3
    page.set_viewport_size({"width": 1280, "height": 1100})
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "evaluation-run.png"), full_page=True)
    page.locator("#queries a.query-link").first.click()  # worst first
    page.wait_for_selector("#ranked .card")
    assert page.locator("h1").inner_text() == "q3_late"
    colours = page.eval_on_selector_all(
        "#ranked .card", "cards => cards.map(c => [c.dataset.label, getComputedStyle(c).borderTopColor])")
    by_label = {label: colour for label, colour in colours}
    assert by_label["good"] == "rgb(46, 204, 113)" and by_label["wrong"] == "rgb(230, 57, 70)"
    assert [label for label, _ in colours[:5]] == ["wrong", "wrong", "good", "wrong", "good"]
    page.screenshot(path=str(ARTIFACTS / "evaluation-query.png"), full_page=True)


def test_a_malformed_upload_shows_a_message_not_a_traceback(page, eval_url, tmp_path):
    bad = tmp_path / "moments.csv"
    bad.write_text("query_id,query,video_id\n1,a car,v\n")
    browser_log_in(page, eval_url, "boss")
    page.goto(f"{eval_url}/evaluation")
    page.set_input_files("#gt_file", str(bad))
    page.click("#run-button")
    alert = page.locator("p.error[role=alert]")
    alert.wait_for()
    assert "moments.csv:1: missing column(s) start_frame, end_frame" in alert.inner_text()


def _a_finished_run(page, eval_url) -> str:
    """The id of a finished evaluation run, made here when the collection has none (no test relies on another)."""
    page.goto(f"{eval_url}/evaluation")
    runs = page.eval_on_selector_all("table.runs a[href*='/evaluation/runs/']",
                                     "as => as.map(a => a.getAttribute('href'))")
    ids = [h.split("/")[3] for h in runs if h.split("/")[3].isdigit()]
    if ids:
        return ids[0]
    page.select_option("#gt", "oxford_browser")
    page.select_option("#model", "clip")
    page.click("#run-button")
    page.wait_for_selector("#summary", timeout=60_000)
    return page.url.rstrip("/").split("/")[-1].split("?")[0]


PAGES = ("/", "/?q=x&k=20&group=1", "ITEM_FRAME", "ITEM_IMAGE", "ANNOTATE", "/annotations", "/labels/none",
         "/evaluation", "/evaluation/runs/RUN", "/evaluation/runs/RUN/queries/0", "/evaluation/compare?a=RUN&b=RUN",
         "/login", "/no-such-page")


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_fits_the_screen(browser, eval_url, width):
    """No page scrolls sideways at 1280 px or on a 390 px phone (wide tables scroll inside their own box);
    a screenshot of each is kept for a look."""
    import json
    import urllib.request

    results = json.load(urllib.request.urlopen(f"{eval_url}/api/search?q=x&k=100"))["results"]
    frame = next(r["item"] for r in results if r["video_id"])
    image = next(r["item"] for r in results if not r["video_id"])
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    browser_log_in(page, eval_url, "boss")
    run = _a_finished_run(page, eval_url)
    wide = []
    for path in PAGES:
        url = (path.replace("ITEM_FRAME", f"/item/{frame}").replace("ITEM_IMAGE", f"/item/{image}")
               .replace("ANNOTATE", f"/annotate/{frame}").replace("RUN", run))
        page.goto(f"{eval_url}{url}")
        page.wait_for_load_state("networkidle")
        if page.evaluate("document.documentElement.scrollWidth") > width:
            wide.append(url)
        assert "pytest-of-" not in page.content(), f"{url} shows a server path"
        name = url.strip("/").split("?")[0].replace("/", "_").replace(":", "_").replace("@", "_") or \
            ("search_results" if "?" in url else "search")
        (ARTIFACTS / "pages").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "pages" / f"{name}-{width}.png"), full_page=False)
    assert not wide, f"wider than {width} px: {wide}"
    context.close()
