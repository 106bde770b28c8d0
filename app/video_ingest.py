"""One video in, its shots and keyframes out: a single decoding pass.

A reader thread decodes with OpenCV (which releases the GIL) while the main thread runs
TransNetV2 and keeps candidate keyframes in memory, so the file is read exactly once and
the keyframe pixels that CLIP sees are the frames already decoded.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from app.keyframes import ChosenKeyframe, KeyframeSelector, frame_quality
from app.progress import StageProgress
from app.shots import ShotRange, ShotTracker, StreamingShotDetector

TRUNCATION_TOLERANCE = 0.05  # decoded frames may fall this short of the container's count


class VideoError(Exception):
    """The video cannot be used (unreadable, empty, truncated); the run skips it and goes on."""


@dataclass
class VideoResult:
    fps: float
    frames: int
    width: int
    height: int
    shots: list[ShotRange] = field(default_factory=list)
    keyframes: list[ChosenKeyframe] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps else 0.0


def _fit(frame: np.ndarray, max_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return frame
    return cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def _reader(cap: cv2.VideoCapture, out: queue.Queue, stop: threading.Event, timings: dict[str, float]) -> None:
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            ok, frame = cap.read()
            timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - t0
            if not ok:
                break
            out.put(frame)
    except Exception as exc:  # noqa: BLE001 - handed to the consumer
        out.put(exc)
    finally:
        out.put(None)


def process_video(path: Path, transnet: torch.nn.Module, *, interval_s: float = 4.0,
                  keyframe_max_side: int = 1280, threshold: float = 0.5,
                  progress: StageProgress | None = None, timings: dict[str, float] | None = None) -> VideoResult:
    """Decode, detect shots and choose keyframes. Raises VideoError for unusable files.

    `timings` (if given) accumulates busy seconds per stage: decode, prepare, shots, keyframes.
    """
    timings = {} if timings is None else timings
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError("cannot open: not a video or corrupt container")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = float(fps) if fps and np.isfinite(fps) and 1 <= fps <= 1000 else 25.0
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    frames_q: queue.Queue = queue.Queue(maxsize=64)
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(cap, frames_q, stop, timings), daemon=True)
    reader.start()

    detector = StreamingShotDetector(transnet)
    tracker = ShotTracker(threshold)
    selector = KeyframeSelector(fps, interval_s)
    pending: deque = deque()  # frames waiting for their transition probability
    result = VideoResult(fps=fps, frames=0, width=0, height=0)

    def add(stage: str, since: float) -> float:
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - since
        return now

    def settle(probs: list[tuple[float, float]]) -> None:
        if progress is not None and probs:
            progress.update("shots", len(probs))
        t0 = time.perf_counter()
        for single, many in probs:
            idx, quality, image = pending.popleft()
            closed = tracker.feed(idx, single)
            if closed is not None:
                result.keyframes.extend(selector.close(closed))
            selector.offer(idx, max(single, many), quality, image, tracker.open_shot)
        add("keyframes", t0)

    try:
        while (item := frames_q.get()) is not None:
            if isinstance(item, Exception):
                raise VideoError(f"decoding failed: {item}")
            if result.frames == 0:
                result.height, result.width = item.shape[:2]
            t0 = time.perf_counter()
            small = cv2.cvtColor(cv2.resize(item, (48, 27), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            pending.append((result.frames, frame_quality(item), _fit(item, keyframe_max_side)))
            result.frames += 1
            t0 = add("prepare", t0)
            probs = detector.push(small)
            add("shots", t0)
            settle(probs)
            if progress is not None:
                progress.update("decode", 1)
        t0 = time.perf_counter()
        probs = detector.finish()
        add("shots", t0)
        settle(probs)
    finally:
        stop.set()
        while reader.is_alive():
            try:
                frames_q.get_nowait()
            except queue.Empty:
                reader.join(0.05)
        cap.release()
    if result.frames == 0:
        raise VideoError("no decodable frame (corrupt or not a video)")
    if declared > 0 and result.frames < declared * (1 - TRUNCATION_TOLERANCE) - 1:
        raise VideoError(f"truncated: decoded {result.frames} of {declared} frames")
    last = tracker.finish()
    if last is not None:
        result.keyframes.extend(selector.close(last))
    if not result.keyframes and selector.blank_backup is not None:
        result.keyframes.append(selector.blank_backup)  # an all-blank video still gets one keyframe
    result.shots = tracker.shots
    return result
