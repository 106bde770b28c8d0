"""The People page in headless Chromium: real faces clustered by `offline.py index`, named through the page's form,
shown with their thumbnails at 1280 and 390 px; identity mAP of the named people run from /evaluation."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, CHROMIUM, TINY_CONFIG, add_users, browser_log_in, serve
from tests.test_people import face_media, index

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from app import create_app

    root = tmp_path_factory.mktemp("browser-people")
    index(face_media(root / "media"), root / "data")
    application = create_app({"DATA_DIR": str(root / "data"), "MODEL_CONFIG": str(TINY_CONFIG), "DEVICE": "cpu",
                              "LOGIN_RATE_LIMIT": "1000 per minute"})  # CSRF on, as in production
    add_users(application.extensions["sessions"])
    with serve(application) as url:
        yield {"url": url, "sessions": application.extensions["sessions"]}


def _sections(page) -> list[dict]:
    return page.eval_on_selector_all("section.person", """ss => ss.map(s => ({
        id: s.dataset.person, name: s.dataset.name, faces: +s.dataset.faces,
        title: s.querySelector('h2').innerText,
        thumbs: [...s.querySelectorAll('.faces img')].map(i => i.complete && i.naturalWidth > 0),
        search: (s.querySelector('a.search-link') || {}).href || null}))""")


def _name(page, person_id: str, name: str) -> None:
    form = page.locator(f"#person-{person_id} form.name-form")
    form.locator("input[name=name]").fill(name)
    with page.expect_navigation():
        form.locator("button[type=submit]").click()


def test_people_page_names_clusters_and_shows_their_faces(browser, site):
    url = site["url"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    browser_log_in(page, url, "ann")
    page.goto(f"{url}/people")
    people = _sections(page)
    assert [p["faces"] for p in people] == [5, 2, 2]
    assert all(p["title"].startswith("Unnamed person") for p in people)
    assert "1 face in no person" in page.locator("#unassigned").inner_text()
    _name(page, people[0]["id"], "Barack Obama")
    notice = page.locator("main p.notice").first.inner_text()
    assert notice == f"Unnamed person {people[0]['id']} is now named Barack Obama."
    _name(page, people[1]["id"], "Second Person")
    page.wait_for_load_state("networkidle")
    named = _sections(page)
    assert [(p["name"], p["faces"]) for p in named[:2]] == [("Barack Obama", 5), ("Second Person", 2)]
    assert all(all(p["thumbs"]) and len(p["thumbs"]) == p["faces"] for p in named), named
    assert named[0]["search"].endswith("/?person=Barack+Obama")
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{url}/people")
        page.wait_for_load_state("networkidle")
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"/people is wider than {width} px"
        assert all(all(p["thumbs"]) for p in _sections(page))
        page.screenshot(path=f"/tmp/people-{width}.png", full_page=True)
        page.goto(f"{url}/people/{named[0]['id']}")
        page.wait_for_load_state("networkidle")
        assert page.locator("#person-title").inner_text() == "Barack Obama"
        assert page.locator("#person-faces img").count() == 5
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"a person's page is wider than {width}"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"person-{width}.png"), full_page=True)
    # a bad name shows its reason on the page (the browser's own checks set aside)
    page.goto(f"{url}/people")
    page.eval_on_selector(f"#person-{named[0]['id']} .name-form input[name=name]",
                          "i => { i.removeAttribute('required'); i.removeAttribute('maxlength'); i.value = '   '; }")
    with page.expect_navigation():
        page.locator(f"#person-{named[0]['id']} .name-form button[type=submit]").click()
    assert "the name is empty" in page.locator("#people-error").inner_text()
    context.close()


def test_identity_map_on_the_evaluation_page(page, site):
    from app.face_eval import identity_map

    url = site["url"]
    browser_log_in(page, url, "ann")
    page.goto(f"{url}/people")
    for p in _sections(page):
        if not p["name"] and p["faces"] >= 2:  # when this test runs alone
            _name(page, p["id"], f"Person {p['id']}")
    with site["sessions"]() as s:
        expected = identity_map(s)
    page.click("#logout-button")
    browser_log_in(page, url, "boss")
    page.goto(f"{url}/evaluation")
    page.select_option("#gt", "@people")
    assert page.locator("#gt option[value='@people']").inner_text() == "Named people (faces)"
    page.click("#run-button")
    page.wait_for_selector("#summary", timeout=60_000)  # the progress page reloads into the results
    cell = page.locator('#summary tr[data-protocol="identity"] td[data-metric="mAP"]').inner_text()
    assert cell == f"{expected['mAP']:.4f}"
    rows = page.locator("#people-ap tbody tr").count()
    assert rows == expected["n_people"] >= 2
    page.screenshot(path=str(ARTIFACTS / "evaluation-identity.png"), full_page=True)
    page.goto(f"{url}/evaluation")
    assert "@people" in page.locator("table.runs").inner_text()
