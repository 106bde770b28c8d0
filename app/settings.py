"""Framefinder's settings: one object, built once per process, used by server.py, offline.py and the benches.

Each value comes from the first of: a command-line flag, an environment variable, the instance file
(`<instance>/config.py`, Flask style: `NAME = value`), the default below. The README's settings table and
both entry points' `--help` are written from `FIELDS` (a test checks that they agree).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flask import Config

from app.paths import PROJECT_ROOT, DataLayout


@dataclass(frozen=True)
class Field:
    name: str  # attribute, and the instance file's NAME in upper case
    env: str  # environment variable
    default: object
    kind: type
    help: str
    bounds: tuple[float, float] | None = None  # numbers: inclusive range


FIELDS: tuple[Field, ...] = (
    Field("data_dir", "FRAMEFINDER_DATA_DIR", None, Path,
          "collection folder (default: the project's static/, with the database in instance/)"),
    Field("database_url", "DATABASE_URL", None, str,
          "SQLAlchemy URL of the catalogue (default: SQLite in the instance folder)"),
    Field("host", "FRAMEFINDER_HOST", "127.0.0.1", str, "address the server binds (default: this machine only)"),
    Field("port", "FRAMEFINDER_PORT", 5000, int, "port the server listens on", (1, 65535)),
    Field("device", "FRAMEFINDER_DEVICE", "auto", str, "cpu, cuda, cuda:1 ... (auto: cuda if available)"),
    Field("model_config", "FRAMEFINDER_MODEL_CONFIG", None, str,
          "an extra open_clip model config (file or folder) to make its name known"),
    Field("baseline_weights", "FRAMEFINDER_BASELINE_WEIGHTS", None, str,
          "folder (or file) with torchvision's vgg16/resnet50 checkpoints for the evaluation baselines"),
    Field("search_requires_login", "FRAMEFINDER_SEARCH_REQUIRES_LOGIN", False, bool,
          "searching needs an account too (annotating and evaluating always do)"),
    Field("max_upload_mb", "FRAMEFINDER_MAX_UPLOAD_MB", 20, int, "largest upload the server accepts, in MB",
          (1, 10_240)),
    Field("index_check_seconds", "FRAMEFINDER_INDEX_CHECK_SECONDS", 1.0, float,
          "how often the server looks for a newly published index generation", (0, 3600)),
    Field("upload_roles", "FRAMEFINDER_UPLOAD_ROLES", "admin,annotator", str,
          "roles that may upload, delete and re-index items from the browser (comma-separated)"),
    Field("upload_max_file_mb", "FRAMEFINDER_UPLOAD_MAX_FILE_MB", 4096, int,
          "largest file one collection upload may hold, in MB", (1, 1_048_576)),
    Field("upload_max_files", "FRAMEFINDER_UPLOAD_MAX_FILES", 1000, int,
          "most files one collection upload may hold (a zip's entries count)", (1, 1_000_000)),
    Field("upload_quota_mb", "FRAMEFINDER_UPLOAD_QUOTA_MB", 0, int,
          "most space uploaded files may take in the data dir, in MB (0: the disk is the limit)", (0, 1_000_000_000)),
    Field("asr_language", "FRAMEFINDER_ASR_LANGUAGE", "en", str,
          "language spoken in the videos, for speech recognition (en, vi, ...; auto: Whisper guesses)"),
    # -- vectors in Milvus (app.milvus_store) --
    Field("vectors", "FRAMEFINDER_VECTORS", None, str,
          "where keyframe and image vectors are searched: faiss (index files in the data dir) or milvus (a Milvus "
          "collection at milvus_uri); default: where the collection's index already is, faiss for a new one"),
    Field("milvus_uri", "MILVUS_URI", None, str,
          "the Milvus that holds the vectors with vectors=milvus: http://[user:password@]host:19530, or a Milvus Lite "
          "file ending in .db (one process at a time)"),
    Field("milvus_index", "FRAMEFINDER_MILVUS_INDEX", None, str,
          "Milvus index type with vectors=milvus: FLAT, HNSW, IVF_FLAT, ... as the Milvus offers (it refuses types it "
          "lacks); default: the collection's, HNSW for a new one"),
    Field("text_engine", "FRAMEFINDER_TEXT_ENGINE", "auto", str,
          "how text queries are encoded: auto (ONNX Runtime fp32 on the CPU when it loads, else torch), torch, "
          "onnx, or onnx-int8 (used only if its top-10 agrees with fp32's on 99% over the collection)"),
)
_BY_NAME = {f.name: f for f in FIELDS}
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


class SettingsError(ValueError):
    """A setting with a value of the wrong kind: the message names the setting and where it came from."""


def _convert(f: Field, raw: object, where: str) -> object:
    if raw is None:
        return raw
    if f.kind is str and isinstance(raw, str) or f.kind is Path and isinstance(raw, Path):
        return raw
    text = str(raw).strip()
    try:
        if f.kind is bool:
            if text.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError(text)
            return text.lower() in TRUE_WORDS
        if f.kind is Path:
            return Path(text).expanduser()
        if f.kind in (int, float):
            if isinstance(raw, bool) or not text.isascii() or "_" in text:  # int() also reads '０' and '1_0'
                raise ValueError(text)
            value = f.kind(text)
            if not math.isfinite(value) or f.bounds and not f.bounds[0] <= value <= f.bounds[1]:
                raise ValueError(text)
            return value
        return f.kind(text)
    except (ValueError, OverflowError):
        if f.kind is bool:
            kind = "one of " + "/".join(TRUE_WORDS + FALSE_WORDS[:-1])
        elif f.bounds:
            kind = f"{'a whole number' if f.kind is int else 'a number'} from {f.bounds[0]:g} to {f.bounds[1]:g}"
        else:
            kind = f.kind.__name__
        raise SettingsError(f"{f.name} from {where} must be {kind}, not {text[:80]!r}") from None


def _check_database(url: str, where: str) -> None:
    """A URL SQLAlchemy can use, with its driver installed; a SQLite file the user named must have its folder."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise SettingsError(f"database_url from {where} is not a usable SQLAlchemy URL ({exc})") from None
    except ImportError as exc:
        raise SettingsError(f"database_url from {where} needs a driver that is not installed ({exc})") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        folder = Path(parsed.database).expanduser().parent
        if not folder.is_dir():
            raise SettingsError(f"database_url from {where} names a SQLite file in {folder}, which does not exist")


