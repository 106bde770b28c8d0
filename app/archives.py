"""Safe extraction of zip archives: no path escapes, no links, no zip bombs.

Each rejected entry is reported by name; the rest of the archive is still used.
"""
from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from app.media import Problem, classify

MAX_TOTAL_BYTES = 8 * 1024**3  # declared uncompressed size of one archive
MAX_ENTRY_RATIO = 200  # uncompressed / compressed; real media compresses far less


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path in archive"
    if any(part == ".." for part in pure.parts):
        return "path escapes the archive folder ('..')"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link in archive"
    if info.compress_size and info.file_size / max(info.compress_size, 1) > MAX_ENTRY_RATIO:
        return f"compression ratio {info.file_size // max(info.compress_size, 1)}x looks like a zip bomb"
    return None


def archive_dest(archive: Path, dest_root: Path) -> Path:
    """Where an archive's entries are extracted: one folder per archive path."""
    digest = hashlib.blake2b(str(archive).encode(), digest_size=4).hexdigest()
    return (dest_root / f"{archive.stem[:100]}-{digest}").resolve()  # a long archive name still makes a usable folder


def is_media(path: Path) -> bool:
    return classify(path) not in (None, "archive")


def check_archive(archive: Path, max_total: int = MAX_TOTAL_BYTES, max_entries: int | None = None) -> list[str]:
    """Every reason not to open this archive at all, found from its directory before anything is extracted (uploads
    are refused whole on any of them: an archive with one escaping entry is not trusted for the rest)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        return [f"not a readable zip archive ({exc})"]
    declared = sum(i.file_size for i in infos)
    reasons = []
    if declared > max_total:
        reasons.append(f"declared uncompressed size {declared:,} bytes is over the limit of {max_total:,} (zip bomb?)")
    if max_entries is not None and len(infos) > max_entries:
        reasons.append(f"{len(infos):,} files inside; the limit is {max_entries:,}")
    for info in infos:
        reason = _entry_problem(info)
        if reason:
            reasons.append(f"{info.filename[:120]}: {reason}")
    names = [PurePosixPath(i.filename.replace("\\", "/")).as_posix() for i in infos]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            reasons.append(f"{name[:120]}: named twice in the archive")
        seen.add(name)
    folders = {str(parent) for name in names for parent in PurePosixPath(name).parents if str(parent) != "."}
    reasons += [f"{name[:120]}: both a file and a folder in the archive" for name in sorted(seen & folders)]
    return reasons


def extract_archive(archive: Path, dest_root: Path, max_total: int = MAX_TOTAL_BYTES,
                    accept: Callable[[Path], bool] = is_media, max_entries: int | None = None
                    ) -> tuple[list[Path], list[Problem], list[Problem]]:
    """Extract the entries `accept` wants (media by default) under dest_root/<stem>-<hash>/.

    Returns (extracted files, failed entries, skipped non-media entries).
    """
    problems: list[Problem] = []
    skipped: list[Problem] = []
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        return [], [Problem(str(archive), f"not a readable zip archive ({exc})")], []
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        declared = sum(i.file_size for i in infos)
        if declared > max_total:
            return [], [Problem(str(archive), f"declared uncompressed size {declared} bytes is over the "
                                              f"limit of {max_total} bytes (zip bomb?)")], []
        if max_entries is not None and len(infos) > max_entries:
            return [], [Problem(str(archive), f"{len(infos)} files inside; the limit is {max_entries}")], []
        dest = archive_dest(archive, dest_root)
        files: list[Path] = []
        taken: set[Path] = set()
        for info in infos:
            label = f"{archive}:{info.filename}"
            reason = _entry_problem(info)
            if reason is None and not accept(Path(info.filename)):
                skipped.append(Problem(label, "not a wanted file type (unsupported extension)"))
                continue
            target = (dest / info.filename).resolve()
            if reason is None and not target.is_relative_to(dest):
                reason = "path escapes the archive folder"
            if reason is None and target in taken:
                reason = "named twice in the archive (the first copy is used)"
            if reason:
                problems.append(Problem(label, reason))
                continue
            try:
                _copy_limited(zf, info, target)
            except (OSError, zipfile.BadZipFile, ValueError) as exc:
                problems.append(Problem(label, f"could not extract ({getattr(exc, 'strerror', None) or exc})"))
                try:
                    target.unlink(missing_ok=True)
                except OSError:
                    pass  # nothing was written there (a folder in the way, a name too long)
                continue
            taken.add(target)
            files.append(target)
    return files, problems, skipped


def _copy_limited(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Copy one entry, refusing to write more bytes than it declared (lying headers)."""
    if target.exists() and target.stat().st_size == info.file_size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    written = 0
    with zf.open(info) as src, open(tmp, "wb") as dst:
        while block := src.read(1 << 20):
            written += len(block)
            if written > info.file_size:
                raise ValueError("entry is larger than its declared size")
            dst.write(block)
    shutil.move(tmp, target)
