"""User accounts: roles, hashed passwords (werkzeug), revocable personal API tokens.

Tokens are shown once and only their SHA-256 is stored, so a leaked database does not
leak working tokens; issuing a new token revokes the old one.
"""
from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from app.models import Annotation, User

ROLES = ("admin", "annotator", "viewer")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_PASSWORD = 8


class AccountError(ValueError):
    """A request about accounts that cannot be done; the message says why."""


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")


def get(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise AccountError(f"no user named '{name}'")
    return user


def add(session: Session, name: str, password: str, role: str) -> User:
    if not NAME_RE.match(name or ""):
        raise AccountError("a user name is 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise AccountError(f"a user named '{name}' already exists")
    _check_password(password)
    user = User(name=name, password_hash=generate_password_hash(password), role=role)
    session.add(user)
    session.commit()
    return user


def set_password(session: Session, name: str, password: str) -> None:
    _check_password(password)
    get(session, name).password_hash = generate_password_hash(password)
    session.commit()


def remove(session: Session, name: str) -> None:
    user = get(session, name)
    boxes = session.scalar(select(func.count(Annotation.id)).where(Annotation.author_id == user.id))
    if boxes:
        raise AccountError(f"'{name}' authored {boxes} boxes, which must keep their author; "
                           f"revoke the token and change the password instead")
    session.delete(user)
    session.commit()


def issue_token(session: Session, name: str) -> str:
    """A new personal API token (the previous one stops working)."""
    token = "ff_" + secrets.token_urlsafe(32)
    get(session, name).token_hash = _token_hash(token)
    session.commit()
    return token


def revoke_token(session: Session, name: str) -> None:
    get(session, name).token_hash = None
    session.commit()


def by_token(session: Session, token: str) -> User | None:
    if not token:
        return None
    return session.scalar(select(User).where(User.token_hash == _token_hash(token)))


def authenticate(session: Session, name: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        check_password_hash(generate_password_hash("x"), password)  # same work: names are not probed by timing
        return None
    return user if check_password_hash(user.password_hash, password) else None


def listing(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))
