"""Resumable uploads into the data dir, following the tus 1.0 protocol (core, creation, checksum, termination).

A client announces a file (POST: its length and name), sends it in chunks (PATCH at the offset the server has, with
an optional checksum per chunk), and after an interruption asks where to go on (HEAD). Unfinished files wait in
uploads/.partial/ beside a small JSON note (owner, length, name); only their owner sees them. Limits (size per file,
quota of the uploads folder) are checked when the file is announced, so nothing is sent that cannot be kept, and a
full disk costs the chunk being written, never the bytes already there.
"""
from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.media import ARCHIVE_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from app.paths import DataLayout

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,checksum,termination"
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")
MAX_CHUNK = 64 * 1024 * 1024  # one PATCH (streamed to disk, never held in memory); the browser sends 8 MB
PARTIAL_MAX_AGE_S = 24 * 3600  # an unfinished upload nobody wrote to for a day is removed (its space comes back)
MAX_OPEN_PER_USER = 200  # unfinished uploads one account may have at once
ALLOWED_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS | ARCHIVE_EXTENSIONS
MAX_DEPTH = 8
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class UploadError(ValueError):
    """A request the upload cannot take; `status` is the HTTP answer (400, 404, 409, 413, 415, 460, 507)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_file: int  # bytes
    max_files: int
    quota: int  # bytes; 0: the disk is the limit

    @classmethod
    def from_settings(cls, settings) -> Limits:
        mb = 1024 * 1024
        return cls(settings.upload_max_file_mb * mb, settings.upload_max_files, settings.upload_quota_mb * mb)

    def describe(self) -> str:
        quota = f"; all uploads together at most {_mb(self.quota)}" if self.quota else ""
        return (f"at most {self.max_files:,} files per upload, each at most {_mb(self.max_file)}{quota}; "
                f"videos ({', '.join(sorted(VIDEO_EXTENSIONS))}), images ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                f"and zip archives of them")


def _mb(n: int) -> str:
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB"


def safe_relpath(name: str) -> str:
    """A file name (or a path inside a dropped folder) as we will store it: forward slashes, no '..', no absolute
    path, no control characters, at most MAX_DEPTH folders, a known media or zip extension."""
    text = unicodedata.normalize("NFC", str(name or "")).replace("\\", "/").strip()
    if not text:
        raise UploadError("the file has no name")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise UploadError("the file name holds control characters")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise UploadError(f"'{text[:80]}' is an absolute path; send a name relative to the dropped folder")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UploadError(f"'{text[:80]}' climbs out of its folder ('..')")
    if not parts or len(parts) > MAX_DEPTH + 1 or any(len(p.encode()) > 255 or p.startswith(".") for p in parts):
        raise UploadError(f"'{text[:80]}' is not a usable file name (hidden, too long or too deep)")
    path = "/".join(parts)
    if PurePosixPath(path).suffix.lower() not in ALLOWED_EXTENSIONS:
        raise UploadError(f"'{parts[-1][:80]}' is not a video, an image or a zip archive "
                          f"({', '.join(sorted(ALLOWED_EXTENSIONS))})", 415)
    return path


def check_names(names: list[str]) -> None:
    """The files of one upload: no name twice, and no name that is also another's folder ('a.jpg', 'a.jpg/b.jpg')."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UploadError(f"'{name}' is named twice in this upload", 409)
        seen.add(name)
    folders = {"/".join(name.split("/")[:i]) for name in names for i in range(1, name.count("/") + 1)}
    clash = sorted(seen & folders)
    if clash:
        raise UploadError(f"'{clash[0]}' is both a file and a folder in this upload", 409)


def parse_metadata(header: str) -> dict[str, str]:
    """tus Upload-Metadata: 'key base64value,key2 base64value2'."""
    meta: dict[str, str] = {}
    for pair in (header or "").split(","):
        key, _, value = pair.strip().partition(" ")
        if not key:
            continue
        try:
            meta[key] = base64.b64decode(value, validate=True).decode("utf-8") if value else ""
        except (ValueError, UnicodeDecodeError):
            raise UploadError(f"Upload-Metadata value of '{key[:40]}' is not base64 of UTF-8 text") from None
    return meta


