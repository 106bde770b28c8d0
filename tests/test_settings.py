"""One settings path: flag > environment > instance file > default, the same for server.py and offline.py, and
the README and --help saying what the code does."""
from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

import offline
import server
from app.settings import FIELDS, Settings, SettingsError, readme_table
from app.vectors import EXACT_BELOW
from tests.conftest import ROOT


def test_the_readme_table_is_the_settings_table():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("tests/test_settings.py checks it -->\n", 1)[1].split("\n<!-- end of settings table", 1)[0]
    assert block == readme_table()
    for f in FIELDS:  # each setting is named in the table the way the code reads it
        assert f"`--{f.name.replace('_', '-')}`" in block and f"`{f.env}`" in block


def test_help_names_every_setting_and_the_exact_search_threshold():
    server_help = server.build_parser().format_help()
    for f in FIELDS:
        assert f"--{f.name.replace('_', '-')}" in server_help and f.env in server_help.replace("\n", " ")
    index_help = subprocess.run([sys.executable, str(ROOT / "offline.py"), "index", "--help"], capture_output=True,
                                text=True, cwd=ROOT, check=True).stdout
    one_line = " ".join(index_help.split())
    assert f"exact below {EXACT_BELOW:,} vectors" in one_line
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"exact (flat) below {EXACT_BELOW:,} vectors" in readme
    assert not re.search(r"exact \(flat\) below (?!" + re.escape(f"{EXACT_BELOW:,}") + r")[\d,k]+ vectors", readme)
    for name in ("--data-dir", "--database-url", "--device", "--model-config", "FRAMEFINDER_DEVICE", "DATABASE_URL"):
        assert name in one_line


def test_precedence_flag_then_environment_then_instance_file_then_default(tmp_path):
    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / "config.py").write_text("DEVICE = 'cuda:2'\nPORT = 6001\nMAX_UPLOAD_MB = 7\n"
                                                     "SECRET_KEY = 'k' * 40\n")
    env = {"FRAMEFINDER_DEVICE": "cuda:1", "FRAMEFINDER_PORT": "6002"}
    s = Settings.load({"data_dir": tmp_path, "device": "cpu"}, env)
    assert (s.device, s.port, s.max_upload_mb, s.host) == ("cpu", 6002, 7, "127.0.0.1")
    assert s.source["device"] == "the command line" and s.source["port"] == "FRAMEFINDER_PORT"
    assert s.source["max_upload_mb"].endswith("config.py") and "host" not in s.source
    assert s.extra["SECRET_KEY"] == "k" * 40  # other Flask keys of the file reach the app
    s = Settings.load({"data_dir": tmp_path}, {})
    assert (s.device, s.port) == ("cuda:2", 6001)
    assert s.database_url == f"sqlite:///{tmp_path / 'instance' / 'framefinder.db'}"
    for name, value, message in (
            ("FRAMEFINDER_PORT", "lots", "port from FRAMEFINDER_PORT must be a whole number from 1 to 65535"),
            ("FRAMEFINDER_PORT", "99999", "from 1 to 65535"), ("FRAMEFINDER_PORT", "\uff10", "from 1 to 65535"),
            ("FRAMEFINDER_MAX_UPLOAD_MB", "0", "from 1 to 10240"),
            ("FRAMEFINDER_INDEX_CHECK_SECONDS", "nan", "0 to 3600"),
            ("FRAMEFINDER_SEARCH_REQUIRES_LOGIN", "maybe", "must be one of 1/true/yes/on/0/false/no/off"),
            ("FRAMEFINDER_DEVICE", "tpu", "device from FRAMEFINDER_DEVICE must be auto, cpu, cuda"),
            ("DATABASE_URL", "nowhere", "not a usable SQLAlchemy URL"),
            ("DATABASE_URL", "mysql://u:p@127.0.0.1/x", "needs a driver that is not installed"),
            ("DATABASE_URL", f"sqlite:///{tmp_path}/missing/x.db", "which does not exist")):
        with pytest.raises(SettingsError, match=re.escape(message)):
            Settings.load({"data_dir": tmp_path}, {name: value})


def test_server_and_offline_open_the_database_the_instance_file_names(tmp_path, monkeypatch):
    """Finding: server.py honoured DATABASE_URL from instance/config.py, offline.py only from the environment."""
    from app import create_app
    from app.accounts import listing

    elsewhere = tmp_path / "elsewhere.db"
    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / "config.py").write_text(f"DATABASE_URL = 'sqlite:///{elsewhere}'\n")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert offline.main(["users", "add", "alice", "--password-stdin", "--data-dir", str(tmp_path)]) == 0
    assert elsewhere.is_file() and not (tmp_path / "instance" / "framefinder.db").exists()
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True})
    assert app.config["DATABASE_URL"] == f"sqlite:///{elsewhere}"
    with app.extensions["sessions"]() as session:
        assert [u.name for u in listing(session)] == ["alice"]
