"""One video in, its shots and keyframes out: a single decoding pass.

A reader thread decodes with PyAV (FFmpeg releases the GIL) and makes the small copies;
the main thread runs TransNetV2 and keeps candidate keyframes in memory, so the file is
read exactly once and the keyframe pixels that CLIP sees are the frames already decoded.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from app.keyframes import Candidate, ChosenKeyframe, KeyframeSelector, QualityWindow, frame_quality
from app.progress import StageProgress
from app.shots import CONTEXT, FAST_WINDOW, FrameDecision, ShotRange, ShotTracker, StreamingShotDetector
from app.video_decode import DecodedFrame, VideoError, VideoInfo, decode_frames

TRUNCATION_TOLERANCE = 0.05  # decoded frames may fall this short of the container's count

__all__ = ["VideoError", "VideoResult", "process_video"]


@dataclass
class VideoResult:
    fps: float
    frames: int
    width: int
    height: int
    shots: list[ShotRange] = field(default_factory=list)
    keyframes: list[ChosenKeyframe] = field(default_factory=list)
    info: VideoInfo | None = None
    last_time: float = 0.0  # pts of the last frame (seconds)

    @property
    def duration(self) -> float:
        if self.last_time > 0 and self.frames > 1:
            return self.last_time * self.frames / (self.frames - 1)  # one frame's length after the last start
        return self.frames / self.fps if self.fps else 0.0


def _reader(path: Path, max_side: int, out: queue.Queue, info_out: list, stop: threading.Event,
            timings: dict[str, float]) -> None:
    try:
        frames = decode_frames(path, max_side, info_out)
        while not stop.is_set():
            t0 = time.perf_counter()
            frame = next(frames, None)
            timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - t0
            if frame is None:
                break
            out.put(frame)
        frames.close()
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
        out.put(exc)
    finally:
        out.put(None)


class _Pipeline:
    """Frames wait here for their transition probability, quality and shot decision."""

    def __init__(self, interval_s: float, threshold: float, result: VideoResult,
                 pinned: frozenset[int] = frozenset()) -> None:
        self.pinned = pinned
        self.pinned_chosen: list[ChosenKeyframe] = []
        self.tracker = ShotTracker(threshold)
        self.selector = KeyframeSelector(interval_s)
        self.window = QualityWindow()
        self.result = result
        self.awaiting_prob: deque[list] = deque()  # [frame, quality or None]
        self.by_index: dict[int, Candidate] = {}  # probability known, shot decision pending
        self.unscored: list | None = None  # the newest entry: its quality waits for the next frame

    def add(self, frame: DecodedFrame) -> None:
        entry = [frame, None]
        finished = self.window.push(frame.grey, frame_quality(frame.grey, frame.small_rgb))
        if finished is not None:
            self.unscored[1] = finished
        self.unscored = entry
        self.awaiting_prob.append(entry)

    def flush_quality(self) -> None:
        finished = self.window.flush()
        if finished is not None:
            self.unscored[1] = finished

    def settle(self, probs: list[tuple[float, float]]) -> None:
        for single, many in probs:
            frame, quality = self.awaiting_prob.popleft()
            self.by_index[frame.index] = Candidate(frame.index, max(single, many), quality, frame, frame.pts_time)
            self.decide(self.tracker.feed(frame.index, single, many))

    def decide(self, decisions: list) -> None:
        for d in decisions:
            if isinstance(d, FrameDecision):
                cand = self.by_index.pop(d.frame_idx)
                if d.frame_idx in self.pinned:
                    self.pinned_chosen.append(cand.chosen(d.shot))
                if d.shot is not None:
                    self.selector.offer(cand)
            else:
                self.result.keyframes.extend(self.selector.close(d))


def process_video(path: Path, transnet: torch.nn.Module, *, interval_s: float = 4.0,
                  keyframe_max_side: int = 1280, threshold: float = 0.5,
                  progress: StageProgress | None = None, timings: dict[str, float] | None = None,
                  pinned: frozenset[int] = frozenset()) -> VideoResult:
    """Decode, detect shots and choose keyframes. Raises VideoError for unusable files.

    `pinned` frames are keyframes whatever the choice says (frames that carry boxes: a re-index with other
    settings keeps every box on its frame).

    `timings` (if given) accumulates busy seconds per stage: decode (with the small copies),
    prepare (frame quality), shots (TransNetV2), keyframes (choice).
    """
    timings = {} if timings is None else timings
    info_out: list[VideoInfo] = []
    frames_q: queue.Queue = queue.Queue(maxsize=64)
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(path, keyframe_max_side, frames_q, info_out, stop, timings),
                              daemon=True)
    reader.start()
    detector = None  # made at the first frame, its window sized to the clip (a short clip is one short window)
    result = VideoResult(fps=25.0, frames=0, width=0, height=0)
    pipe: _Pipeline | None = None

    def add(stage: str, since: float) -> float:
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - since
        return now

    def settle(probs: list[tuple[float, float]]) -> None:
        if progress is not None and probs:
            progress.update("shots", len(probs))
        t0 = time.perf_counter()
        pipe.settle(probs)
        add("keyframes", t0)

    try:
        while (item := frames_q.get()) is not None:
            if isinstance(item, Exception):
                if isinstance(item, VideoError):
                    raise item
                raise VideoError(f"decoding failed: {item}")
            if pipe is None:
                info = info_out[0]
                result.fps, result.info = info.fps, info
                pipe = _Pipeline(interval_s, threshold, result, pinned)
                n = info.declared_frames
                window = FAST_WINDOW if n <= 0 or n + 2 * CONTEXT >= FAST_WINDOW else n + 2 * CONTEXT
                detector = StreamingShotDetector(transnet, window=window)
            t0 = time.perf_counter()
            pipe.add(item)
            result.frames += 1
            result.last_time = item.pts_time
            t0 = add("prepare", t0)
            probs = detector.push(item.small_rgb)
            add("shots", t0)
            settle(probs)
            if progress is not None:
                progress.update("decode", 1)
        if pipe is None:
            raise VideoError("no decodable frame (corrupt or not a video)")
        pipe.flush_quality()
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
    info = result.info
    result.width, result.height = info.width, info.height
    declared = info.declared_frames
    # Fewer frames than declared is not enough: a Cinepak AVI may declare 444 frames and hold 68 that span its
    # whole 29.6 s. Cut short means the frames also stop well before the declared duration.
    short_of_frames = declared > 0 and result.frames < declared * (1 - TRUNCATION_TOLERANCE) - 1
    declared_s = max(info.duration_s or 0.0, declared / info.fps if info.fps else 0.0)
    short_of_time = result.duration < declared_s * (1 - TRUNCATION_TOLERANCE) - 0.5
    if short_of_frames and short_of_time:
        raise VideoError(f"truncated: decoded {result.frames} of the {declared} frames the container declares, "
                         f"{result.duration:.1f} s of {declared_s:.1f} s (the file is probably cut short)")
    pipe.decide(pipe.tracker.finish())
    if not result.keyframes and not pipe.pinned_chosen and pipe.selector.blank_backup is not None:
        result.keyframes.append(pipe.selector.blank_backup)  # an all-blank video still gets one keyframe
    if pipe.pinned_chosen:
        chosen = {kf.frame_idx: kf for kf in result.keyframes}
        for kf in pipe.pinned_chosen:
            chosen.setdefault(kf.frame_idx, kf)
        result.keyframes = [chosen[i] for i in sorted(chosen)]
    result.shots = pipe.tracker.shots
    return result
