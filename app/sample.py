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


def write_h264(path: Path, frames, fps: float) -> None:
    """Write BGR frames as H.264 in MP4 (yuv420p, fast start): what every browser plays."""
    from fractions import Fraction

    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        stream = None
        for i, f in enumerate(frames):
            if stream is None:
                stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                        options={"crf": "20", "preset": "veryfast"})
                stream.height, stream.width = f.shape[:2]
                stream.pix_fmt = "yuv420p"
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="bgr24")
            frame.pts = i
            out.mux(stream.encode(frame))
        if stream is not None:
            out.mux(stream.encode(None))


def write_video(path: Path, frames, fps: float) -> None:
    """Write BGR frames (any iterable) with a codec OpenCV has for the file's extension
    (MPEG-4 Part 2 for .mp4: an old codec browsers cannot play, as users' own files often are)."""
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
               seed: int = 0, codec: str = "opencv") -> GroundTruth:
    """codec 'opencv' (write_video: by extension) or 'h264' (write_h264, browser-playable)."""
    truth = GroundTruth(fps=fps, frames=0)
    writer = write_h264 if codec == "h264" else write_video
    writer(path, iter_frames(plan, truth, size, seed), fps)
    return truth


def make_image(path: Path, seed: int, size: tuple[int, int] = (320, 240), t: int = 0) -> None:
    """A photo of scene `seed` (the camera at time t of its pan)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), Scene(10_000 + seed, size).frame(t))


def make_sign(path: Path, words: str, seed: int, size: tuple[int, int] = (480, 270)) -> None:
    """A photo of a sign: `words` in large letters on a plain board (OpenCV's own font, no system fonts needed),
    for the demo's on-screen text search."""
    rng = np.random.default_rng(20_000 + seed)
    w, h = size
    board = np.zeros((h, w, 3), np.uint8)
    board[:] = tuple(int(v) for v in rng.integers(20, 120, 3))
    scale = min(2.0, (w - 40) / cv2.getTextSize(words, cv2.FONT_HERSHEY_DUPLEX, 1.0, 2)[0][0])
    (tw, th), _ = cv2.getTextSize(words, cv2.FONT_HERSHEY_DUPLEX, scale, 2)
    cv2.putText(board, words, ((w - tw) // 2, (h + th) // 2), cv2.FONT_HERSHEY_DUPLEX, scale, (250, 250, 250), 2,
                cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), board)


DEMO_SIGNS = {"exit": "EMERGENCY EXIT", "platform": "PLATFORM 9", "cafe": "OPEN DAILY"}  # file -> words shown
DEMO_PLANS = [
    [ShotPlan(60), ShotPlan(50), ShotPlan(70, dissolve_in=15), ShotPlan(45)],
    [ShotPlan(80), ShotPlan(40), ShotPlan(55)],
    [ShotPlan(50), ShotPlan(65, dissolve_in=12), ShotPlan(60)],
]
DEMO_SCENES = 4  # photo subjects; three photos each, taken at different moments of the camera's pan
DEMO_PHOTO_TIMES = (0, 40, 80)
DEMO_MOMENTS = [  # (query id, words, video index, shot index in DEMO_PLANS) for the shipped moments set
    ("m1", "a slow pan over coloured shapes with a disc moving across", 0, 1),
    ("m2", "the shot that a dissolve leads into", 0, 2),
    ("m3", "a long opening shot", 1, 0),
    ("m4", "the last shot of the third video", 2, 2),
]


def _photo_name(scene: int, k: int) -> str:
    return f"scene{scene + 1}_{k + 1}"


def write_demo_ground_truth(dest: Path) -> None:
    """Ground truth for the demo, from what the generator knows: an Oxford-style set over the photos
    (each scene's first photo queries with a box; all photos of the scene, itself included as in Oxford's
    own lists, are good) and a moments CSV over the videos."""
    oxford = dest / "demo-photos"
    oxford.mkdir(parents=True, exist_ok=True)
    for scene in range(DEMO_SCENES):
        query = f"scene{scene + 1}"
        (oxford / f"{query}_query.txt").write_text(f"{_photo_name(scene, 0)} 40 30 280 210\n")
        good = [_photo_name(scene, k) for k in range(len(DEMO_PHOTO_TIMES))]
        (oxford / f"{query}_good.txt").write_text("\n".join(good) + "\n")
        (oxford / f"{query}_ok.txt").write_text("")
        (oxford / f"{query}_junk.txt").write_text("")
    lines = ["query_id,query,video_id,start_frame,end_frame"]
    for qid, words, video, shot in DEMO_MOMENTS:
        truth = GroundTruth(fps=25.0, frames=0)
        for _ in iter_frames(DEMO_PLANS[video][:shot + 1], truth, (16, 9), seed=video + 1):
            pass
        start, end = truth.shots[shot]
        lines.append(f"{qid},{words},sample_{video + 1:02d},{start},{end}")
    (dest / "demo-moments.csv").write_text("\n".join(lines) + "\n")


def build_sample_collection(dest: Path) -> Path:
    """A small collection for the demo: H.264 videos (a few seconds each, browser-playable), photos (three of
    each scene) and three signs with words on them."""
    for i, plan in enumerate(DEMO_PLANS):
        target = dest / "videos" / f"sample_{i + 1:02d}.mp4"
        if not target.exists():
            make_video(target, plan, seed=i + 1, codec="h264")
    for scene in range(DEMO_SCENES):
        for k, t in enumerate(DEMO_PHOTO_TIMES):
            target = dest / "images" / f"{_photo_name(scene, k)}.jpg"
            if not target.exists():
                make_image(target, scene, t=t)
    for i, (name, words) in enumerate(DEMO_SIGNS.items()):
        target = dest / "images" / "signs" / f"{name}.jpg"
        if not target.exists():
            make_sign(target, words, i)
    return dest
