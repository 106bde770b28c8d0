"""Choosing keyframes inside shots: sharp, not blank, away from transitions.

Each shot is cut into segments of `interval_s` seconds; each segment keeps its best
frame. A segment whose best frame is blank, transitional or much blurrier than the
shot's best is dropped whenever the shot has a better frame, so fades and dissolves
never become keyframes while a clean frame of the same shot exists.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.shots import ShotRange

CLEAN_PROB = 0.1  # TransNetV2 probability under which a frame is not part of a transition
BLANK_STD = 10.0  # grey-level standard deviation of a flat (blank, black, white) frame
BLUR_RATIO = 0.25  # below this fraction of the shot's best sharpness, a frame is "heavily blurred"


@dataclass(frozen=True)
class FrameQuality:
    sharpness: float  # variance of the Laplacian on a 160x90 grey copy
    mean: float
    std: float

    @property
    def blank(self) -> bool:
        return self.std < BLANK_STD


def frame_quality(bgr: np.ndarray) -> FrameQuality:
    grey = cv2.cvtColor(cv2.resize(bgr, (160, 90), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    mean, std = cv2.meanStdDev(grey)
    return FrameQuality(float(cv2.Laplacian(grey, cv2.CV_32F).var()), float(mean[0, 0]), float(std[0, 0]))


@dataclass
class Candidate:
    frame_idx: int
    prob: float
    quality: FrameQuality
    image: np.ndarray  # BGR, at keyframe resolution

    @property
    def clean(self) -> bool:
        return self.prob < CLEAN_PROB and not self.quality.blank

    def rank(self) -> tuple[bool, float, float]:
        return (self.clean, -self.prob if not self.clean else 0.0, self.quality.sharpness)


@dataclass
class ChosenKeyframe:
    shot: int
    frame_idx: int
    image: np.ndarray


class KeyframeSelector:
    """Fed frames in order with their transition probability; emits keyframes shot by shot."""

    def __init__(self, fps: float, interval_s: float = 4.0) -> None:
        self.segment_frames = max(1, round(fps * interval_s))
        self._segments: dict[int, Candidate] = {}
        self._shot_start: int | None = None
        self._fallback: Candidate | None = None  # best frame seen at all, for shots made only of transition
        self.blank_backup: ChosenKeyframe | None = None  # used only if the whole video is blank

    def offer(self, frame_idx: int, prob: float, quality: FrameQuality, image: np.ndarray,
              open_shot: int | None) -> None:
        """Consider a frame of the currently open shot (frames in transitions are only a fallback)."""
        cand = Candidate(frame_idx, prob, quality, image)
        if self._fallback is None or cand.rank() > self._fallback.rank():
            self._fallback = cand
        if open_shot is None:
            return
        if self._shot_start is None:
            self._shot_start = frame_idx
        segment = (frame_idx - self._shot_start) // self.segment_frames
        best = self._segments.get(segment)
        if best is None or cand.rank() > best.rank():
            self._segments[segment] = cand

    def close(self, shot: ShotRange) -> list[ChosenKeyframe]:
        """The shot ended: keep its good segments' frames (at least one, unless the shot is all blank)."""
        cands = [self._segments[s] for s in sorted(self._segments)]
        fallback = self._fallback
        self._segments, self._shot_start, self._fallback = {}, None, None
        if not cands:
            if fallback is not None and shot.start_frame <= fallback.frame_idx <= shot.end_frame:
                cands = [fallback]
            else:
                return []
        top = max(cands, key=Candidate.rank)
        if top.quality.blank:  # a shot of black or flat frames (a fade gap): nothing worth finding
            self.blank_backup = self.blank_backup or ChosenKeyframe(shot.shot, top.frame_idx, top.image)
            return []
        keep = [c for c in cands if c.clean and c.quality.sharpness >= BLUR_RATIO * top.quality.sharpness]
        if not keep:
            keep = [top]
        return [ChosenKeyframe(shot.shot, c.frame_idx, c.image) for c in keep]
