#!/usr/bin/env python3
"""A folder of real 720p H.264 clips made from the sample videos in Debian's `opencv-doc` package.

OpenCV ships real footage (Megamind trailer cuts, a pedestrian surveillance scene, a tree in
the wind) in old codecs and odd sizes; this re-encodes ten clips of it to 1280x720 H.264 at
25 fps (mirrored copies and halves make up the ten), the shape of most footage users index.

    python bench/real_media.py OUT_DIR [--source /usr/share/doc/opencv-doc/examples/data]
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
# (output name, source file, start s, end s, mirrored)
CLIPS = [
    ("megamind", "Megamind.avi", 0, None, False),
    ("megamind_bugy", "Megamind_bugy.avi", 0, None, False),
    ("vtest_a", "vtest.avi", 0, 40, False),
    ("vtest_b", "vtest.avi", 40, None, False),
    ("tree", "tree.avi", 0, None, False),
    ("megamind_mirror", "Megamind.avi", 0, None, True),
    ("megamind_bugy_mirror", "Megamind_bugy.avi", 0, None, True),
    ("tree_mirror", "tree.avi", 0, None, True),
    ("vtest_a_mirror", "vtest.avi", 0, 20, True),
    ("vtest_b_mirror", "vtest.avi", 60, None, True),
]
SIZE = (1280, 720)
FPS = 25


def _cover(rgb: np.ndarray) -> np.ndarray:
    """Scale to cover 1280x720 and crop the middle (no stretching, no bars)."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max(SIZE[0] / w, SIZE[1] / h)
    big = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
    y0, x0 = (big.shape[0] - SIZE[1]) // 2, (big.shape[1] - SIZE[0]) // 2
    return np.ascontiguousarray(big[y0:y0 + SIZE[1], x0:x0 + SIZE[0]])


def make_clip(src: Path, dst: Path, start: float, end: float | None, mirror: bool) -> float:
    """Re-encode src[start:end] as 720p H.264 at a constant 25 fps; returns the clip's seconds."""
    written = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        vin = inp.streams.video[0]
        next_t = start
        last = None
        for frame in inp.decode(vin):
            t = float(frame.pts * vin.time_base) if frame.pts is not None else next_t
            if end is not None and t >= end:
                break
            if t < start:
                continue
            rgb = _cover(frame.to_ndarray(format="rgb24"))
            last = rgb[:, ::-1] if mirror else rgb
            while next_t <= t + 1e-6:  # repeat or drop frames to hold 25 fps
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(last), format="rgb24")
                vf.pts, vf.time_base = written, Fraction(1, FPS)
                out.mux(stream.encode(vf))
                written += 1
                next_t = start + written / FPS
        out.mux(stream.encode(None))
    return written / FPS


def build(out_dir: Path, source: Path = OPENCV_DATA) -> list[Path]:
    """The ten clips (made once; existing ones are kept)."""
    missing = [c[1] for c in CLIPS if not (source / c[1]).is_file()]
    if missing:
        raise SystemExit(f"{source} lacks {', '.join(sorted(set(missing)))}: apt-get install opencv-doc")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, src, start, end, mirror in CLIPS:
        dst = out_dir / f"{name}.mp4"
        if not dst.exists():
            tmp = dst.with_suffix(".part.mp4")
            make_clip(source / src, tmp, start, end, mirror)
            tmp.rename(dst)
        paths.append(dst)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--source", type=Path, default=OPENCV_DATA)
    args = p.parse_args()
    for path in build(args.out_dir, args.source):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
