"""Writing one video's derived files (AI Challenge layout) and its catalogue rows.

A video's files are staged beside the old ones, the catalogue commit follows, and then the
files are renamed into place; a kill anywhere is finished or undone by the next run
(`recover_staged`), so catalogue, files and the served index never disagree for long.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import atomic
from app.media import file_hash, safe_id
from app.models import Keyframe, Shot, Video
from app.paths import DataLayout
from app.safe_files import UnsafeFile, open_beneath

JPEG_QUALITY = 90


@dataclass
class KeyframeRecord:
    frame_idx: int
    shot: int | None  # index into the shots list, or None (imported datasets)
    jpeg: bytes | None = None  # the encoded keyframe to write, or
    source: Path | None = None  # an existing JPEG to copy
    pts_time: float | None = None  # the frame's own time; None: frame_idx / fps

    def time(self, fps: float) -> float:
        return round(self.pts_time if self.pts_time is not None else self.frame_idx / fps, 3)


def encode_jpeg(bgr: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The keyframe file's bytes and the pixels a reader of that file gets (what CLIP must see, so that
    uploading a keyframe finds exactly its own vector)."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError("could not encode a keyframe as JPEG")
    data = buf.tobytes()
    return data, cv2.imdecode(buf, cv2.IMREAD_COLOR)


@dataclass
class FileState:
    """What we know of a file on disk, to skip unchanged ones without reading them."""

    size: int
    mtime_ns: int
    content_hash: str | None = None

    @classmethod
    def of(cls, path: Path) -> FileState:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns)

    def same_as(self, size: int, mtime_ns: int) -> bool:
        return self.size == size and self.mtime_ns == mtime_ns

    def hash(self, path: Path) -> str:
        if self.content_hash is None:
            self.content_hash = file_hash(path)
        return self.content_hash


def unique_video_id(session: Session, stem: str, path: str) -> str:
    """The file's stem as id (like L01_V001); a short path hash is added on a clash."""
    base = safe_id(stem)
    if session.scalar(select(Video.id).where(Video.video_id == base)) is None:
        return base
    return f"{base}_{blake2b(path.encode(), digest_size=3).hexdigest()}"


SOURCE_MARKER = ".source"  # inside keyframes/<id>/: the content hash of the video those files were made from


def staging_dir(layout: DataLayout, video_id: str) -> Path:
    return layout.data_dir / ".staging" / video_id


def write_video_files(layout: DataLayout, video_id: str, source_hash: str, fps: float,
                      keyframes: list[KeyframeRecord], shots: list[tuple[int, int]] | None,
                      features: np.ndarray) -> None:
    """Stage a video's new files beside the old ones (.staging/<id>/): keyframes/NNN.jpg, map.csv,
    shots.csv, feature.npy. Nothing visible changes until `publish_video_files`, which runs after the
    catalogue commit; a kill in between is finished (or undone) by `recover_staged` at the next run."""
    if len(features) != len(keyframes):
        raise ValueError("one feature row per keyframe expected")
    stage = staging_dir(layout, video_id)
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "keyframes").mkdir(parents=True)
    lines = ["n,pts_time,fps,frame_idx"]
    for n, kf in enumerate(keyframes, start=1):
        target = stage / "keyframes" / f"{n:03d}.jpg"
        if kf.jpeg is not None:
            target.write_bytes(kf.jpeg)
        else:
            shutil.copyfile(kf.source, target)
        lines.append(f"{n},{kf.time(fps):.3f},{fps:g},{kf.frame_idx}")
    (stage / "keyframes" / SOURCE_MARKER).write_text(source_hash)
    atomic.write_text(stage / "map.csv", "\n".join(lines) + "\n")
    if shots is not None:
        shot_lines = ["shot,start_frame,end_frame"] + [f"{i},{a},{b}" for i, (a, b) in enumerate(shots)]
        atomic.write_text(stage / "shots.csv", "\n".join(shot_lines) + "\n")
    atomic.save_npy(stage / "feature.npy", features.astype(np.float32))
    atomic.write_text(stage / "SOURCE", source_hash)  # last: the stage is complete


def staged_proxy_path(layout: DataLayout, video_id: str) -> Path:
    return staging_dir(layout, video_id) / "proxy.mp4"


def publish_video_files(layout: DataLayout, video_id: str) -> None:
    """Move a complete stage into the AI Challenge layout. Each step is a rename and can be redone, so a
    kill half-way is finished by the next run. The keyframes folder (with its source marker) goes last."""
    stage = staging_dir(layout, video_id)
    if not (stage / "SOURCE").is_file():
        shutil.rmtree(stage, ignore_errors=True)
        return
    for name, final in (("feature.npy", layout.video_feature_path(video_id)),
                        ("map.csv", layout.map_dir / f"{video_id}.csv"),
                        ("shots.csv", layout.shots_dir / f"{video_id}.csv")):
        if (stage / name).exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, final)
    if (stage / "proxy.mp4").exists():
        layout.proxies_dir.mkdir(parents=True, exist_ok=True)
        os.replace(stage / "proxy.mp4", layout.proxy_path(video_id))
    elif (stage / "keyframes").exists():  # not yet published, and this revision plays as it is: no proxy
        layout.proxy_path(video_id).unlink(missing_ok=True)
    if (stage / "keyframes").exists():
        atomic.replace_dir(stage / "keyframes", layout.keyframes_dir / video_id)
    shutil.rmtree(stage, ignore_errors=True)


