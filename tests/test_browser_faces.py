"""Face search in headless Chromium, as a user does it: upload a group photo, pick two faces, see only the pictures
where both people are, each with its matched faces boxed; open one and read the n x m matrix. The collection is
indexed by offline.py and served by server.py, each in its own process."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, CHROMIUM
from tests.face_media import FACES, group_photo
from tests.processes import TINY_ARGS, cli, server_process

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture(scope="module")
def faces_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-faces")
    media = root / "media"
    media.mkdir()
    for name in ("obama_1", "obama_2", "biden_1", "astronaut_1"):
        shutil.copy(FACES / f"{name}.jpg", media)
    group_photo(media / "together.jpg", ["obama_2", "biden_1"], seed=1)
    group_photo(media / "other_pair.jpg", ["biden_1", "astronaut_1"], seed=2)
    done = cli("index", str(media), "--data-dir", str(root / "data"), "--pretrained", "none", *TINY_ARGS)
    assert done.returncode == 0, done.stderr
    query = root / "query.jpg"
    group_photo(query, ["obama_3", "biden_1"], seed=7)
    with server_process(root / "data") as base:
        yield base, query


@pytest.mark.parametrize("width", [1280, 390])
def test_pick_two_faces_and_see_only_pictures_with_both(page, faces_site, width):
    base, query = faces_site
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(base + "/")
    page.set_input_files("#image", str(query))
    page.click("#faces-button")
    page.wait_for_selector("#face-picker")
    boxes = page.locator("#face-picker .face-box")
    assert boxes.count() == 2
    assert page.locator("#results .card").count() == 0  # several faces: the page asks which before searching
    for i in range(2):
        page.locator(f"#face-picker input[name=face][value='{i}']").check()
    page.click("#face-search-button")
    page.wait_for_selector("#results .card")
    cards = page.locator("#results .card")
    assert cards.count() == 1
    assert "together.jpg" in cards.first.inner_text()
    page.wait_for_function("() => document.querySelector('#results .card .face-box.matched').style.width !== ''")
    drawn = page.eval_on_selector_all("#results .card .face-box.matched",
                                      "bs => bs.map(b => [b.style.width, b.getBoundingClientRect().width])")
    assert len(drawn) == 2 and all(w.endswith("%") and px > 5 for w, px in drawn), drawn
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the {width} px window"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"faces-search-{width}.png"), full_page=True)
    cards.first.locator("a").first.click()
    page.wait_for_selector("#face-matrix table")
    assert page.locator("#face-matrix td.assigned").count() == 2
    page.screenshot(path=str(ARTIFACTS / f"faces-matrix-{width}.png"), full_page=True)


def test_one_face_searches_at_once_and_nobody_says_not_found(page, faces_site, tmp_path):
    base, _ = faces_site
    page.goto(base + "/")
    page.set_input_files("#image", str(FACES / "obama_3.jpg"))
    page.click("#faces-button")
    page.wait_for_selector("#results .card")
    names = page.locator("#results .card .vid").all_inner_texts()
    assert set(names) == {"obama_1.jpg", "obama_2.jpg", "together.jpg"}, names
    assert page.locator("#min_score").input_value() == "93"  # the model's same-person level
    page.goto(base + "/")
    page.set_input_files("#image", str(FACES / "messi_1.jpg"))  # nobody in the collection
    page.click("#faces-button")
    page.wait_for_selector("#not-found")
    assert "Not found" in page.locator("#not-found").inner_text()
