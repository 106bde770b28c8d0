"""Decoding video with PyAV (FFmpeg): real timestamps, rotation applied, bad packets skipped.

One decoding pass yields each frame with the small copies the later stages need (160x90
grey for frame quality, 48x27 RGB for TransNetV2), scaled by FFmpeg straight from the
decoded YUV in the decoding thread, so that they overlap TransNetV2 in the main thread.
The full picture stays YUV until a frame is chosen as a keyframe: only then is it turned
into BGR at keyframe size (half the memory, and no colour conversion for frames never
kept). Timestamps are the frames' own (variable-frame-rate files keep their true times);
phone videos are turned upright as players show them.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from app.media import BadMediaFile

# PyAV gives every frame its own scaler, with a thread per core unless told (threads=0 is its default). The frames
# kept as keyframe candidates kept those threads alive: 518 threads while indexing vtest.avi on 2 cores, and on a
# 16-core GPU machine thread creation failed (EAGAIN) and half the videos of a folder were lost. One thread each.
SCALER_THREADS = 1
THUMB_SIZE = (160, 90)  # frame quality and glitch checks
SMALL_SIZE = (48, 27)  # TransNetV2's input
MAX_BAD_PACKETS = 200  # a stream this damaged is reported instead of indexed


class VideoError(BadMediaFile):
    """The video cannot be used (unreadable, no picture, truncated); the run skips it and goes on."""


@dataclass
class VideoInfo:
    """What the container says, checked before decoding."""

    fps: float
    declared_frames: int  # 0 when the container does not say
    width: int  # as displayed (rotation applied)
    height: int
    rotation: int  # degrees counterclockwise the stored picture must turn (0, 90, 180, 270)
    container: str
    video_codec: str
    audio_codec: str | None
    pix_fmt: str | None
    duration_s: float | None
    bad_packets: int = 0


@dataclass
class DecodedFrame:
    index: int
    pts_time: float  # seconds from the first frame
    grey: np.ndarray  # THUMB_SIZE grey, uint8 (as stored: rotation does not matter there)
    small_rgb: np.ndarray  # SMALL_SIZE RGB, uint8 (TransNetV2)
    picture: av.VideoFrame  # the decoded frame, still YUV
    size: tuple[int, int]  # keyframe size as stored (before rotation)
    rotation: int = 0

    def image(self) -> np.ndarray:
        """The frame as BGR, longest side at most the keyframe size, upright."""
        if (self.picture.width, self.picture.height) == self.size:
            bgr = self.picture.to_ndarray(format="bgr24", threads=SCALER_THREADS)
        else:
            bgr = self.picture.reformat(width=self.size[0], height=self.size[1], format="bgr24",
                                        interpolation="AREA", threads=SCALER_THREADS).to_ndarray()
        return upright(bgr, self.rotation)


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    rotation %= 360
    if rotation == 90:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if rotation == 180:
        return cv2.rotate(image, cv2.ROTATE_180)
    if rotation == 270:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    return image


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The stored picture's size with its longest side at most max_side (never enlarged)."""
    scale = max_side / max(width, height)
    if scale >= 1:
        return width, height
    return max(2, round(width * scale)), max(2, round(height * scale))


def open_video(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(f"cannot open: not a video or corrupt container ({exc})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        raise VideoError(f"no video stream (the file holds {', '.join(kinds) or 'no streams'}; audio only?)")
    stream = container.streams.video[0]
    if stream.codec_context is None or stream.codec_context.name in ("", "none"):
        container.close()
        raise VideoError("the video codec is not supported by this FFmpeg build")
    stream.thread_type = "AUTO"  # frame and slice threads: about 1.2x on 2 cores
    return container, stream


def probe(container, stream) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    fps = fps if np.isfinite(fps) and 1 <= fps <= 1000 else 25.0
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    if duration is None and container.duration:
        duration = container.duration / av.time_base
    audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
    cc = stream.codec_context
    return VideoInfo(fps=fps, declared_frames=int(stream.frames or 0), width=cc.width, height=cc.height,
                     rotation=0, container=container.format.name, video_codec=cc.name, audio_codec=audio,
                     pix_fmt=cc.format.name if cc.format else None, duration_s=duration)


def _packets_frames(container, stream, info: VideoInfo) -> Iterator[av.VideoFrame]:
    """Frames in presentation order; undecodable packets are counted and skipped (as players do)."""
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            info.bad_packets += 1
            if info.bad_packets > MAX_BAD_PACKETS:
                raise VideoError(f"more than {MAX_BAD_PACKETS} undecodable packets (damaged stream)") from None


def decode_frames(path: Path, max_side: int, info_out: list) -> Iterator[DecodedFrame]:
    """Every frame of the first video stream, upright, with its own time. `info_out` receives the
    VideoInfo first (the caller needs fps before the frames)."""
    container, stream = open_video(path)
    try:
        info = probe(container, stream)
        info_out.append(info)
        first_time = None
        last_time = -1.0
        size = None
        for index, frame in enumerate(_packets_frames(container, stream, info)):
            if size is None:
                info.rotation = int(getattr(frame, "rotation", 0) or 0) % 360
                size = fit_size(frame.width, frame.height, max_side)
                if info.rotation in (90, 270):
                    info.width, info.height = frame.height, frame.width
                else:
                    info.width, info.height = frame.width, frame.height
            t = frame.time
            if t is None:
                t = (last_time + 1.0 / info.fps) if last_time >= 0 else 0.0
            elif first_time is None:
                first_time = t
            t = max(0.0, t - (first_time or 0.0))
            t = max(t, last_time + 1e-6) if last_time >= 0 else t  # never backwards
            last_time = t
            thumb = frame.reformat(width=THUMB_SIZE[0], height=THUMB_SIZE[1], format="bgr24",
                                   interpolation="AREA", threads=SCALER_THREADS).to_ndarray()
            small = cv2.cvtColor(cv2.resize(thumb, SMALL_SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            yield DecodedFrame(index, t, cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY), small, frame, size,
                               info.rotation)
    except av.FFmpegError as exc:
        raise VideoError(f"decoding failed: {exc}") from None
    finally:
        container.close()


BROWSER_VIDEO = {"mp4": {"h264"}, "webm": {"vp8", "vp9", "av1"}}
BROWSER_AUDIO = {"mp4": {"aac", "mp3"}, "webm": {"opus", "vorbis"}}


def browser_playable(path: Path, info: VideoInfo) -> bool:
    """Whether every current browser plays the file as it is (else a proxy is made)."""
    ext = path.suffix.lower()
    family = "mp4" if ext in (".mp4", ".m4v", ".mov") and "mp4" in info.container else \
        "webm" if ext == ".webm" else None
    if family is None or info.video_codec not in BROWSER_VIDEO[family]:
        return False
    if info.pix_fmt not in ("yuv420p", "yuvj420p", None):
        return False
    return info.audio_codec is None or info.audio_codec in BROWSER_AUDIO[family]
