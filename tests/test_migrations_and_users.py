"""Alembic migrations up and down on an empty database (SQLite, and PostgreSQL when configured),
and the `offline.py users` commands."""
from __future__ import annotations

import io

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

import offline
from app.db import alembic_config
from tests.conftest import BACKENDS, database_env, db_url

TABLES = {"videos", "shots", "keyframes", "images", "index_runs", "settings", "evaluation_runs", "users",
          "labels", "annotations"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_head_creates_everything_and_downgrade_removes_it(backend, tmp_path):
    with database_env(backend, tmp_path) as url:
        if backend == "sqlite":
            (tmp_path / "instance").mkdir()
        cfg = alembic_config(url)
        command.upgrade(cfg, "head")
        engine = create_engine(url)
        assert TABLES <= set(inspect(engine).get_table_names())
        columns = {c["name"] for c in inspect(engine).get_columns("annotations")}
        assert {"x", "y", "w", "h", "version", "label_id", "author_id", "note"} <= columns
        command.downgrade(cfg, "base")
        assert not TABLES & set(inspect(create_engine(url)).get_table_names())
        command.upgrade(cfg, "head")
        assert TABLES <= set(inspect(create_engine(url)).get_table_names())
        engine.dispose()


def test_users_commands(tmp_path, monkeypatch, capsys):
    data = ["--data-dir", str(tmp_path)]
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert offline.main(["users", "add", "alice", "--role", "annotator", "--password-stdin", *data]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert offline.main(["users", "add", "bert", "--password-stdin", *data]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert offline.main(["users", "token", "alice", *data]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("ff_") and len(token) > 30
    assert offline.main(["users", "list", *data]) == 0
    listing = capsys.readouterr().out
    assert "alice\tannotator\ttoken set" in listing and token not in listing
    monkeypatch.setattr("sys.stdin", io.StringIO("another long one\n"))
    assert offline.main(["users", "passwd", "alice", "--password-stdin", *data]) == 0
    from app import accounts
    from app.db import open_database

    with open_database(db_url(tmp_path))() as s:
        assert accounts.authenticate(s, "alice", "another long one") is not None
        assert accounts.authenticate(s, "alice", "a long password") is None
        assert accounts.by_token(s, token).name == "alice"
    assert offline.main(["users", "token", "alice", "--revoke", *data]) == 0
    assert offline.main(["users", "remove", "alice", *data]) == 0
    assert offline.main(["users", "remove", "alice", *data]) == 2
    assert "no user named 'alice'" in capsys.readouterr().err
