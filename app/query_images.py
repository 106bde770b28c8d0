"""Uploaded query images, kept for a while under their content hash so a search by image has a URL.

`?image=<id>&box=x,y,w,h` reproduces an image query (reload, bookmark, back and forward, share) for a day:
files older than MAX_AGE_S are dropped, and beyond MAX_FILES or MAX_BYTES the least recently used go first.
Only images that decoded are kept; they are read back through the same link-refusing open as everything else.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from app import atomic
from app.safe_files import UnsafeFile, open_beneath

MAX_AGE_S = 24 * 3600
MAX_FILES = 500
MAX_BYTES = 500 * 1024 * 1024
_ID = re.compile(r"[0-9a-f]{32}")


class QueryImageGone(LookupError):
    """The id names no kept image (expired, evicted, or never uploaded)."""


def query_image_dir(data_dir: Path) -> Path:
    return data_dir / "query-images"


def valid_id(image_id: object) -> bool:
    return isinstance(image_id, str) and bool(_ID.fullmatch(image_id))


def put(root: Path, data: bytes) -> str:
    """Keep `data` (already known to be a decodable image) and return its id."""
    image_id = hashlib.sha256(data).hexdigest()[:32]
    path = root / image_id
    try:
        os.utime(path)  # kept already: recently used now
    except FileNotFoundError:  # new, or evicted a moment ago by another request
        atomic.write_bytes(path, data)
    prune(root, keep=image_id)
    return image_id


def get(root: Path, image_id: str) -> bytes:
    if not valid_id(image_id):
        raise QueryImageGone("the image id must be the 32 hexadecimal characters a search by image put in its URL")
    gone = QueryImageGone(f"the query image {image_id} is no longer kept (images are kept for a day): upload it again")
    try:
        handle, st = open_beneath(root.parent, f"{root.name}/{image_id}")
    except UnsafeFile:
        raise gone from None
    with handle:
        data = handle.read()
    if time.time() - st.st_mtime > MAX_AGE_S:
        raise QueryImageGone(f"the query image {image_id} has expired (images are kept for a day): upload it again")
    try:
        os.utime(root / image_id)
    except FileNotFoundError:  # evicted while we read it: what we read is still the image
        pass
    return data


def prune(root: Path, keep: str = "", now: float | None = None) -> int:
    """Drop expired files, then the least recently used beyond the count and size limits; returns how many."""
    now = time.time() if now is None else now
    entries = []
    try:
        for p in root.iterdir():
            if valid_id(p.name):
                try:
                    entries.append((p, p.stat()))
                except FileNotFoundError:  # removed by another request's prune meanwhile
                    continue
    except FileNotFoundError:
        return 0
    entries.sort(key=lambda e: e[1].st_mtime, reverse=True)  # newest first
    removed, total = 0, 0
    for i, (path, st) in enumerate(entries):
        total += st.st_size
        too_many = i >= MAX_FILES or total > MAX_BYTES
        if path.name != keep and (now - st.st_mtime > MAX_AGE_S or too_many):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
