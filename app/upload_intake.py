"""From uploaded files to a queued ingest job: each file checked before anything is extracted or indexed.

Refused here, with the reason on the job's page: an empty file, a file whose extension lies (a "video" that is not
one), a zip that escapes its folder, holds links or looks like a bomb (app.archives.check_archive, before any
entry is extracted), and a file whose exact content the collection already holds (skipped, its copy removed).
The rest wait in the job's folder under uploads/ and are indexed by the job.
"""
from __future__ import annotations

import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import jobs
from app.archives import check_archive
from app.jobs import FileResult
from app.media import classify, file_hash
from app.models import Image, Video
from app.paths import DataLayout
from app.upload_store import Limits, UploadError, declared_size, used_bytes


def new_folder(layout: DataLayout) -> tuple[str, Path]:
    """A fresh folder for one upload's files: uploads/<UTC time>-<random>/."""
    name = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    path = layout.uploads_dir / name
    path.mkdir(parents=True)
    return name, path


def _known(session: Session, digest: str) -> str | None:
    video = session.scalar(select(Video.video_id).where(Video.content_hash == digest).limit(1))
    if video:
        return f"video {video}"
    image = session.scalar(select(Image).where(Image.content_hash == digest).limit(1))
    return f"image {image.display_name}" if image is not None else None


IMAGE_DEMUXERS = ("image2", "_pipe", "gif", "apng", "webp")  # FFmpeg reads a still as a one-frame "video"


def _probe_video(path: Path) -> str | None:
    from app.video_decode import VideoError, open_video

    try:
        container, _stream = open_video(path)
    except VideoError as exc:
        return f"not a video this server can read: {str(exc).replace(str(path), path.name)}"
    kind = container.format.name
    container.close()
    if any(part in kind for part in IMAGE_DEMUXERS):
        return f"not a video: FFmpeg reads it as a still image ({kind}); give it an image's extension"
    return None


def _probe_image(path: Path) -> str | None:
    """The header only (cheap): what the indexer will decode must be an image of a kind it reads."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"not an image this server can read ({type(exc).__name__})"
    except PILImage.DecompressionBombError:
        return "the image declares too many pixels"
    return None


def check_file(session: Session, name: str, path: Path, limits: Limits, seen: dict[str, str],
               over_quota=lambda: False) -> FileResult:
    """One uploaded file: 'waiting' (to be indexed), or 'failed'/'skipped' with the reason."""
    size = path.stat().st_size
    if size == 0:
        return FileResult(name, "failed", "empty file (0 bytes)")
    if size > limits.max_file:
        return FileResult(name, "failed", f"larger than the limit of {limits.max_file // 1024**2} MB per file")
    kind = classify(path)
    if kind == "archive":
        reasons = check_archive(path, max_entries=limits.max_files)
        if not reasons and over_quota():
            reasons = [f"extracted, it would pass the upload quota of {limits.quota // 1024**2} MB"]
        if reasons:
            more = f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
            return FileResult(name, "failed", "archive refused, nothing extracted: " + "; ".join(reasons[:3]) + more)
        return FileResult(name, "waiting")
    problem = _probe_video(path) if kind == "video" else _probe_image(path)
    if problem:
        return FileResult(name, "failed", problem)
    digest = file_hash(path)
    known = _known(session, digest) or seen.get(digest)
    if known:
        return FileResult(name, "skipped", f"already in the collection as {known}")
    seen[digest] = f"{name} (earlier in this upload)"
    return FileResult(name, "waiting")


def intake(sessions: sessionmaker, layout: DataLayout, user_id: int | None, folder: tuple[str, Path],
           files: list[tuple[str, Path]], limits: Limits) -> int:
    """Check the files (already in `folder`) and queue the job; refused files are removed, their reasons kept."""
    if not files:
        raise UploadError("no files: send one or more in the field 'files'")
    if len(files) > limits.max_files:
        raise UploadError(f"{len(files):,} files in one upload; the limit is {limits.max_files:,}", 413)
    results, seen = [], {}
    used = [used_bytes(layout) if limits.quota else 0]  # once: a refused zip gives its share back

    def over_quota(path: Path) -> bool:
        if limits.quota and used[0] > limits.quota:
            used[0] -= path.stat().st_size + declared_size(path)
            return True
        return False

    with sessions() as session:
        for name, path in files:
            result = check_file(session, name, path, limits, seen, lambda p=path: over_quota(p))
            result.reason = jobs.public_text(result.reason.replace(str(path), name), layout)
            if result.status != "waiting":
                path.unlink(missing_ok=True)
            results.append(result)
    waiting = sum(r.status == "waiting" for r in results)
    if not waiting:
        shutil.rmtree(folder[1], ignore_errors=True)
        return jobs.create(sessions, "upload", user_id, folder=folder[0], files=results, status="done",
                           message="nothing to index: every file was refused or is in the collection already")
    return jobs.create(sessions, "upload", user_id, folder=folder[0], files=results,
                       message=f"{waiting} file(s) waiting to be indexed")


def discard_unindexed(sessions: sessionmaker, layout: DataLayout, folder: str) -> list[str]:
    """Delete the files of an upload folder that no video or image row names (a zip stays while any of its entries
    is catalogued); returns their names."""
    from app.archives import archive_dest

    root = (layout.uploads_dir / folder).resolve()
    uploads = layout.uploads_dir.resolve()
    if not folder or root == uploads or not root.is_relative_to(uploads) or not root.is_dir() or \
            root.name.startswith("."):
        return []
    removed = []
    with sessions() as session:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            if path.suffix.lower() == ".zip":
                prefix = str(archive_dest(path, layout.archives_dir)) + "/"
                used = session.scalar(select(Image.id).where(Image.path.startswith(prefix)).limit(1)) or \
                    session.scalar(select(Video.id).where(Video.path.startswith(prefix)).limit(1))
            else:
                used = session.scalar(select(Image.id).where(Image.path == str(path)).limit(1)) or \
                    session.scalar(select(Video.id).where(Video.path == str(path)).limit(1))
            if not used:
                if path.suffix.lower() == ".zip":  # what the job extracted from it is not kept either
                    shutil.rmtree(archive_dest(path, layout.archives_dir), ignore_errors=True)
                path.unlink()
                removed.append(path.relative_to(root).as_posix())
    return removed
