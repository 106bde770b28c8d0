"""Synthetic videos and images with known shot boundaries, for the demo, the tests and benchmarks.

Each shot is a distinct scene (a textured canvas of shapes) seen through a slowly panning
camera with a moving object, so it looks like footage to TransNetV2; shots are joined by
hard cuts or linear dissolves whose frames are known exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class ShotPlan:
    frames: int
    dissolve_in: int = 0  # frames of dissolve from the previous shot into this one (0 = hard cut)


@dataclass
class GroundTruth:
    fps: float
    frames: int
    shots: list[tuple[int, int]] = field(default_factory=list)  # inclusive clean ranges
    transitions: list[tuple[int, int]] = field(default_factory=list)  # (last frame before, first frame after)
    dissolves: list[tuple[int, int]] = field(default_factory=list)  # inclusive mixed-frame ranges


class Scene:
    """A large random canvas; frame t is a moving crop of it plus a moving disc."""

    def __init__(self, seed: int, size: tuple[int, int]) -> None:
        rng = np.random.default_rng(seed)
        w, h = size
        self.size = size
        cw, ch = w * 2, h * 2
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, cw)[None, :, None]
        canvas = (c0 * (1 - ramp) + c1 * ramp).repeat(ch, axis=0).astype(np.uint8)
        for _ in range(40):
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            x, y = int(rng.integers(0, cw)), int(rng.integers(0, ch))
            r = int(rng.integers(h // 20 + 2, h // 4 + 3))
            shape = rng.integers(0, 3)
            if shape == 0:
                cv2.circle(canvas, (x, y), r, color, -1)
            elif shape == 1:
                cv2.rectangle(canvas, (x, y), (x + 2 * r, y + r), color, -1)
            else:
                cv2.line(canvas, (x, y), (x + 3 * r, y - r), color, max(2, r // 6))
        self.canvas = canvas
        self.velocity = rng.uniform(-1.5, 1.5, 2)
        self.origin = np.array([cw / 4, ch / 4])
        self.disc_color = tuple(int(v) for v in rng.integers(0, 256, 3))

    def frame(self, t: int) -> np.ndarray:
        w, h = self.size
        cw, ch = self.canvas.shape[1], self.canvas.shape[0]
        x = int(np.clip(self.origin[0] + self.velocity[0] * t, 0, cw - w))
        y = int(np.clip(self.origin[1] + self.velocity[1] * t, 0, ch - h))
        img = self.canvas[y:y + h, x:x + w].copy()
        cx = int((w * 0.2 + 3 * t) % w)
        cv2.circle(img, (cx, h // 2), h // 8, self.disc_color, -1)
        return img


def iter_frames(plan: list[ShotPlan], truth: GroundTruth, size: tuple[int, int] = (320, 180), seed: int = 0):
    """Yield BGR frames for the plan one at a time (long videos never sit in memory), filling `truth`."""
    start = 0
    prev = None
    for i, shot in enumerate(plan):
        scene = Scene(seed * 1000 + i, size)
        d = shot.dissolve_in if i > 0 else 0
        if d:
            prev_len = plan[i - 1].frames
            for k in range(d):
                a = (k + 1) / (d + 1)
                yield cv2.addWeighted(prev.frame(prev_len + k), 1 - a, scene.frame(k), a, 0)
            truth.dissolves.append((start, start + d - 1))
            truth.transitions.append((start - 1, start + d))
            start += d
        elif i > 0:
            truth.transitions.append((start - 1, start))
        for t in range(shot.frames):
            yield scene.frame(d + t)
        truth.shots.append((start, start + shot.frames - 1))
        start += shot.frames
        truth.frames = start
        prev = scene


def render(plan: list[ShotPlan], fps: float = 25.0, size: tuple[int, int] = (320, 180), seed: int = 0):
    """All BGR frames of the plan, and its GroundTruth."""
    truth = GroundTruth(fps=fps, frames=0)
    frames = list(iter_frames(plan, truth, size, seed))
    return frames, truth


def write_video(path: Path, frames, fps: float) -> None:
    """Write BGR frames (any iterable) with a codec OpenCV has for the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = {".avi": "MJPG", ".webm": "VP80"}.get(path.suffix.lower(), "mp4v")
    writer = None
    for f in frames:
        if writer is None:
            h, w = f.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
            if not writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write {path.suffix} video here")
        writer.write(f)
    if writer is not None:
        writer.release()


def make_video(path: Path, plan: list[ShotPlan], fps: float = 25.0, size: tuple[int, int] = (320, 180),
               seed: int = 0) -> GroundTruth:
    truth = GroundTruth(fps=fps, frames=0)
    write_video(path, iter_frames(plan, truth, size, seed), fps)
    return truth


def make_image(path: Path, seed: int, size: tuple[int, int] = (320, 240)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), Scene(10_000 + seed, size).frame(0))


DEMO_PLANS = [
    [ShotPlan(60), ShotPlan(50), ShotPlan(70, dissolve_in=15), ShotPlan(45)],
    [ShotPlan(80), ShotPlan(40), ShotPlan(55)],
    [ShotPlan(50), ShotPlan(65, dissolve_in=12), ShotPlan(60)],
]


def build_sample_collection(dest: Path) -> Path:
    """A small collection of videos and images (a few seconds each) for the demo."""
    for i, plan in enumerate(DEMO_PLANS):
        target = dest / "videos" / f"sample_{i + 1:02d}.mp4"
        if not target.exists():
            make_video(target, plan, seed=i + 1)
    for i in range(4):
        target = dest / "images" / f"still_{i + 1:02d}.jpg"
        if not target.exists():
            make_image(target, i)
    return dest