def _check_device(device: str, where: str) -> None:
    if device == "auto":
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise SettingsError(f"device from {where} must be auto, cpu, cuda, cuda:N ... ({exc})") from None


@dataclass(frozen=True)
class Settings:
    data_dir: Path | None = None
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 5000
    device: str = "auto"
    model_config: str | None = None
    baseline_weights: str | None = None
    search_requires_login: bool = False
    max_upload_mb: int = 20
    index_check_seconds: float = 1.0
    upload_roles: str = "admin,annotator"
    upload_max_file_mb: int = 4096
    upload_max_files: int = 1000
    upload_quota_mb: int = 0
    asr_language: str = "en"
    vectors: str | None = None  # vectors in Milvus (app.milvus_store)
    milvus_uri: str | None = None
    milvus_index: str | None = None
    text_engine: str = "auto"  # app.text_onnx
    source: dict[str, str] = field(default_factory=dict, compare=False)  # where each value came from
    extra: dict[str, object] = field(default_factory=dict, compare=False)  # other Flask keys of the instance file

    @classmethod
    def load(cls, flags: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """flags (None = not given) > environment > instance file > defaults."""
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        environ = os.environ if environ is None else environ
        unknown = set(flags) - set(_BY_NAME)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, object] = {}
        source: dict[str, str] = {}

        def take(f: Field, raw: object, where: str) -> None:
            values[f.name], source[f.name] = _convert(f, raw, where), where

        data_field = _BY_NAME["data_dir"]
        if "data_dir" in flags:
            take(data_field, flags["data_dir"], "the command line")
        elif environ.get(data_field.env):
            take(data_field, environ[data_field.env], data_field.env)
        layout = DataLayout.from_data_dir(values.get("data_dir"))
        instance = Config(str(layout.instance_dir))
        instance_file = layout.instance_dir / "config.py"
        if instance_file.is_file():
            try:
                instance.from_pyfile(str(instance_file))
            except Exception as exc:  # noqa: BLE001 - any error in the operator's file is reported, not raised
                line = getattr(exc, "lineno", None)
                raise SettingsError(f"{instance_file}{f', line {line}' if line else ''} cannot be read: "
                                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                                    ) from None
        for f in FIELDS[1:]:
            if f.name in flags:
                take(f, flags[f.name], "the command line")
            elif environ.get(f.env):
                take(f, environ[f.env], f.env)
            elif f.name.upper() in instance:
                take(f, instance[f.name.upper()], str(instance_file))
        if values.get("database_url") is None:
            values["database_url"] = f"sqlite:///{layout.instance_dir / 'framefinder.db'}"
            source.setdefault("database_url", "default")
        else:
            _check_database(str(values["database_url"]), source["database_url"])
        if "device" in values:
            _check_device(str(values["device"]), source["device"])
        if values.get("vectors") not in (None, "faiss", "milvus"):  # vectors in Milvus (app.milvus_store)
            raise SettingsError(f"vectors from {source['vectors']} must be faiss or milvus, not {values['vectors']!r}")
        if values.get("milvus_uri") or values.get("milvus_index"):  # a typo is told here, not as "unreachable"
            from app.milvus_store import check_index_type, check_uri

            try:
                if values.get("milvus_uri"):
                    check_uri(str(values["milvus_uri"]))
                if values.get("milvus_index"):
                    check_index_type(str(values["milvus_index"]))
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
        if "text_engine" in values:  # app.text_onnx: a typo must not quietly mean another engine
            from app.text_onnx import ENGINES

            engine = str(values["text_engine"]).strip().lower()
            if engine not in ENGINES:
                raise SettingsError(f"text_engine from {source['text_engine']} must be one of {', '.join(ENGINES)}, "
                                    f"not {str(values['text_engine'])[:80]!r}")
            values["text_engine"] = engine
        known = {f.name.upper() for f in FIELDS}
        extra = {k: v for k, v in instance.items() if k.isupper() and k not in known}
        return cls(**values, source=source, extra=extra)

    @property
    def uploaders(self) -> tuple[str, ...]:
        """The roles upload_roles names (unknown words are ignored: they match no account)."""
        return tuple(r.strip() for r in self.upload_roles.split(",") if r.strip())

    @property
    def layout(self) -> DataLayout:
        return DataLayout.from_data_dir(self.data_dir)

    def describe_database(self) -> str:
        """The database for messages: the SQLite file, or the URL without its password."""
        url = self.database_url or ""
        if url.startswith("sqlite:///"):
            return url.removeprefix("sqlite:///")
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)


def help_text(name: str) -> str:
    """The --help line of a setting: what it is, and the environment variable that also sets it."""
    f = _BY_NAME[name]
    return f"{f.help}; also {f.env}".replace("%", "%%")


def readme_table() -> str:
    """The README's settings table, made from FIELDS."""
    lines = ["| setting | flag | environment | instance/config.py | default |", "|---|---|---|---|---|"]
    for f in FIELDS:
        default = "—" if f.default is None else f"`{f.default}`"
        in_file = "—" if f.name == "data_dir" else f"`{f.name.upper()}`"  # the file lives in the data dir
        lines.append(f"| {f.help} | `--{f.name.replace('_', '-')}` | `{f.env}` | {in_file} | {default} |")
    return "\n".join(lines)


__all__ = ["FIELDS", "PROJECT_ROOT", "Settings", "SettingsError", "help_text", "readme_table"]