def used_bytes(layout: DataLayout) -> int:
    """What uploads take now: kept files, plus the full announced length of unfinished ones (reserved)."""
    total = 0
    root = layout.uploads_dir
    if not root.is_dir():
        return 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.suffix == ".json" and path.parent.name == ".partial":
                try:
                    total += int(json.loads(path.read_text()).get("length", 0))
                except (OSError, ValueError):
                    pass
            elif not (path.parent.name == ".partial" and path.suffix == ".part"):
                try:
                    total += path.lstat().st_size + (declared_size(path) if path.suffix.lower() == ".zip" else 0)
                except OSError:
                    pass
    return total


def declared_size(archive: Path) -> int:
    """What a zip will take once extracted (its entries' declared sizes), so extraction cannot pass the quota."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zf:
            return sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return 0


def check_room(layout: DataLayout, limits: Limits, needed: int, what: str) -> None:
    """507 when `needed` more bytes would pass the quota or the free disk."""
    if limits.quota:
        used = used_bytes(layout)
        if used + needed > limits.quota:
            raise UploadError(f"the upload space is full: {_mb(used)} of {_mb(limits.quota)} used, and {what} "
                              f"needs {_mb(needed)}; delete items or raise upload_quota_mb", 507)
    free = shutil.disk_usage(layout.data_dir).free if layout.data_dir.exists() else needed
    if needed > free:
        raise UploadError(f"the server's disk has {_mb(free)} free; {what} needs {_mb(needed)}", 507)


def disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class PartialUploads:
    """The unfinished uploads of one collection (uploads/.partial/<id>.part and <id>.json)."""

    def __init__(self, layout: DataLayout, limits: Limits) -> None:
        self.layout, self.limits = layout, limits
        self.root = layout.uploads_dir / ".partial"

    def _paths(self, upload_id: str) -> tuple[Path, Path]:
        if not (16 <= len(upload_id) <= 64 and set(upload_id) <= _ID_CHARS):
            raise UploadError("no such upload", 404)
        return self.root / f"{upload_id}.part", self.root / f"{upload_id}.json"

    def create(self, user_id: int, length: int, name: str) -> str:
        relpath = safe_relpath(name)
        if length <= 0:
            raise UploadError(f"'{relpath}' is empty (0 bytes)")
        if length > self.limits.max_file:
            raise UploadError(f"'{relpath}' is {_mb(length)}; the limit is {_mb(self.limits.max_file)} per file", 413)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as lock:  # the checks and the reservation, one creation at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.expire()
            if self._open_count(user_id) >= MAX_OPEN_PER_USER:
                raise UploadError(f"you have {MAX_OPEN_PER_USER} unfinished uploads; finish or delete some first",
                                  429)
            check_room(self.layout, self.limits, length, f"'{relpath}'")
            upload_id = secrets.token_urlsafe(18)
            part, note = self._paths(upload_id)
            part.touch()
            note.write_text(json.dumps({"user": user_id, "length": length, "name": relpath, "created": time.time()}))
        return upload_id

    def _open_count(self, user_id: int) -> int:
        count = 0
        for note in self.root.glob("*.json") if self.root.is_dir() else []:
            try:
                count += json.loads(note.read_text()).get("user") == user_id
            except (OSError, ValueError):
                pass
        return count

    def info(self, upload_id: str, user_id: int | None) -> dict:
        """An unfinished upload of this user (None: of anyone, for an admin)."""
        part, note = self._paths(upload_id)
        try:
            data = json.loads(note.read_text())
        except (OSError, ValueError):
            raise UploadError("no such upload (finished, deleted, or expired)", 404) from None
        if user_id is not None and data.get("user") != user_id:
            raise UploadError("no such upload (finished, deleted, or expired)", 404)
        data["offset"] = part.stat().st_size if part.exists() else 0
        return data

    def append(self, upload_id: str, user_id: int, offset: int, body: BinaryIO, declared: int | None,
               checksum: str | None) -> int:
        """Write one chunk at `offset` (it must be where the file ends); returns the new offset. The chunk is streamed
        to the file under an exclusive lock (a second PATCH of the same upload meanwhile is a 409) and taken back
        whole when it is too long, its checksum does not match or the disk fills."""
        data = self.info(upload_id, user_id)
        room = min(data["length"] - offset, MAX_CHUNK)
        if declared is not None and declared > room:
            raise UploadError(f"the chunk of {declared} bytes goes past the announced length or the chunk limit", 413)
        expected = _expected_digest(checksum) if checksum else None
        part, _ = self._paths(upload_id)
        with open(part, "ab") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UploadError("another chunk of this upload is being written; wait for it, then ask with HEAD",
                                  409) from None
            at = fh.seek(0, os.SEEK_END)
            if offset != at:
                raise UploadError(f"Upload-Offset {offset} is not where the upload stands ({at}); ask with HEAD and "
                                  f"go on from there", 409)
            digest = hashlib.new(expected[0]) if expected else None
            written = 0
            try:
                while block := body.read(min(1 << 20, room + 1 - written)):
                    written += len(block)
                    if written > room:
                        raise UploadError("the chunk goes past the announced length or the chunk limit", 413)
                    if digest is not None:
                        digest.update(block)
                    fh.write(block)
                if digest is not None and digest.digest() != expected[1]:
                    raise UploadError("the chunk's checksum does not match (damaged in transit); send it again", 460)
                fh.flush()
                os.fsync(fh.fileno())
            except BaseException as exc:
                fh.truncate(offset)  # the bytes before this chunk stay; the upload resumes from them
                if isinstance(exc, OSError) and disk_full(exc):
                    raise UploadError("the server's disk is full; the upload stopped at "
                                      f"{offset:,} bytes and can resume once space is freed", 507) from None
                raise
        return offset + written

    def delete(self, upload_id: str, user_id: int | None) -> None:
        self.info(upload_id, user_id)
        for path in self._paths(upload_id):
            path.unlink(missing_ok=True)

    def take_all(self, upload_ids: list[str], user_id: int, dest_folder: Path) -> list[tuple[str, Path]]:
        """Finished uploads moved into their job's folder: [(name, path)]. Every id is checked before any file moves
        (a bad one refuses the batch and loses nothing), and a move that fails puts the moved ones back."""
        if len(set(upload_ids)) != len(upload_ids):
            raise UploadError("an upload id is named twice")
        notes = [self.info(i, user_id) for i in upload_ids]
        for data in notes:
            if data["offset"] != data["length"]:
                raise UploadError(f"'{data['name']}' is not finished ({data['offset']:,} of {data['length']:,} "
                                  f"bytes); resume it first", 409)
        check_names([data["name"] for data in notes])
        moved: list[tuple[str, Path, Path]] = []
        try:
            for upload_id, data in zip(upload_ids, notes, strict=True):
                part, note = self._paths(upload_id)
                target = dest_folder / data["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, target)
                moved.append((data["name"], target, part))
        except OSError:
            for _name, target, part in moved:
                os.replace(target, part)
            raise
        for upload_id in upload_ids:
            self._paths(upload_id)[1].unlink(missing_ok=True)
        return [(name, target) for name, target, _part in moved]

    def expire(self, now: float | None = None) -> int:
        """Remove unfinished uploads nobody wrote to for PARTIAL_MAX_AGE_S; returns how many."""
        now = time.time() if now is None else now
        gone = 0
        for note in self.root.glob("*.json") if self.root.is_dir() else []:
            part = note.with_suffix(".part")
            try:
                touched = max(note.stat().st_mtime, part.stat().st_mtime if part.exists() else 0)
            except OSError:
                continue
            if now - touched > PARTIAL_MAX_AGE_S:
                note.unlink(missing_ok=True)
                note.with_suffix(".part").unlink(missing_ok=True)
                gone += 1
        return gone


def _expected_digest(header: str) -> tuple[str, bytes]:
    """tus Upload-Checksum: '<algorithm> <base64 digest>' of the chunk it comes with."""
    algorithm, _, digest = header.strip().partition(" ")
    if algorithm.lower() not in CHECKSUM_ALGORITHMS:
        raise UploadError(f"checksum algorithm '{algorithm[:20]}' is not supported "
                          f"({', '.join(CHECKSUM_ALGORITHMS)})")
    try:
        return algorithm.lower(), base64.b64decode(digest, validate=True)
    except ValueError:
        raise UploadError("Upload-Checksum's digest is not base64") from None
