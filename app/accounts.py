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


MIN_DISTINCT = 5
COMMON_PASSWORDS = frozenset("""password password1 passw0rd 12345678 123456789 1234567890 qwertyui qwerty123
iloveyou letmein1 welcome1 admin123 abc12345 football baseball sunshine princess trustno1 monkey123 dragon12
superman starwars whatever 11111111 00000000 87654321 password123 qwerty12 1q2w3e4r 1qaz2wsx zaq12wsx""".split())
_RUNS = ("abcdefghijklmnopqrstuvwxyz", "qwertyuiopasdfghjklzxcvbnm", "0123456789")


def _check_password(password: str, name: str = "") -> None:
    """A length-and-variety rule: 8 characters that are not blanks, 5 of them different, not the name."""
    if len(password.strip()) < MIN_PASSWORD or sum(not c.isspace() for c in password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters that are not spaces")
    if len(set(password)) < MIN_DISTINCT:
        raise AccountError(f"the password must use at least {MIN_DISTINCT} different characters")
    lowered = password.lower()
    if name and len(name) >= 3 and name.lower() in lowered:
        raise AccountError("the password must not contain the user name")
    if lowered.strip() in COMMON_PASSWORDS or any(lowered in run for run in _RUNS):
        raise AccountError("that password is one of the most common ones; choose another")
    kinds = sum(bool(k) for k in (any(c.isalpha() for c in password), any(c.isdigit() for c in password),
                                  any(not c.isalnum() for c in password)))
    if kinds < 2:
        raise AccountError("the password must mix at least two of letters, digits, and spaces or symbols")


def random_password(name: str = "") -> str:
    """A fresh password that the rule above accepts (a random draw can be letters only: drawn again)."""
    while True:
        password = secrets.token_urlsafe(12)
        try:
            _check_password(password, name)
        except AccountError:
            continue
        return password


def find(session: Session, name: str) -> User | None:
    """Names are unique without regard to case ('ADMIN1' is 'admin1'), and found so."""
    return session.scalar(select(User).where(func.lower(User.name) == (name or "").lower()))


def get(session: Session, name: str) -> User:
    user = find(session, name)
    if user is None:
        raise AccountError(f"no user named '{name}'")
    return user


def add(session: Session, name: str, password: str, role: str) -> User:
    if not NAME_RE.match(name or ""):
        raise AccountError("a user name is 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    taken = find(session, name)
    if taken is not None:
        raise AccountError(f"a user named '{taken.name}' already exists (names ignore case)")
    _check_password(password, name)
    user = User(name=name, password_hash=generate_password_hash(password), role=role)
    session.add(user)
    session.commit()
    return user


def set_password(session: Session, name: str, password: str) -> None:
    """A new password ends every session of the user (cookies saved before stop working)."""
    _check_password(password, name)
    user = get(session, name)
    user.password_hash = generate_password_hash(password)
    user.session_version += 1
    session.commit()


def end_sessions(session: Session, user_id: int) -> None:
    """Log the user out everywhere: every session cookie issued so far stops working."""
    user = session.get(User, user_id)
    if user is not None:
        user.session_version += 1
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


_DUMMY_HASH: list[str] = []


def authenticate(session: Session, name: str, password: str) -> User | None:
    """One password-hash check whether or not the name exists, so timing does not tell names apart."""
    user = find(session, name) if len(name or "") <= 64 else None
    if user is None:
        if not _DUMMY_HASH:
            _DUMMY_HASH.append(generate_password_hash(secrets.token_hex(16)))
        check_password_hash(_DUMMY_HASH[0], password)
        return None
    return user if check_password_hash(user.password_hash, password) else None


def listing(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))
