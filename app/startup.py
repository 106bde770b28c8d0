"""Turning a broken data dir into one sentence that names the file and the fix, instead of a traceback.

Used by both entry points around start-up (creating the app, opening the catalogue, loading the index).
"""
from __future__ import annotations

import sqlite3

from sqlalchemy.exc import DatabaseError, OperationalError

from app.settings import Settings, SettingsError
from app.vectors import IndexDamaged


class CatalogueMismatch(RuntimeError):
    """The index holds vectors but the catalogue knows none of them (a deleted or replaced database)."""


def check_catalogue(collection, settings: Settings) -> None:
    """Refuse to serve an index whose rows the catalogue does not know: an empty or replaced database would
    otherwise answer every search with nothing, and every account would be gone, without a word."""
    snap = collection.snapshot()
    if snap is None or snap.bundle.size == 0:
        return
    if not (snap.cols.kind >= 0).any():
        db = settings.describe_database()
        raise CatalogueMismatch(f"the index holds {snap.bundle.size} vectors but the catalogue {db} knows none of "
                                f"them (was the database deleted or replaced?); restore it from a backup, or "
                                f"run `.venv/bin/python offline.py index PATHS` to catalogue the media again.")


def explain(exc: BaseException, settings: Settings) -> str | None:
    """The sentence for a start-up failure we understand; None for anything else (a real bug)."""
    db, layout = settings.describe_database(), settings.layout
    if isinstance(exc, (IndexDamaged, CatalogueMismatch, SettingsError)):
        return str(exc)
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in (13, 30)):
        where = getattr(exc, "filename", None) or layout.data_dir
        return (f"cannot write {where} ({exc.strerror or exc}): Framefinder needs write access to its data dir "
                f"{layout.data_dir} and instance folder {layout.instance_dir}; fix the permissions, or pass "
                f"--data-dir to a writable folder.")
    if isinstance(exc, (DatabaseError, OperationalError, sqlite3.DatabaseError)):
        text = str(getattr(exc, "orig", exc) or exc)
        if "readonly" in text or "read-only" in text:
            return (f"the catalogue {db} is read-only ({text}); make it and its folder writable (SQLite also "
                    f"writes {db}-wal and {db}-shm beside it).")
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return (f"the catalogue {db} is damaged ({text}); restore it from a backup, or move it away and run "
                    f"`.venv/bin/python offline.py index PATHS` to build a new one (feature files are reused where "
                    f"unchanged).")
        if "unable to open" in text:
            return f"the catalogue {db} cannot be opened ({text}); check that its folder exists and is writable."
        return f"the catalogue database cannot be used ({text}); check DATABASE_URL or {db}."
    if isinstance(exc, OSError):
        return f"{getattr(exc, 'filename', None) or layout.data_dir}: {exc.strerror or exc}"
    return None
