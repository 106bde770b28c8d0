"""Choosing keyframes inside shots: the frames a person would pick.

Each shot is cut into segments of `interval_s` seconds; each segment keeps its best frame.
What makes a frame good, in order:
- not a glitch: a frame very unlike both neighbours while the neighbours agree (a decoding
  error, a streak, a flash) is never chosen while the shot has any other frame;
- not a fade gap: black or white frames (dark, or bright and colourless, and flat); a flat
  red title card, the sky or a white wall with texture are content and are kept;
- away from the shot's ends: no keyframe within `margin_s` (0.3 s) of a boundary when the
  shot is long enough, since encoders put a sharper I-frame right at a cut and an
  off-by-one boundary would then show the neighbouring shot;
- outside transitions (TransNetV2's per-frame probability);
- sharp, measured robustly: a frame's Laplacian variance counts at most 1.5 times its
  neighbours', so noise and compression artefacts in one frame do not win.
Every shot keeps at least one keyframe unless all of it is a fade gap.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from app.shots import ShotRange

CLEAN_PROB = 0.1  # TransNetV2 probability under which a frame is not part of a transition
BLANK_STD = 10.0  # grey-level standard deviation under which a frame is flat
DARK_MEAN = 24.0  # a flat frame darker than this is a black fade gap
BRIGHT_MEAN = 230.0  # a flat frame brighter than this ...
GREYISH_SATURATION = 25.0  # ... and this colourless is a white fade gap
BLUR_RATIO = 0.25  # below this fraction of the shot's best sharpness, a frame is "heavily blurred"
GLITCH_LEVEL = 40  # grey levels by which a glitch pixel differs from both neighbours more than they differ
GLITCH_AREA = 0.01  # fraction of the picture such pixels must cover
SHARPNESS_CAP = 1.5  # a frame's sharpness counts at most this times its sharper neighbour's


@dataclass
class FrameQuality:
    sharpness: float  # variance of the Laplacian on a 160x90 grey copy (capped by the neighbours')
    mean: float
    std: float
    saturation: float = 0.0
    glitch: bool = False

    @property
    def blank(self) -> bool:
        """A black or white fade gap (not merely a flat-coloured picture)."""
        if self.std >= BLANK_STD:
            return False
        return self.mean < DARK_MEAN or (self.mean > BRIGHT_MEAN and self.saturation < GREYISH_SATURATION)


def frame_quality(grey: np.ndarray, small_rgb: np.ndarray | None = None) -> FrameQuality:
    """Quality of one frame from its 160x90 grey copy (and the 48x27 RGB one, for saturation)."""
    mean, std = cv2.meanStdDev(grey)
    saturation = 0.0
    if small_rgb is not None:
        saturation = float(cv2.cvtColor(small_rgb, cv2.COLOR_RGB2HSV)[:, :, 1].mean())
    return FrameQuality(float(cv2.Laplacian(grey, cv2.CV_32F).var()), float(mean[0, 0]), float(std[0, 0]),
                        saturation)


def is_glitch(prev: np.ndarray, cur: np.ndarray, nxt: np.ndarray) -> bool:
    """Frame `cur` is the odd one out: over GLITCH_AREA of it differs from both neighbours by
    GLITCH_LEVEL more than the neighbours differ from each other."""
    p, c, n = (a.astype(np.int16) for a in (prev, cur, nxt))
    odd = np.minimum(np.abs(c - p), np.abs(c - n)) - np.abs(p - n)
    return float(np.count_nonzero(odd > GLITCH_LEVEL)) > GLITCH_AREA * odd.size


class QualityWindow:
    """Scores frames one behind the stream: a frame's glitch flag and capped sharpness need the next frame."""

    def __init__(self) -> None:
        self._prev: tuple[np.ndarray, FrameQuality] | None = None
        self._cur: tuple[np.ndarray, FrameQuality] | None = None

    def push(self, grey: np.ndarray, quality: FrameQuality) -> FrameQuality | None:
        """Add a frame; returns the finished quality of the frame before it (None for the first)."""
        done = None
        if self._cur is not None:
            done = self._finish(self._cur, self._prev, (grey, quality))
        self._prev, self._cur = self._cur, (grey, quality)
        return done

    def flush(self) -> FrameQuality | None:
        if self._cur is None:
            return None
        done = self._finish(self._cur, self._prev, None)
        self._prev = self._cur = None
        return done

    @staticmethod
    def _finish(cur, prev, nxt) -> FrameQuality:
        grey, q = cur
        neighbours = [x[1].sharpness for x in (prev, nxt) if x is not None]
        if neighbours:
            q.sharpness = min(q.sharpness, SHARPNESS_CAP * max(neighbours))
        if prev is not None and nxt is not None:
            q.glitch = is_glitch(prev[0], grey, nxt[0])
        return q


