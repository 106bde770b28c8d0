"""Result URLs built once a request (app.views.query.ref_url) are exactly what Flask's url_for builds, for the
video ids users give their files: spaces, unicode, percent signs, question marks, hashes, plus signs."""
from __future__ import annotations

from flask import url_for

from app import create_app
from app.items import ItemRef
from app.settings import Settings
from app.views.query import ref_url

VIDEO_IDS = ["L01_V001", "my video", "Hà Nội 2024", "50%_off", "what?", "#1", "a+b", "x&y=z", "tab\there", "日本語"]


def test_ref_url_is_url_for(tmp_path):
    app = create_app({"TESTING": True}, settings=Settings.load({"data_dir": tmp_path / "data"}))
    refs = [ItemRef.frame(v, n) for v in VIDEO_IDS for n in (0, 7, 123456)] + [ItemRef.image("ab" * 20)]
    with app.test_request_context("/"):
        for endpoint in ("media.item_picture", "media.item_page"):
            for ref in refs:
                assert ref_url(endpoint, ref) == url_for(endpoint, ref=ref)
                assert ref_url(endpoint, str(ref)) == url_for(endpoint, ref=str(ref))
