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
