"""A served collection per database backend for the hostile-request tests (one module-scoped app each)."""
from __future__ import annotations

import shutil

import pytest

from tests.conftest import BACKENDS, add_users, database_env, index_media


@pytest.fixture(scope="module", params=BACKENDS)
def hostile(request, tmp_path_factory, media_dir, tiny_encoder):
    """A collection (its own copy of the media, which tests may tamper with) served by an app; users added."""
    from app import create_app

    root = tmp_path_factory.mktemp(f"hostile-{request.param}")
    media = root / "media"
    shutil.copytree(media_dir, media)
    data = root / "data"
    with database_env(request.param, data) as url:
        index_media(data, url, media, tiny_encoder)
        app = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True,
                          "LOGIN_RATE_LIMIT": "1000 per minute"})
    tokens = add_users(app.extensions["sessions"])
    return {"app": app, "tokens": tokens, "backend": request.param, "data": data, "media": media, "url": url}


def bearer(env: dict, name: str) -> dict:
    return {"Authorization": f"Bearer {env['tokens'][name]}"}
