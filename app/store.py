"""Writing one video's derived files (AI Challenge layout) and its catalogue rows.

Files are written first, atomically; the database commit comes last, so a kill before
the commit leaves the video "not indexed" and the next run simply does it again.
"""
from __future__ import annotations

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


def write_video_files(layout: DataLayout, video_id: str, fps: float, keyframes: list[KeyframeRecord],
                      shots: list[tuple[int, int]] | None, features: np.ndarray) -> None:
    """keyframes/<id>/NNN.jpg, map-keyframes/<id>.csv, shots/<id>.csv, feature/<id>.npy."""
    if len(features) != len(keyframes):
        raise ValueError("one feature row per keyframe expected")
    final_dir = layout.keyframes_dir / video_id
    tmp_dir = layout.keyframes_dir / f".{video_id}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    lines = ["n,pts_time,fps,frame_idx"]
    for n, kf in enumerate(keyframes, start=1):
        target = tmp_dir / f"{n:03d}.jpg"
        if kf.jpeg is not None:
            target.write_bytes(kf.jpeg)
        else:
            shutil.copyfile(kf.source, target)
        lines.append(f"{n},{kf.time(fps):.3f},{fps:g},{kf.frame_idx}")
    atomic.replace_dir(tmp_dir, final_dir)
    atomic.write_text(layout.map_dir / f"{video_id}.csv", "\n".join(lines) + "\n")
    if shots is not None:
        shot_lines = ["shot,start_frame,end_frame"] + [f"{i},{a},{b}" for i, (a, b) in enumerate(shots)]
        atomic.write_text(layout.shots_dir / f"{video_id}.csv", "\n".join(shot_lines) + "\n")
    atomic.save_npy(layout.video_feature_path(video_id), features.astype(np.float32))


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
    shutil.rmtree(layout.keyframes_dir / video_id, ignore_errors=True)
    for p in (layout.map_dir / f"{video_id}.csv", layout.shots_dir / f"{video_id}.csv",
              layout.video_feature_path(video_id), layout.proxy_path(video_id)):
        p.unlink(missing_ok=True)
