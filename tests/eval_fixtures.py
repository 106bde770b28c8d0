"""An Oxford-style ground truth built on a real ranking of the test collection.

The ranking is computed here independently (numpy over the index's stored vectors), and
good/ok/junk names are placed at chosen ranks, so the expected APs follow by hand.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app import vectors
from app.models import Image as ImageRow
from app.models import Keyframe, Video
from app.paths import DataLayout

# qid -> (query image, box x1 y1 x2 y2, ranks of good, ok, junk (1-based, in that query's own ranking))
PLAN = {
    "q1_mixed": ("still_0", (10, 20, 200, 180), [1, 4], [6], [2]),
    "q2_no_positives": ("still_2", (50, 50, 250, 200), [], [], [1]),
    "q3_late": ("still_1", (0, 0, 320, 240), [3, 5], [], []),
}
# Worked by hand from the trapezoid rule (see tests/test_metrics.py for the arithmetic):
#  q1 standard: walk P W(r3) P W P -> 1/3 + 7/36 + 11/60 = 128/180
#  q1 good only: positives r1 r4, ignore r2 r6 -> 1/2 + (1/2)(1/2 + 2/3)/2 = 19/24
#  q1 ok only: positive r6, ignore r1 r2 r4 -> walk W W P -> (1/3)/2 = 1/6
#  q1 junk: positive r2 -> walk W P -> (1/2)/2 = 1/4
#  q2: no positives (left out of standard/good/ok); junk r1 -> 1
#  q3 standard and good: walk W W P W P -> (1/2)(0 + 1/3)/2 + (1/2)(1/4 + 2/5)/2 = 1/12 + 13/80 = 59/240
EXPECTED = {
    "per_query": {"q1_mixed": 128 / 180, "q2_no_positives": None, "q3_late": 59 / 240},
    "standard": {"mAP": (128 / 180 + 59 / 240) / 2, "n_empty": 1, "P@1": (1 + 0) / 2, "P@5": (3 / 5 + 2 / 5) / 2,
                 "R@1": (1 / 3 + 0) / 2, "R@5": 1.0},
    "good": {"mAP": (19 / 24 + 59 / 240) / 2, "n_empty": 1},
    "ok": {"mAP": 1 / 6, "n_empty": 2},
    "junk": {"mAP": (1 / 4 + 1) / 2, "n_empty": 1},
}


def item_names(data_dir: Path) -> tuple[np.ndarray, list[str]]:
    """(vectors, names) per FAISS row: image stem, or '<video_id>/<n>' for keyframes."""
    layout = DataLayout.from_data_dir(data_dir)
    bundle = vectors.load_current(layout.index_dir)
    engine = create_engine(layout.database_url)
    with Session(engine) as s:
        images = {r.id: Path(r.path).stem for r in s.execute(select(ImageRow.id, ImageRow.path))}
        kfs = {r.id: f"{r.video_id}/{r.n}" for r in s.execute(
            select(Keyframe.id, Keyframe.n, Video.video_id).join(Video))}
    engine.dispose()
    names = [images[i] if kind == vectors.KIND_IMAGE else kfs[i] for kind, i in bundle.ids.tolist()]
    return bundle.index.reconstruct_n(0, bundle.size), names


def image_path(data_dir: Path, stem: str) -> Path:
    layout = DataLayout.from_data_dir(data_dir)
    engine = create_engine(layout.database_url)
    with Session(engine) as s:
        paths = [p for p in s.scalars(select(ImageRow.path)) if Path(p).stem == stem]
    engine.dispose()
    return Path(paths[0])


def build_oxford_fixture(data_dir: Path, encoder, dest: Path) -> dict[str, list[str]]:
    """Write <qid>_query/good/ok/junk.txt into dest; returns each query's independent ranking."""
    feats, names = item_names(data_dir)
    dest.mkdir(parents=True, exist_ok=True)
    rankings = {}
    for qid, (image, box, good, ok, junk) in PLAN.items():
        with Image.open(image_path(data_dir, image)) as im:
            crop = im.convert("RGB").crop(box)
        scores = feats @ encoder.encode_images([crop])[0]
        ranking = [names[i] for i in np.argsort(-scores, kind="stable")]
        rankings[qid] = ranking
        (dest / f"{qid}_query.txt").write_text(f"{image} {' '.join(map(str, box))}\n")
        for label, ranks in (("good", good), ("ok", ok), ("junk", junk)):
            (dest / f"{qid}_{label}.txt").write_text("".join(f"{ranking[r - 1]}\n" for r in ranks))
    return rankings
