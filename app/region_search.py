"""Objects as search targets: a query region's CLIP vector against the detected objects' crops (the regions index);
results are frames and images with their best matching object, its box drawn."""
from __future__ import annotations

import time

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import vectors
from app.collection import Collection
from app.face_search import FaceHit, MatchedFace, ServedIndex
from app.items import ItemRef
from app.models import Detection, Image, Keyframe, Video
from app.objects import KIND_REGION
from app.search import Hit, Options, Outcome, QueryError

DEPTH_PER_K = 10
MIN_DEPTH = 500
FILTERED_DEPTH = 5000


def _objects(session: Session, ids: list[int]) -> dict[int, tuple[ItemRef, tuple, tuple, str]]:
    """detection id -> (item, box in source pixels, item's source size, label), rejected ones left out."""
    out = {}
    live = Detection.id.in_(ids) & (Detection.status != "rejected")
    for did, x, y, w, h, label, video_id, frame_idx, width, height in session.execute(
            select(Detection.id, Detection.x, Detection.y, Detection.w, Detection.h, Detection.label, Video.video_id,
                   Keyframe.frame_idx, Video.width, Video.height)
            .join(Keyframe, Detection.keyframe_id == Keyframe.id).join(Video, Keyframe.video_pk == Video.id)
            .where(live)):
        out[did] = (ItemRef.frame(video_id, frame_idx), (x, y, w, h), (width, height), label)
    for did, x, y, w, h, label, content_hash, width, height in session.execute(
            select(Detection.id, Detection.x, Detection.y, Detection.w, Detection.h, Detection.label,
                   Image.content_hash, Image.width, Image.height)
            .join(Image, Detection.image_id == Image.id).where(live)):
        out[did] = (ItemRef.image(content_hash), (x, y, w, h), (width, height), label)
    return out


class RegionSearcher:
    def __init__(self, collection: Collection, regions: ServedIndex, sessions) -> None:
        self.collection = collection
        self.regions = regions
        self.sessions = sessions

    def search(self, query: np.ndarray, opts: Options, allowed_refs: set[ItemRef] | None,
               outcome: Outcome) -> Outcome:
        """Best object per item, best items first; the similarity floor and K as for whole frames."""
        bundle = self.regions.bundle()
        if bundle is None or bundle.size == 0:
            raise QueryError("no objects are indexed yet: index with a detector (`python offline.py index PATHS "
                             "--detector fasterrcnn_mobilenet_v3_large_fpn`) to search objects")
        if bundle.meta.get("dim") != query.shape[1]:
            raise QueryError("the objects were embedded with another model than the collection's; index again")
        t0 = time.perf_counter()
        depth = min(bundle.size, max(opts.k * DEPTH_PER_K, MIN_DEPTH,
                                     FILTERED_DEPTH if allowed_refs is not None else 0))
        scores, rows = vectors.search(bundle, np.ascontiguousarray(query, np.float32), depth)
        found = [(int(bundle.ids[r, 1]), float(s)) for s, r in zip(scores[0], rows[0], strict=True)
                 if r >= 0 and bundle.ids[r, 0] == KIND_REGION]
        with self.sessions() as session:
            objects = _objects(session, [d for d, _ in found])
        best: dict[ItemRef, tuple[float, int]] = {}
        for did, score in found:
            obj = objects.get(did)
            if obj is None or (allowed_refs is not None and obj[0] not in allowed_refs):
                continue
            if obj[0] not in best:  # scores come best first
                best[obj[0]] = (score, did)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])
        if ranked and opts.min_score > 0:
            floor = opts.min_score / 100 * (ranked[0][1][0] if opts.relative else 1.0)
            passed = [r for r in ranked if r[1][0] >= floor]
            outcome.filtered_out = not passed
            ranked = passed
        snap = self.collection.snapshot()
        for ref, (score, did) in ranked:
            entry = snap.find(ref) if snap is not None else None
            if entry is None:
                continue
            _, box, size, label = objects[did]
            face_hit = FaceHit(Hit(entry.row, score, entry), [MatchedFace(did, box, score, 0, label)], size)
            outcome.hits.append(face_hit.hit)
            outcome.faces[entry.item] = face_hit
            if len(outcome.hits) >= opts.k:
                break
        outcome.timing_ms["search"] = (time.perf_counter() - t0) * 1000
        return outcome
