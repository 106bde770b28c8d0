"""Logging in and out, and who may do what: sessions (Flask-Login) for pages, bearer tokens for scripts.

Pages and session-authenticated JSON calls are CSRF-protected; a request that carries
`Authorization: Bearer <token>` is a script and needs no CSRF token (no cookie is involved).
"""
from __future__ import annotations

from functools import wraps
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, g, jsonify, redirect, render_template, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, current_user, login_user, logout_user
from werkzeug.exceptions import Forbidden, Unauthorized

from app import accounts, services
from app.models import User
from app.numbers import is_id

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
limiter = Limiter(key_func=get_remote_address, storage_uri="memory://", default_limits=[])


def init_auth(app) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    limiter.init_app(app)


@login_manager.user_loader
def load_user(session_id: str) -> User | None:
    """The cookie's '<id>:<session version>'; a version older than the user's (logout, new password) fails."""
    user_id, _, version = (session_id or "").partition(":")
    if not (is_id(user_id) and is_id(version)):
        return None
    with services.sessions()() as session:
        user = session.get(User, int(user_id))
    return user if user is not None and user.session_version == int(version) else None


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


@login_manager.request_loader
def load_user_from_token(req) -> User | None:
    token = bearer_token()
    if not token:
        return None
    with services.sessions()() as session:
        user = accounts.by_token(session, token)
    g.token_user = user is not None  # only a call authenticated by its token skips the CSRF check
    return user


@login_manager.unauthorized_handler
def unauthorized():
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        return jsonify({"error": "log in, or send Authorization: Bearer <token>", "status": 401}), 401
    return redirect(url_for("auth.login", next=request.full_path))


def require_role(*roles: str):
    """401 without credentials, 403 with the wrong role. Session calls must carry a CSRF token."""
    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated:
                if request.path.startswith("/api/"):
                    raise Unauthorized("log in, or send Authorization: Bearer <token>")
                return current_app.login_manager.unauthorized()
            if current_user.role not in roles:
                raise Forbidden(f"this needs the {' or '.join(roles)} role; you are {current_user.role}")
            if (request.method not in ("GET", "HEAD", "OPTIONS") and request.path.startswith("/api/")
                    and not g.get("token_user") and current_app.config.get("WTF_CSRF_ENABLED", True)):
                from app import csrf  # the API blueprints are exempt from the global check: session calls here

                csrf.protect()
            return view(*args, **kwargs)
        return wrapped
    return decorate


def require_uploader(view):
    """require_role with the roles the upload_roles setting names (read per request: the setting may change)."""
    @wraps(view)
    def wrapped(*args, **kwargs):
        roles = current_app.extensions["settings"].uploaders
        return require_role(*roles)(view)(*args, **kwargs)
    return wrapped


def can_upload() -> bool:
    """For templates: whether the current user may upload, delete and re-index."""
    return current_user.is_authenticated and current_user.role in current_app.extensions["settings"].uploaders


def _safe_next(target: str | None) -> str:
    """Only a path on this site: no scheme, no host, no '//' or '\\' start, and no whitespace or control
    characters (browsers drop tabs and newlines, so '/\t/evil.example' would become '//evil.example')."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or "\\" in target:
        return url_for("search.index")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return url_for("search.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("search.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT"], methods=["POST"])
def login():
    error = None
    if request.method == "POST":
        with services.sessions()() as session:
            user = accounts.authenticate(session, request.form.get("name", ""), request.form.get("password", ""))
        if user is not None:
            login_user(user, remember=False)
            return redirect(_safe_next(request.args.get("next")))
        error = "Wrong name or password."
    return render_template("login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout():
    if current_user.is_authenticated:
        with services.sessions()() as session:
            accounts.end_sessions(session, current_user.id)
    logout_user()
    flash("Logged out.")
    return redirect(url_for("search.index"))