def recover_staged(session: Session, layout: DataLayout) -> None:
    """After a kill: a stage whose video the catalogue already describes is published; any other is dropped."""
    root = layout.data_dir / ".staging"
    for stage in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            source = (stage / "SOURCE").read_text().strip()
        except OSError:
            source = None
        row = session.scalar(select(Video).where(Video.video_id == stage.name))
        if source and row is not None and row.content_hash == source:
            publish_video_files(layout, stage.name)
        else:
            shutil.rmtree(stage, ignore_errors=True)
    for old in layout.keyframes_dir.glob(".*.old") if layout.keyframes_dir.is_dir() else []:
        shutil.rmtree(old, ignore_errors=True)


def files_match(layout: DataLayout, video_id: str, content_hash: str) -> bool:
    """Whether keyframes/<id>/ holds the files of the catalogued revision (older collections have no marker)."""
    found = marker_hash(layout, video_id)
    if found is None:  # no marker: a collection indexed before markers existed, or no files yet
        return (layout.keyframes_dir / video_id).is_dir()
    return found == content_hash


def marker_hash(layout: DataLayout, video_id: str) -> str | None:
    """The content hash keyframes/<id>/ says its files were made from; None without a marker."""
    try:
        handle, _ = open_beneath(layout.data_dir, f"keyframes/{video_id}/{SOURCE_MARKER}")
    except UnsafeFile:
        return None
    with handle:
        return handle.read(200).decode("ascii", "replace").strip()


class MarkerCache:
    """The markers' hashes, read once per marker file: a search checks the videos of its hits (100 a query at 1M
    keyframes), and reading each marker through open_beneath took 4 opens a video, about 3 ms a query. A marker is
    only ever replaced with its folder (publish renames a staged folder in), so one lstat that finds the same
    inode, size and times finds the same content."""

    def __init__(self, layout: DataLayout, limit: int = 100_000) -> None:
        self.layout, self.limit = layout, limit
        self._root = str(layout.keyframes_dir)  # joined as text: pathlib cost more than the lstat itself
        self._known: dict[tuple, str | None] = {}

    def matches(self, video_id: str, content_hash: str) -> bool:
        folder = os.path.join(self._root, video_id)
        try:
            st = os.lstat(os.path.join(folder, SOURCE_MARKER))
        except FileNotFoundError:  # no marker (files_match's own answer, without its four opens)
            return os.path.isdir(folder)
        except OSError:
            return files_match(self.layout, video_id, content_hash)
        key = (video_id, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in self._known:
            if len(self._known) >= self.limit:
                self._known.clear()
            self._known[key] = marker_hash(self.layout, video_id)
        found = self._known[key]
        return os.path.isdir(folder) if found is None else found == content_hash


def replace_video_rows(session: Session, layout: DataLayout, existing: Video | None, video_id: str, path: str,
                       state: FileState, fps: float, frames: int, size: tuple[int, int], source: str,
                       keyframes: list[KeyframeRecord], shots: list[tuple[int, int]] | None,
                       duration: float | None = None) -> Video:
    """One transaction: the old rows of this video go, the new ones come."""
    if existing is not None:
        session.delete(existing)
        session.flush()
    video = Video(video_id=video_id, path=path, source=source, content_hash=state.content_hash or "",
                  size=state.size, mtime_ns=state.mtime_ns, fps=fps, frames=frames,
                  duration=duration if duration is not None else (frames / fps if fps else 0.0),
                  width=size[0], height=size[1])
    shot_rows = [Shot(shot=i, start_frame=a, end_frame=b) for i, (a, b) in enumerate(shots or [])]
    video.shots = shot_rows
    session.add(video)
    session.flush()
    video.keyframes = [
        Keyframe(n=n, frame_idx=kf.frame_idx, pts_time=kf.time(fps),
                 shot_id=shot_rows[kf.shot].id if kf.shot is not None and shot_rows else None,
                 image_path=layout.keyframe_relpath(video_id, n))
        for n, kf in enumerate(keyframes, start=1)
    ]
    session.commit()
    return video


def remove_video_files(layout: DataLayout, video_id: str) -> None:
    shutil.rmtree(staging_dir(layout, video_id), ignore_errors=True)
    shutil.rmtree(layout.keyframes_dir / video_id, ignore_errors=True)
    for p in (layout.map_dir / f"{video_id}.csv", layout.shots_dir / f"{video_id}.csv",
              layout.video_feature_path(video_id), layout.proxy_path(video_id)):
        p.unlink(missing_ok=True)