@dataclass
class ChosenKeyframe:
    shot: int
    frame_idx: int
    image: np.ndarray
    pts_time: float = 0.0


@dataclass
class Candidate:
    frame_idx: int
    prob: float
    quality: FrameQuality
    picture: object  # anything with image() -> BGR at keyframe resolution (converted only if chosen)
    pts_time: float = 0.0

    def chosen(self, shot: int) -> ChosenKeyframe:
        return ChosenKeyframe(shot, self.frame_idx, self.picture.image(), self.pts_time)

    @property
    def clean(self) -> bool:
        return self.prob < CLEAN_PROB and not self.quality.blank and not self.quality.glitch

    def rank(self) -> tuple[bool, bool, bool, float, float]:
        q = self.quality
        return (not q.glitch, not q.blank, self.prob < CLEAN_PROB, -self.prob if self.prob >= CLEAN_PROB else 0.0,
                q.sharpness)


class KeyframeSelector:
    """Fed the frames of each shot in order; emits keyframes when the shot closes. Segments, margins and
    spacing are measured on the frames' own timestamps, so sparse and variable-frame-rate files are right."""

    def __init__(self, interval_s: float = 4.0, margin_s: float = 0.3) -> None:
        self.interval_s = max(interval_s, 1e-3)
        self.margin_s = max(0.0, margin_s - 1e-6)  # a frame exactly margin_s in counts as outside
        self._segments: dict[int, Candidate] = {}
        self._edge: Candidate | None = None  # best frame within the margin of either end
        self._tail: deque[Candidate] = deque()  # frames within the margin of the newest: maybe near the end
        self._shot_start: float | None = None
        self.blank_backup: ChosenKeyframe | None = None  # used only if the whole video is blank

    def offer(self, cand: Candidate) -> None:
        """A frame of the currently open shot, in order."""
        if self._shot_start is None:
            self._shot_start = cand.pts_time
        self._tail.append(cand)
        while self._tail and self._tail[0].pts_time < cand.pts_time - self.margin_s:
            self._place(self._tail.popleft())

    def _place(self, cand: Candidate) -> None:
        into = cand.pts_time - self._shot_start - self.margin_s
        if into < 0:
            self._keep_edge(cand)
            return
        segment = int(into // self.interval_s)
        best = self._segments.get(segment)
        if best is None or cand.rank() > best.rank():
            self._segments[segment] = cand

    def _keep_edge(self, cand: Candidate) -> None:
        if self._edge is None or cand.rank() > self._edge.rank():
            self._edge = cand

    def close(self, shot: ShotRange) -> list[ChosenKeyframe]:
        """The shot ended: keep its good segments' frames (at least one, unless it is a fade gap)."""
        for cand in self._tail:
            self._keep_edge(cand)
        cands = [self._segments[s] for s in sorted(self._segments)]
        if not cands:  # a short shot: every frame lies near one of its ends
            cands = [self._edge]
        elif self._edge is not None and not any(c.clean for c in cands) \
                and self._edge.rank() > max(c.rank() for c in cands):
            cands = [self._edge]  # interior frames all bad (glitches, fade), a frame near an end is better
        self._segments, self._edge, self._tail, self._shot_start = {}, None, deque(), None
        top = max(cands, key=Candidate.rank)
        if top.quality.blank:  # black or white frames only (a fade gap): nothing worth finding
            self.blank_backup = self.blank_backup or top.chosen(shot.shot)
            return []
        keep = [c for c in cands if c.clean and c.quality.sharpness >= BLUR_RATIO * top.quality.sharpness]
        chosen: list[Candidate] = []
        for c in sorted(keep or [top], key=Candidate.rank, reverse=True):
            # neighbouring segments may pick nearly the same moment: keep the better one only
            if all(abs(c.pts_time - k.pts_time) >= self.interval_s / 2 for k in chosen):
                chosen.append(c)
        return [c.chosen(shot.shot) for c in sorted(chosen, key=lambda c: c.frame_idx)]
