"""The server's ground-truth folder: what the evaluation page offers, and where uploads go.

Users pick a set by a name from `available()`; only those names map to paths, so no user
path reaches the filesystem. Uploads are CSV files or zips of .txt/.csv files (Oxford
style); pickles are never accepted from an upload.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from app import atomic
from app.archives import extract_archive
from app.groundtruth import ANNOTATIONS_SET, GroundTruth, GroundTruthError, from_annotations, load

UPLOADS = "uploads"
TEXT_SUFFIXES = {".txt", ".csv"}


def _is_set(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_file():
        return path.suffix.lower() in (".csv", ".pkl")
    return path.is_dir() and path.name != UPLOADS


def available(root: Path) -> dict[str, Path]:
    """Display name -> path of every set in the folder (and in its uploads/ subfolder)."""
    sets: dict[str, Path] = {}
    for base, prefix in ((root, ""), (root / UPLOADS, f"{UPLOADS}/")):
        if base.is_dir():
            for p in sorted(base.iterdir()):
                if _is_set(p):
                    sets[prefix + p.name] = p
    return sets


def annotations_ground_truth(sessions) -> GroundTruth:
    """The saved boxes as a ground-truth set (see groundtruth.from_annotations)."""
    from app import boxes

    with sessions() as session:
        rows = [(a.id, a.target, (a.x, a.y, a.w, a.h), a.label.name) for a in boxes.search(session, limit=100_000)]
    if not rows:
        raise GroundTruthError("no annotations yet: draw and label boxes on the annotation pages first")
    return from_annotations(rows)


def load_named(root: Path, name: str, sessions=None) -> GroundTruth:
    if name == ANNOTATIONS_SET and sessions is not None:
        return annotations_ground_truth(sessions)
    sets = available(root)
    if name not in sets:
        raise GroundTruthError(f"no ground-truth set named '{name}' in the server's ground-truth folder")
    return load(sets[name], allow_pickle=not name.startswith(f"{UPLOADS}/"))


def _safe_stem(filename: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(filename).stem).strip("._") or "upload"
    return stem[:60]


def save_upload(root: Path, filename: str, data: bytes) -> str:
    """Store an uploaded set under uploads/ and return its name; the set is loaded once to check it,
    and removed again when it is not usable."""
    suffix = Path(filename or "").suffix.lower()
    if suffix == ".pkl":
        raise GroundTruthError(f"{filename}: pickles are loaded only from the command line or the server's "
                               f"ground-truth folder, never from an upload")
    if suffix not in (".csv", ".zip"):
        raise GroundTruthError(f"{filename or 'the upload'}: upload a video-moments .csv or a .zip of "
                               f"Oxford-style .txt files")
    if not data:
        raise GroundTruthError(f"{filename}: the file is empty")
    uploads = root / UPLOADS
    uploads.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if suffix == ".csv":
        target = uploads / f"{stamp}-{_safe_stem(filename)}.csv"
        atomic.write_bytes(target, data)
        return _checked(root, target, f"{UPLOADS}/{target.name}")
    archive = uploads / f".{stamp}-{_safe_stem(filename)}.zip"
    atomic.write_bytes(archive, data)
    try:
        files, failed, skipped = extract_archive(archive, uploads, accept=lambda p: p.suffix.lower() in TEXT_SUFFIXES)
    finally:
        archive.unlink(missing_ok=True)
    folder = uploads / f"{archive.stem}"
    extracted = next(iter(files), None)
    if extracted is not None:
        folder = next(p for p in [extracted.parent, *extracted.parents] if p.parent == uploads)
    if failed or any(p.name.lower().endswith(".pkl") for p in skipped) or not files:
        _remove(folder)
        reason = (failed[0].name + ": " + failed[0].reason) if failed else \
            "pickles are never accepted from an upload" if skipped else "no .txt or .csv files inside"
        raise GroundTruthError(f"{filename}: {reason}")
    queries = sorted({p.parent for p in files if p.name.endswith("_query.txt")})
    if len(queries) != 1:
        _remove(folder)
        raise GroundTruthError(f"{filename}: expected one folder of *_query.txt files, found {len(queries)}")
    final = uploads / f"{stamp}-{_safe_stem(filename)}"
    queries[0].rename(final)
    if folder.exists() and folder != final:
        _remove(folder)
    return _checked(root, final, f"{UPLOADS}/{final.name}")


def _checked(root: Path, path: Path, name: str) -> str:
    try:
        load(path, allow_pickle=False)
    except GroundTruthError:
        _remove(path)
        raise
    return name


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
