"""Framefinder's Flask application: `create_app(config)` builds it (Flask's app-factory pattern)."""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, IntegerConverter, ValidationError

from app.items import BadItemRef, ItemRef
from app.numbers import MAX_ID
from app.paths import PROJECT_ROOT
from app.settings import FIELDS, Settings
from app.vectors import IndexDamaged
from app.words import highlight

csrf = CSRFProtect()


def _secret_key(instance_dir: Path) -> str:
    """A random key kept in the instance folder, so sessions survive restarts. A missing, empty or short key
    (a damaged file) is replaced, which ends the sessions signed with the old one."""
    path = instance_dir / "secret_key"
    key = path.read_text(errors="replace").strip() if path.is_file() else ""
    if len(key) < 32:
        if path.exists() or path.is_symlink():
            logging.getLogger("framefinder").warning("%s was empty or too short; a new key was made", path)
            path.unlink()
        instance_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        key = path.read_text().strip()
    return key


def create_app(config: dict | None = None, settings: Settings | None = None) -> Flask:
    """`settings`: what the entry point loaded (flags > environment > instance/config.py > defaults). Without
    it, upper-case setting names in `config` count as flags (DATA_DIR, DATABASE_URL, ...); other keys of
    `config` go to Flask as they are (TESTING; ENCODER hands in an already loaded encoder)."""
    config = dict(config or {})
    if settings is None:
        settings = Settings.load({f.name: config.pop(f.name.upper()) for f in FIELDS if f.name.upper() in config})
    # Flask's own static route serves the page assets only (assets/ at /static/...); the collection's files in
    # the data dir (static/ by default) are reachable only through the catalogue's checked, gated routes.
    app = Flask(__name__, template_folder=str(PROJECT_ROOT / "templates"), static_folder=str(PROJECT_ROOT / "assets"),
                static_url_path="/static")
    app.config.update(RESULTS_PER_PAGE=50, LOGIN_RATE_LIMIT="10 per minute", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", WTF_CSRF_TIME_LIMIT=None)
    app.config.update(settings.extra)
    app.config.update(DATA_DIR=settings.data_dir, DATABASE_URL=settings.database_url,
                      MODEL_CONFIG=settings.model_config, DEVICE=settings.device,
                      BASELINE_WEIGHTS=settings.baseline_weights, SEARCH_REQUIRES_LOGIN=settings.search_requires_login,
                      MAX_CONTENT_LENGTH=settings.max_upload_mb * 1024 * 1024,
                      INDEX_CHECK_SECONDS=settings.index_check_seconds)
    app.config.update(config)
    app.extensions["settings"] = settings
    from app import milvus_store

    milvus_store.configure(settings)  # the Milvus URI of vectors=milvus, from any of the settings' sources
    layout = settings.layout
    layout.ensure()
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _secret_key(layout.instance_dir)
    app.extensions["layout"] = layout
    app.url_map.converters["int"] = BoundedInt  # before any route: every <int:...> is a sane id
    app.url_map.converters["item"] = ItemConverter
    app.add_template_filter(item_label)
    app.add_template_filter(weights_name)
    app.add_template_filter(filesize)
    app.add_template_filter(highlight)
    from app.views.auth import can_upload

    app.jinja_env.globals["can_upload"] = can_upload
    csrf.init_app(app)

    from app.services import init_services

    init_services(app, layout)

    from app.views import (
        annotate,
        annotations_api,
        api,
        auth,
        collection,
        detections,
        evaluation,
        faces,
        media,
        people,
        search,
        uploads,
    )

    auth.init_auth(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(search.bp)
    app.register_blueprint(evaluation.bp)
    app.register_blueprint(annotate.bp)
    app.register_blueprint(people.bp)
    app.register_blueprint(detections.bp)  # machine boxes' API (CSRF checked per call) and /categories
    app.register_blueprint(annotations_api.bp)
    csrf.exempt(annotations_api.bp)  # checked per call: session calls need the token, bearer-token calls do not
    app.register_blueprint(uploads.bp)
    csrf.exempt(uploads.bp)  # the same: its API checks per call (require_role); its pages are GETs
    app.register_blueprint(collection.bp)
    csrf.exempt(collection.bp)  # its API checks per call; its two forms call csrf.protect() themselves
    _search_login_gate(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(faces.bp)
    app.register_blueprint(media.bp)
    csrf.exempt(api.bp)  # read-only JSON queries; state-changing APIs get their own protection
    csrf.exempt(faces.bp)  # a face search changes nothing
    app.add_url_rule("/favicon.ico", "favicon", lambda: app.send_static_file("favicon.svg"))
    _register_errors(app)
    _security_headers(app)
    _collection_notices(app)
    logging.getLogger("framefinder").setLevel(logging.INFO)
    return app


def weights_notice(meta: dict) -> str | None:
    """The sentence every page shows while the collection's vectors come from random weights."""
    if str(meta.get("pretrained", "")).lower() != "none":
        return None
    from app.encoders import weights_hint

    return (f"This collection was indexed with random weights (--pretrained none): an image finds its "
            f"near-copies and words on screen or in speech are found, but describing a picture in words and "
            f"the similarity scores mean nothing. For real search, get "
            f"{weights_hint(meta['model'])}, then index into a new folder: .venv/bin/python offline.py index PATHS "
            f"--pretrained /path/to/open_clip_pytorch_model.bin --data-dir NEW_DIR.")


def _collection_notices(app: Flask) -> None:
    cache: dict[str, str | None] = {}

    @app.context_processor
    def notices():
        from app.services import collection

        try:
            snap = collection().snapshot()
        except Exception:  # noqa: BLE001 - a broken index is reported by the pages themselves
            return {"weights_notice": None}
        if snap is None:
            return {"weights_notice": None}
        key = snap.bundle.generation
        if key not in cache:
            cache.clear()
            cache[key] = weights_notice(snap.bundle.meta)
        return {"weights_notice": cache[key]}


class BoundedInt(IntegerConverter):
    """<int:...> in routes, limited to what a database id can be: 99999999999999999999999 is a 404."""

    def __init__(self, url_map, fixed_digits: int = 0, min: int | None = None,  # noqa: A002 - werkzeug's names
                 max: int | None = None, signed: bool = False) -> None:  # noqa: A002
        super().__init__(url_map, fixed_digits, min, MAX_ID if max is None else max, signed)
        self.regex = "-?[0-9]+" if signed else "[0-9]+"  # werkzeug's \\d also matches '١' and '٣'



class ItemConverter(BaseConverter):
    """<item:ref> in routes: an ItemRef ('<video_id>@<frame_idx>' or 'image:<content_hash>'); anything else is
    a 404 before the view runs."""

    regex = r"[^/]{1,400}"

    def to_python(self, value: str) -> ItemRef:
        try:
            return ItemRef.parse(value)
        except BadItemRef:
            raise ValidationError() from None

    def to_url(self, value: ItemRef | str) -> str:
        return super().to_url(str(value))


def weights_name(pretrained: str | None) -> str:
    """A weights tag as it is, a checkpoint file by its name only: pages never show the server's paths."""
    text = str(pretrained or "")
    return text.replace("\\", "/").rsplit("/", 1)[-1] if "/" in text or "\\" in text else text


def filesize(n: int | float | None) -> str:
    """Bytes as people read them: 812 KB, 1.2 MB, 3.4 GB (never '0.0 MB' for a small file)."""
    n = float(n or 0)
    for unit, size in (("GB", 1024**3), ("MB", 1024**2)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{max(1, round(n / 1024)) if n else 0} KB"


def item_label(item: ItemRef | str) -> str:
    """How a page names an item in words: 'L01_V001 · frame 1234', or the image's short hash."""
    try:
        ref = item if isinstance(item, ItemRef) else ItemRef.parse(item)
    except BadItemRef:
        return str(item)
    return f"{ref.video_id} · frame {ref.frame_idx}" if ref.is_frame else f"image {ref.image_hash[:12]}"


# The pages' own scripts and styles are files under /static; nothing inline runs, nothing embeds the pages.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def _security_headers(app: Flask) -> None:
    @app.after_request
    def headers(response):
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def _search_login_gate(app: Flask) -> None:
    """Searching is open to anyone unless SEARCH_REQUIRES_LOGIN is set."""
    @app.before_request
    def gate():
        from flask_login import current_user

        if not app.config["SEARCH_REQUIRES_LOGIN"] or current_user.is_authenticated:
            return None
        if request.endpoint in ("auth.login", "static", "favicon") or request.endpoint is None:
            return None
        return app.login_manager.unauthorized()


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def _register_errors(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        return _error(400, f"The form is missing a valid CSRF token ({exc.description}). Reload the page.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        messages = {413: f"The upload is larger than the limit of "
                         f"{app.config['MAX_CONTENT_LENGTH'] // (1024 * 1024)} MB.",
                    429: f"Too many attempts ({exc.description}); wait a minute and try again."}
        return _error(exc.code or 500, messages.get(exc.code, exc.description))

    @app.errorhandler(IndexDamaged)
    def index_damaged(exc: IndexDamaged):
        app.logger.error("%s", exc)
        return _error(503, f"The search index cannot be read: {exc}")

    @app.errorhandler(OperationalError)
    def database_busy(exc: OperationalError):
        if "locked" in str(exc.orig or exc):
            return _error(503, "The database is busy with a large write (an import or an index run); try again "
                               "in a moment.")
        app.logger.exception("database error")
        return _error(500, "Something went wrong on the server; the error was logged.")

    @app.errorhandler(RecursionError)
    def too_deep(exc: RecursionError):
        return _error(400, "The request is nested too deeply to read.")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unexpected error")
        return _error(500, "Something went wrong on the server; the error was logged.")


def _error(status: int, message: str):
    if _wants_json():
        return jsonify({"error": message, "status": status}), status
    return render_template("error.html", status=status, message=message), status
