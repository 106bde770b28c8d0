"""Real faces for the face-search tests: single photos in tests/data/faces/ and pictures and videos composed of them.

The photos (see tests/data/faces/SOURCES.md for each file's origin and licence) are small JPEGs, longest side at most
640 px, each with exactly one face that dlib's HOG detector (upsampled once) finds:

    obama_1 .. obama_5   Barack Obama, five different photos (two of them cut off at the left/right edge)
    biden_1              Joe Biden
    astronaut_1          Eileen Collins (NASA portrait, head and shoulders)
    messi_1              Lionel Messi (OpenCV's sample photo; a small face, about 37 px)

They come from the MIT-licensed face_recognition 1.3.0 source package (its tests/test_images), scikit-image's
`astronaut` (NASA, public domain) and OpenCV's samples/data. Measured with dlib's 128-d model (unit vectors):
same person cosine 0.948-0.987, different people 0.793-0.838.

`group_photo` puts several of them side by side (or in a grid) in one JPEG and says where each person is;
`face_video` makes an MP4 that shows photos or groups one after another with hard cuts and says when each is on
screen. Both are pure functions of their arguments (no pytest fixtures).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

FACES = Path(__file__).parent / "data" / "faces"
PEOPLE = {"obama": ["obama_1", "obama_2", "obama_3", "obama_4", "obama_5"], "biden": ["biden_1"],
          "astronaut": ["astronaut_1"], "messi": ["messi_1"]}
NAMES = [n for names in PEOPLE.values() for n in names]

Region = tuple[int, int, int, int]  # x, y, w, h


def person(name: str) -> str:
    """Who a photo shows: 'obama_3' -> 'obama'."""
    return Path(name).stem.rsplit("_", 1)[0]


def photo_path(name: str | Path) -> Path:
    """A photo's file: a name from FACES ('obama_2'), or any image path."""
    if isinstance(name, Path):
        return name
    return FACES / f"{name}.jpg"


def _label(name: str | Path) -> str:
    return name.stem if isinstance(name, Path) else name


def compose(names: list[str | Path], height: int = 360, seed: int = 0,
            columns: int | None = None) -> tuple[Image.Image, list[tuple[str, Region]]]:
    """The composite of group_photo as a PIL image (RGB), with each photo's name and region.

    Each photo is scaled to `height` pixels high and placed left to right on a plain background with a small gap,
    `columns` per row (all in one row by default). A seed other than 0 mirrors some photos, scales each by 90-100 %
    and shifts the background shade, so two composites of the same people differ in every pixel."""
    if not names:
        raise ValueError("no photos to compose")
    rng = np.random.default_rng(seed)
    gap = max(4, height // 24)
    shade = 200 if seed == 0 else int(rng.integers(150, 230))
    per_row = columns or len(names)
    tiles = []
    for name in names:
        im = Image.open(photo_path(name)).convert("RGB")
        h = height if seed == 0 else max(8, round(height * rng.uniform(0.9, 1.0)))
        im = im.resize((max(1, round(im.width * h / im.height)), h), Image.Resampling.LANCZOS)
        if seed != 0 and rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tiles.append((_label(name), im))
    rows = [tiles[i:i + per_row] for i in range(0, len(tiles), per_row)]
    width = max(sum(im.width for _, im in row) + gap * (len(row) + 1) for row in rows)
    canvas = Image.new("RGB", (width, len(rows) * (height + gap) + gap), (shade, shade, shade))
    regions: list[tuple[str, Region]] = []
    y = gap
    for row in rows:
        x = gap
        for label, im in row:
            top = y + (height - im.height) // 2
            canvas.paste(im, (x, top))
            regions.append((label, (x, top, im.width, im.height)))
            x += im.width + gap
        y += height + gap
    return canvas, regions


def group_photo(path: Path, names: list[str | Path], height: int = 360, seed: int = 0,
                columns: int | None = None) -> list[tuple[str, Region]]:
    """Write the named photos side by side (see `compose`) as one JPEG at `path`; returns, in order, each photo's
    name and the region (x, y, w, h) it occupies in the composite (its face is inside that region)."""
    canvas, regions = compose(names, height, seed, columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="JPEG", quality=90)
    return regions


def _letterbox(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The picture scaled to fit `size` (w, h), centred on black: an HxWx3 RGB array."""
    w, h = size
    scale = min(w / im.width, h / im.height)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    frame = Image.new("RGB", size, (0, 0, 0))
    frame.paste(im, ((w - im.width) // 2, (h - im.height) // 2))
    return np.asarray(frame)


def segment_name(picture: str | list[str]) -> str:
    """How face_video names a segment: the photo's name, or the group's names joined by '+'."""
    return picture if isinstance(picture, str) else "+".join(picture)


def face_video(path: Path, segments: list[tuple[str | list[str], float]], fps: int = 10,
               size: tuple[int, int] = (640, 360)) -> list[tuple[str, float, float]]:
    """Write an MP4 (H.264 through PyAV, MPEG-4 Part 2 where libx264 is missing) showing, for each segment, a photo
    (a name) or a group of photos (a list of names, laid out as group_photo does) letterboxed in `size` for the given
    seconds, with hard cuts between. Returns (segment_name, start_s, end_s) per segment; start and end are frame
    times (frame i is shown from i / fps)."""
    import av

    if size[0] % 2 or size[1] % 2:
        raise ValueError("video size must be even")
    plan, timeline, frame = [], [], 0
    for picture, seconds in segments:
        n = max(1, round(seconds * fps))
        im = (Image.open(photo_path(picture)).convert("RGB") if isinstance(picture, str)
              else compose(list(picture))[0])
        plan.append((_letterbox(im, size), n))
        timeline.append((segment_name(picture), frame / fps, (frame + n) / fps))
        frame += n
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "20", "preset": "veryfast"}
        else:
            stream.bit_rate = 2_000_000
        i = 0
        for rgb, n in plan:
            for _ in range(n):
                f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                f.pts = i
                out.mux(stream.encode(f))
                i += 1
        out.mux(stream.encode(None))
    return timeline
