"""Engine, sessions and schema upgrades (Alembic) for the catalogue database."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.paths import PROJECT_ROOT

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets the server read while offline.py writes; SQLite ignores foreign keys unless asked."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str, data_dir: Path | None = None) -> Config:
    """`data_dir` lets a migration read the collection's files (0005 reads keyframe sizes to convert boxes)."""
    cfg = Config()
    cfg.attributes["data_dir"] = str(data_dir) if data_dir is not None else None
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, data_dir: Path | None = None) -> None:
    """Bring the schema to the newest migration (creates everything on an empty database)."""
    command.upgrade(alembic_config(url, data_dir), "head")


def open_database(url: str, data_dir: Path | None = None) -> sessionmaker[Session]:
    upgrade(url, data_dir)
    return sessionmaker(bind=make_engine(url), expire_on_commit=False)
