"""Opening the files the catalogue names without following symbolic links, and serving them.

Every directory of the path is opened in turn with O_NOFOLLOW, so a file or any folder above it
swapped for a link after indexing (to the instance secret, /etc/passwd, ...) is refused at open
time, not merely checked before it (no race between check and open). Source files must also
still be the file that was indexed (same size and modification time).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from flask import Response, request, send_file

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class UnsafeFile(LookupError):
    """The named file is gone, is a link or lies behind one, or changed since it was indexed."""


def open_beneath(root: Path, relative: str | Path) -> tuple[BinaryIO, os.stat_result]:
    """Open root/relative for reading; no component of `relative` may be a link or '..', and the file must
    have a single name (Framefinder writes its files so; a hard link could be the secret key or /etc/shadow).
    The root itself is trusted (the operator chose it)."""
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise UnsafeFile(f"refusing the path '{relative}'")
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise UnsafeFile(f"the folder {root} cannot be opened") from None
    handle, st = _walk(fd, parts)
    if st.st_nlink != 1:
        handle.close()
        raise UnsafeFile(f"'{parts[-1]}' has other names (a hard link); refusing it")
    return handle, st


def open_indexed(path: str | Path, size: int | None = None, mtime_ns: int | None = None
                 ) -> tuple[BinaryIO, os.stat_result]:
    """Open an absolute source path as indexed: no link anywhere in it, same size and mtime if given."""
    path = Path(path)
    if not path.is_absolute():
        raise UnsafeFile(f"refusing the relative path '{path}'")
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    handle, st = _walk(fd, path.parts[1:])
    if size is not None and (st.st_size != size or (mtime_ns is not None and st.st_mtime_ns != mtime_ns)):
        handle.close()
        raise UnsafeFile(f"{path.name} changed since it was indexed; run offline.py index again")
    return handle, st


def _walk(fd: int, parts: tuple[str, ...]) -> tuple[BinaryIO, os.stat_result]:
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                raise UnsafeFile(f"the folder '{part}' is missing or is a link") from None
            os.close(fd)
            fd = next_fd
        try:
            file_fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
        except OSError:
            raise UnsafeFile(f"'{parts[-1]}' is missing or is a link") from None
    finally:
        os.close(fd)
    st = os.fstat(file_fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(file_fd)
        raise UnsafeFile(f"'{parts[-1]}' is not a regular file")
    return os.fdopen(file_fd, "rb"), st


def send_opened(handle: BinaryIO, st: os.stat_result, name: str, max_age: int, mimetype: str | None = None
                ) -> Response:
    """send_file for an already opened file, with size, ETag and Range support as for a path."""
    response = send_file(handle, mimetype=mimetype, download_name=name, conditional=False,
                         etag=f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}", last_modified=st.st_mtime,
                         max_age=max_age)
    response.content_length = st.st_size
    return response.make_conditional(request.environ, accept_ranges=True, complete_length=st.st_size)


def read_picture(opened: tuple[BinaryIO, os.stat_result]):
    """The RGB pixels of an opened image file (closed afterwards)."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    handle, _ = opened
    try:
        with handle, PILImage.open(handle) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, PILImage.DecompressionBombError, ValueError) as exc:
        raise UnsafeFile(f"the picture is damaged ({exc})") from None


def open_source(row) -> tuple[BinaryIO, os.stat_result]:
    """A catalogued source file (an Image or Video row: path, size, mtime_ns) as it was indexed."""
    return open_indexed(row.path, row.size, row.mtime_ns)
