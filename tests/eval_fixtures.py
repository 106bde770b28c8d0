"""An Oxford-style ground truth built on a real ranking of the test collection, and the reference rules.

The ranking is computed here independently (numpy over the index's stored vectors), and
good/ok/junk names are placed at chosen ranks, so the expected APs follow by hand. The
reference rules (Oxford's compute_ap, revisitop's compute_map) are written out here, apart
from app.metrics, so evaluation tests take their expected values from them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.models import Image as ImageRow
from app.paths import DataLayout
from tests.conftest import db_url

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


# -- the reference rules, written out independently of app.metrics ----------------------------------------
def oxford_compute_ap(ranked: list[str], pos: set[str], junk: set[str]) -> float:
    """Oxford Buildings compute_ap: walk the list, skip junk entirely; after each other item add
    (recall - old_recall) * (old_precision + precision) / 2, from old_recall 0 and old_precision 1."""
    old_recall, old_precision, ap, hits, seen = 0.0, 1.0, 0.0, 0, 0
    for name in ranked:
        if name in junk:
            continue
        hits += name in pos
        seen += 1
        recall, precision = hits / len(pos), hits / seen
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall, old_precision = recall, precision
    return ap


def revisitop_compute_map(ranks: np.ndarray, gnd: list[dict], kappas=(1, 5, 10, 100)) -> tuple[list, list]:
    """revisitop's compute_map, per query (aps, prs): ranks is (db size, queries) of imlist indices, best
    first; gnd[i] = {'ok': [...], 'junk': [...]}. Positions of positives lose one per junk image ranked
    before them; AP sums (precision_0 + precision_1) * recall_step / 2 with precision_0 = j/r (1 at r == 0)
    and precision_1 = (j+1)/(r+1); precision at k divides by kq = min(last positive's 1-based rank, k)."""
    aps, prs = [], []
    for i, g in enumerate(gnd):
        ok, junk = np.asarray(g["ok"], dtype=int), np.asarray(g["junk"], dtype=int)
        if ok.size == 0:
            aps.append(float("nan"))
            prs.append([float("nan")] * len(kappas))
            continue
        pos = np.flatnonzero(np.isin(ranks[:, i], ok))
        junk_at = np.flatnonzero(np.isin(ranks[:, i], junk))
        pos = np.array([p - int(np.sum(junk_at < p)) for p in pos], dtype=int)
        ap, step = 0.0, 1.0 / ok.size
        for j, r in enumerate(pos):
            precision_0 = 1.0 if r == 0 else j / r
            precision_1 = (j + 1) / (r + 1)
            ap += (precision_0 + precision_1) * step / 2.0
        aps.append(ap)
        pos1 = pos + 1
        prs.append([float((pos1 <= min(pos1.max(), k)).sum() / min(pos1.max(), k)) for k in kappas])
    return aps, prs


def ranking(feats: np.ndarray, query: np.ndarray) -> list[int]:
    """FAISS rows by descending inner product, ties in row order: computed here, not by app.evaluation."""
    return np.argsort(-(feats @ query.reshape(-1)), kind="stable").tolist()


def collection_rows(data_dir: Path):
    """(vectors, entries) per FAISS row of a collection's served index."""
    from app.collection import Collection
    from app.db import open_database

    layout = DataLayout.from_data_dir(data_dir)
    snap = Collection(layout, open_database(db_url(layout.data_dir))).snapshot()
    return snap.bundle.index.reconstruct_n(0, snap.bundle.size), list(snap.entries)


def item_names(data_dir: Path) -> tuple[np.ndarray, list[str]]:
    """(vectors, names) per FAISS row: image stem, or for a keyframe the text pages name it by (opaque here)."""
    feats, entries = collection_rows(data_dir)
    return feats, [Path(e.source_path).stem if e.video_id is None else str(e.item) for e in entries]


def image_path(data_dir: Path, stem: str) -> Path:
    layout = DataLayout.from_data_dir(data_dir)
    engine = create_engine(db_url(layout.data_dir))
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
