"""The server's ground-truth folder: what the evaluation page offers, and where uploads go.

Users pick a set by a name from `available()`; only those names map to paths, so no user
path reaches the filesystem. Uploads are CSV files or zips of .txt/.csv files (Oxford
style); pickles are never accepted from an upload.
"""
from __future__ import annotations

import re
import secrets
import shutil
import time
from pathlib import Path

from app import atomic
from app.archives import extract_archive
from app.groundtruth import ANNOTATIONS_SET, GroundTruth, GroundTruthError, from_annotations, load

UPLOADS = "uploads"
TEXT_SUFFIXES = {".txt", ".csv"}
# An upload is bounded in bytes, expanded size, files and queries: a run answers about 8 queries a second
# on 2 cores, so 5,000 queries is a ten-minute run, not 36 hours.
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_EXPANDED_BYTES = 20 * 1024 * 1024
MAX_FILES = 20_000
MAX_QUERIES = 5_000


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


def annotations_ground_truth(sessions, layout=None) -> GroundTruth:
    """The saved boxes as a ground-truth set (see groundtruth.from_annotations). Boxes are kept in source pixels;
    with the collection's layout each query box is turned into the pixels of the stored picture it crops (a
    keyframe may be smaller than its video). Orphaned boxes (frame or image gone) are left out."""
    from app import boxes

    rows = []
    with sessions() as session:
        for a in boxes.search(session, limit=100_000):
            box = (a.x, a.y, a.w, a.h)
            if layout is not None:
                try:
                    left, top, right, bottom = boxes.target_of(session, layout, a).on_picture(box)
                except boxes.AnnotationError:
                    continue
                box = (left, top, right - left, bottom - top)
            rows.append((a.id, a.target, box, a.label.name))
    if not rows:
        raise GroundTruthError("no annotations yet: draw and label boxes on the annotation pages first")
    return from_annotations(rows)


def load_named(root: Path, name: str, sessions=None, layout=None) -> GroundTruth:
    if name == ANNOTATIONS_SET and sessions is not None:
        return annotations_ground_truth(sessions, layout)
    sets = available(root)
    if name not in sets:
        raise GroundTruthError(f"no ground-truth set named '{name}' in the server's ground-truth folder")
    return load(sets[name], allow_pickle=not name.startswith(f"{UPLOADS}/"))


def _safe_stem(filename: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(filename).stem).strip("._") or "upload"
    return stem[:60]


def save_upload(root: Path, filename: str, data: bytes) -> str:
    """Store an uploaded set under uploads/ and return its name. The set is loaded once to check it; when
    anything is wrong, nothing of it is left behind (no folder, no listed set)."""
    suffix = Path(filename or "").suffix.lower()
    if suffix == ".pkl":
        raise GroundTruthError(f"{filename}: pickles are loaded only from the command line or the server's "
                               f"ground-truth folder, never from an upload")
    if suffix not in (".csv", ".zip"):
        raise GroundTruthError(f"{filename or 'the upload'}: upload a video-moments .csv or a .zip of "
                               f"Oxford-style .txt files")
    if not data:
        raise GroundTruthError(f"{filename}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise GroundTruthError(f"{filename}: {len(data):,} bytes; a ground-truth upload takes at most "
                               f"{MAX_UPLOAD_BYTES:,} (put larger sets in the server's ground-truth folder)")
    uploads = root / UPLOADS
    uploads.mkdir(parents=True, exist_ok=True)
    # unique even for the same file twice in one second
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}-{_safe_stem(filename)}"
    made: list[Path] = []
    try:
        if suffix == ".csv":
            target = uploads / f"{stem}.csv"
            made.append(target)
            atomic.write_bytes(target, data)
            return _checked(target, f"{UPLOADS}/{target.name}")
        final = uploads / stem
        made.append(final)
        _extract_oxford(uploads, stem, filename, data, final, made)
        return _checked(final, f"{UPLOADS}/{final.name}")
    except GroundTruthError:
        for path in made:
            _remove(path)
        raise
    except (OSError, ValueError) as exc:
        for path in made:
            _remove(path)
        raise GroundTruthError(f"{filename}: could not store the upload ({exc})") from None


def _extract_oxford(uploads: Path, stem: str, filename: str, data: bytes, final: Path, made: list[Path]) -> None:
    archive = uploads / f".{stem}.zip"
    made.append(archive)
    atomic.write_bytes(archive, data)
    folder = uploads / f".{stem}.extracted"  # everything extracted lands here, removed on any failure
    made.append(folder)
    files, failed, skipped = extract_archive(archive, folder, max_total=MAX_EXPANDED_BYTES,
                                             accept=lambda p: p.suffix.lower() in TEXT_SUFFIXES,
                                             max_entries=MAX_FILES)
    archive.unlink(missing_ok=True)
    if failed or any(p.name.lower().endswith(".pkl") for p in skipped) or not files:
        reason = (failed[0].name.rsplit(":", 1)[-1] + ": " + failed[0].reason) if failed else \
            "pickles are never accepted from an upload" if skipped else "no .txt or .csv files inside"
        raise GroundTruthError(f"{filename}: {reason}")
    queries = sorted({p.parent for p in files if p.name.endswith("_query.txt")})
    if len(queries) != 1:
        raise GroundTruthError(f"{filename}: expected one folder of *_query.txt files, found {len(queries)}")
    queries[0].rename(final)
    _remove(folder)  # what was extracted around the query folder


def _checked(path: Path, name: str) -> str:
    """Load the stored set once; anything unreadable is a GroundTruthError (and the caller removes it)."""
    try:
        gt = load(path, allow_pickle=False)
    except GroundTruthError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever breaks the loader, the upload is refused, not kept
        raise GroundTruthError(f"{path.name}: cannot be read as ground truth ({type(exc).__name__}: {exc})") from None
    if len(gt.queries) > MAX_QUERIES:
        raise GroundTruthError(f"{path.name}: {len(gt.queries):,} queries; an upload holds at most {MAX_QUERIES:,}")
    if not gt.queries:
        raise GroundTruthError(f"{path.name}: no queries inside")
    return name


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
