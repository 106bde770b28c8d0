"""Logging in and out, and who may do what: sessions (Flask-Login) for pages, bearer tokens for scripts.

Pages and session-authenticated JSON calls are CSRF-protected; a request that carries
`Authorization: Bearer <token>` is a script and needs no CSRF token (no cookie is involved).
"""
from __future__ import annotations

from functools import wraps

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, current_user, login_user, logout_user
from werkzeug.exceptions import Forbidden, Unauthorized

from app import accounts, services
from app.models import User

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
limiter = Limiter(key_func=get_remote_address, storage_uri="memory://", default_limits=[])


def init_auth(app) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    limiter.init_app(app)


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    with services.sessions()() as session:
        return session.get(User, int(user_id)) if user_id.isdigit() else None


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


@login_manager.request_loader
def load_user_from_token(req) -> User | None:
    token = bearer_token()
    if not token:
        return None
    with services.sessions()() as session:
        return accounts.by_token(session, token)


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
                    and not bearer_token() and current_app.config.get("WTF_CSRF_ENABLED", True)):
                from app import csrf  # the API blueprints are exempt from the global check: session calls here

                csrf.protect()
            return view(*args, **kwargs)
        return wrapped
    return decorate


def _safe_next(target: str | None) -> str:
    """Only local paths: a login link can never send the user to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("search.index")


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
    logout_user()
    flash("Logged out.")
    return redirect(url_for("search.index"))
