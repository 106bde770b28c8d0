"""Shared fixtures: a tiny open_clip model with random weights, TransNetV2, generated media.

Random CLIP weights are enough for pipeline tests (an exact keyframe still finds itself);
they say nothing about retrieval quality, and the tests that use them say so in their names.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TINY_CONFIG = ROOT / "tests" / "data" / "framefinder-tiny.json"
TINY_MODEL = "framefinder-tiny"
os.environ.setdefault("FRAMEFINDER_MODEL_CONFIG", str(TINY_CONFIG))


def _worker_database() -> None:
    """Under pytest-xdist each worker gets its own PostgreSQL database (test modules drop and recreate the schema,
    which two workers must not do to each other): framefinder_test_gw0, _gw1, ... created when missing."""
    worker, url = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("TEST_DATABASE_URL")
    if not worker or not url:
        return
    from sqlalchemy import create_engine, make_url, text

    base = make_url(url)
    name = f"{base.database}_{worker}"
    engine = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar() is None:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    os.environ["TEST_DATABASE_URL"] = base.set(database=name).render_as_string(hide_password=False)


_worker_database()

from app.sample import ShotPlan, make_image, make_video  # noqa: E402

# Two videos with hard cuts and dissolves whose frames are known exactly.
PLANS = {
    "cuts_and_dissolve": [ShotPlan(60), ShotPlan(50), ShotPlan(70, dissolve_in=15), ShotPlan(45), ShotPlan(30),
                          ShotPlan(40, dissolve_in=20)],
    "long_shot": [ShotPlan(150), ShotPlan(60), ShotPlan(55, dissolve_in=18)],
}
# VP8 WebM plays in Chromium (the browser tests play it); MPEG-4 Part 2 .mp4 covers the usual container.
VIDEO_FILES = {"cuts_and_dissolve": "cuts_and_dissolve.mp4", "long_shot": "long_shot.webm"}


# The longest test files (measured: `pytest --durations`), run first: the parallel workers (scripts/test.sh) take
# files in collection order, so a long file left for last would keep one worker busy while the other waits.
LONGEST_FIRST = ("test_ray_ingest.py", "test_words.py", "test_milvus.py", "test_jobs_processes.py",
                 "test_first_hour_processes.py",
                 "test_resume_and_aic_random_weights.py", "security/test_security_reindex.py",
                 "security/test_security_files.py", "test_faces.py", "test_browser_uploads.py", "test_people.py",
                 "test_concepts_random_weights.py", "test_shots.py", "test_objects_random_weights.py",
                 "test_browser_annotate.py", "security/test_security_requests.py", "test_browser_faces.py",
                 "test_evaluation_random_weights.py", "test_browser_words.py")


def pytest_collection_modifyitems(config, items):
    """Longest files first (each file's tests stay together and in their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(pair):
        index, item = pair
        path = item.path.relative_to(ROOT / "tests").as_posix()
        return rank.get(path, len(rank)), index

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


@pytest.fixture(scope="session")
def tiny_encoder():
    from app.encoders import ClipEncoder, register_model_configs

    register_model_configs(TINY_CONFIG)
    return ClipEncoder(TINY_MODEL, "none", "cpu")


@pytest.fixture(scope="session")
def transnet():
    from app.shots import load_transnet

    return load_transnet("cpu")


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """videos/*.mp4 with ground truth, images/*.jpg; never modified by tests (copy before changing)."""
    root = tmp_path_factory.mktemp("media")
    truths = {}
    for seed, (name, plan) in enumerate(PLANS.items(), start=1):
        truths[name] = make_video(root / "videos" / VIDEO_FILES[name], plan, seed=seed)
    for i in range(3):
        make_image(root / "images" / f"still_{i}.jpg", i)
    media_dir_truths[str(root)] = truths
    return root


media_dir_truths: dict[str, dict] = {}


@pytest.fixture(scope="session")
def truths(media_dir):
    return media_dir_truths[str(media_dir)]


def db_url(data_dir: Path) -> str:
    """The catalogue URL of a collection, as the settings resolve it (TEST_DATABASE_URL runs set DATABASE_URL)."""
    from app.settings import Settings

    return Settings.load({"data_dir": data_dir}).database_url


def frame_item(where, video_id: str, n: int) -> str:
    """The item name ('<video_id>@<frame_idx>') of a video's n-th keyframe in the current catalogue of a
    collection (its data dir) or of an app's sessions."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from app.models import Keyframe, Video

    query = select(Keyframe.frame_idx).join(Video).where(Video.video_id == video_id, Keyframe.n == n)
    if isinstance(where, Path):
        engine = create_engine(db_url(where))
        with Session(engine) as s:
            frame = s.scalar(query)
        engine.dispose()
    else:
        with where() as s:
            frame = s.scalar(query)
    assert frame is not None, f"{video_id} has no keyframe {n}"
    return f"{video_id}@{frame}"


@pytest.fixture(scope="session")
def kf(indexed):
    """'<video>/<n>' (the n-th keyframe of the test media, as indexed by every fixture) -> its item name."""
    cache: dict[str, str] = {}

    def item(name: str) -> str:
        if name not in cache:
            video, _, n = name.rpartition("/")
            cache[name] = frame_item(indexed, video, int(n))
        return cache[name]
    return item


# Reading words (OCR, speech) is on by default; the tests of everything else leave it out to keep the suite short
# (tests/test_words.py and the upload jobs run it as a user does).
NO_WORDS = ["--no-ocr", "--no-asr"]


def index_args(data_dir: Path) -> list[str]:
    return ["--data-dir", str(data_dir), "--model", TINY_MODEL, "--model-config", str(TINY_CONFIG),
            "--pretrained", "none", "--device", "cpu", "--no-progress", *NO_WORDS]


@pytest.fixture(scope="session")
def indexed(tmp_path_factory, media_dir, tiny_encoder) -> Path:
    """A collection indexed from the test videos and images (tiny random-weight CLIP)."""
    data = tmp_path_factory.mktemp("collection")
    index_media(data, db_url(data), media_dir, tiny_encoder)
    return data


def index_media(data: Path, url: str, media: Path, encoder, words: bool = False):
    """Index `media` into a collection at `data` whose database is `url` (with OCR and speech when `words`);
    returns its sessionmaker."""
    from app.db import open_database
    from app.indexer import IndexOptions, run_index
    from app.paths import DataLayout

    layout = DataLayout.from_data_dir(data)
    layout.ensure()
    sessions = open_database(url, layout.data_dir)
    summary = run_index(layout, [media], IndexOptions(model=TINY_MODEL, pretrained="none", device="cpu",
                                                      interval_s=2.0, progress=False, ocr=None if words else False,
                                                      asr=None if words else False), sessions, encoder=encoder)
    assert not summary.failed
    return sessions


@pytest.fixture(scope="session")
def app(indexed, tiny_encoder):
    from app import create_app

    application = create_app({"DATA_DIR": str(indexed), "ENCODER": tiny_encoder, "TESTING": True})
    return application


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_encoder) -> Path:
    """The tiny model's random weights saved as a checkpoint file, so every process that loads
    `--pretrained <this file>` (CLI, server) gets the very same network."""
    import torch

    path = tmp_path_factory.mktemp("weights") / "framefinder-tiny-random.pt"
    torch.save(tiny_encoder.model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def eval_collection(tmp_path_factory, media_dir, tiny_checkpoint) -> Path:
    """The test media indexed with the tiny checkpoint through `offline.py index` (for evaluations)."""
    import offline

    data = tmp_path_factory.mktemp("eval-collection")
    args = index_args(data)
    args[args.index("--pretrained") + 1] = str(tiny_checkpoint)
    assert offline.main(["index", str(media_dir), *args]) == 0
    return data


CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


@contextmanager
def serve(application):
    """The app on a real HTTP server on a free local port (for the browser)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--no-first-run", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    yield pg
    context.close()


PASSWORD = "correct horse battery"
USERS = {"boss": "admin", "ann": "annotator", "bob": "annotator", "vic": "viewer"}


def add_users(sessions) -> dict[str, str]:
    """The test accounts (all with PASSWORD); returns name -> personal API token."""
    from sqlalchemy import select

    from app import accounts
    from app.models import User

    tokens = {}
    with sessions() as session:
        for name, role in USERS.items():
            if session.scalar(select(User).where(User.name == name)) is None:
                accounts.add(session, name, PASSWORD, role)
            tokens[name] = accounts.issue_token(session, name)
    return tokens


def login(client, name: str, password: str = PASSWORD):
    """Log a test client in through the real form (CSRF token included)."""
    import re

    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token})


def browser_log_in(page, base: str, name: str) -> None:
    """Log a browser page in through the login form."""
    page.goto(f"{base}/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("#login-button")
    page.wait_for_selector("#who")


def csrf_of(client) -> str:
    import re

    page = client.get("/login").get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


def reset_postgres(url: str) -> None:
    """An empty public schema, so every test module starts from `alembic upgrade head`."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("TEST_DATABASE_URL") else [])


@contextmanager
def database_env(backend: str, data_dir: Path):
    """DATABASE_URL for one backend while a collection and its app are set up."""
    url = os.environ["TEST_DATABASE_URL"] if backend == "postgresql" else \
        f"sqlite:///{data_dir / 'instance' / 'framefinder.db'}"
    if backend == "postgresql":
        reset_postgres(url)
    old = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    try:
        yield url
    finally:
        if old is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = old
