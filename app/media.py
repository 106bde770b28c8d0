"""Finding media in the paths a user names: videos, images, zips and AI Challenge datasets."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
ARCHIVE_EXTENSIONS = frozenset({".zip"})


@dataclass
class Problem:
    """A file that was skipped or failed, and why (reported by name, never fatal to the run)."""

    name: str
    reason: str


@dataclass
class Discovery:
    videos: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    archives: list[Path] = field(default_factory=list)
    aic_datasets: list[Path] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    names: dict[Path, str] = field(default_factory=dict)  # image -> its path below the folder that was named


class BadMediaFile(Exception):
    """An input file that cannot be used (unreadable, damaged, not what its name says): the run reports it and
    goes on. Anything else that goes wrong is a bug and stops the run with a traceback."""


def is_aic_dataset(folder: Path) -> bool:
    """HCMC AI Challenge layout: keyframes/<video>/<n>.jpg beside map-keyframes/<video>.csv."""
    return (folder / "keyframes").is_dir() and (folder / "map-keyframes").is_dir()


def classify(path: Path) -> str | None:
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in ARCHIVE_EXTENSIONS:
        return "archive"
    return None


def _add_file(path: Path, found: Discovery, explicit: bool) -> None:
    kind = classify(path)
    if kind is None:
        problem = Problem(str(path), "not a media file (unsupported extension)")
        (found.failed if explicit else found.skipped).append(problem)
    elif kind == "video":
        found.videos.append(path)
    elif kind == "image":
        found.images.append(path)
    else:
        found.archives.append(path)


def discover(paths: list[Path], found: Discovery | None = None) -> Discovery:
    """Walk the given paths (recursively, sorted, so runs are reproducible)."""
    found = found or Discovery()
    for raw in paths:
        path = Path(raw).resolve()
        if not path.exists():
            found.failed.append(Problem(str(raw), "no such file or folder"))
        elif path.is_file():
            found.names[path] = path.name
            _add_file(path, found, explicit=True)
        elif is_aic_dataset(path):
            found.aic_datasets.append(path)
        else:
            for dirpath, dirnames, filenames in os.walk(path):
                here = Path(dirpath)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for d in list(dirnames):
                    if is_aic_dataset(here / d):
                        found.aic_datasets.append(here / d)
                        dirnames.remove(d)
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    if (here / name).is_symlink():  # a link inside a folder could point anywhere
                        found.skipped.append(Problem(str(here / name), "a symbolic link (not followed; name the "
                                                                       "target itself to index it)"))
                        continue
                    found.names[here / name] = (here / name).relative_to(path).as_posix()
                    _add_file(here / name, found, explicit=False)
    return found


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """BLAKE2b of the whole file: identifies content, whatever the name or mtime."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_id(text: str) -> str:
    """A video id usable as a folder and file name and in URLs (letters, digits, _ . -)."""
    cleaned = _UNSAFE_ID.sub("_", text).strip("._") or "video"
    return cleaned[:120]
