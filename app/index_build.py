"""The served FAISS index from the catalogue: when it must change, and building a new generation.

The catalogue (database rows plus per-video and per-image feature files) is the truth; an index generation is
derived from it and can always be made again from it.
"""
from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import vectors
from app.models import Image, Keyframe, Video
from app.paths import DataLayout


def refresh_index(session: Session, layout: DataLayout, identity: tuple[str, str], dim: int, wanted: str = "auto",
                  fingerprint: str | None = None) -> tuple[int, bool]:
    """Make the served index match the catalogue; returns (vectors in it, whether a new generation was built)."""
    signature = catalogue_signature(session)
    current = vectors.load_current(layout.index_dir, use_gpu=False)
    if current is not None and current.meta.get("signature") == signature and (
            wanted == "auto" or current.meta.get("params", {}).get("type") == wanted):
        return current.size, False
    return rebuild_index(session, layout, identity, dim, wanted, fingerprint=fingerprint), True


def catalogue_signature(session: Session) -> str:
    """Changes whenever the set of indexed vectors changes."""
    h = hashlib.blake2b(digest_size=16)
    for vid, chash in session.execute(select(Video.video_id, Video.content_hash).order_by(Video.id)):
        h.update(f"v:{vid}:{chash}\n".encode())
    for path, chash in session.execute(select(Image.path, Image.content_hash).order_by(Image.id)):
        h.update(f"i:{path}:{chash}\n".encode())
    return h.hexdigest()


def rebuild_index(session: Session, layout: DataLayout, identity: tuple[str, str], dim: int,
                  index_type: str = "auto", params: dict | None = None, fingerprint: str | None = None) -> int:
    """Build a FAISS generation from the per-video and per-image feature files."""
    parts: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    for video in session.scalars(select(Video).order_by(Video.id)):
        kf_ids = session.scalars(select(Keyframe.id).where(Keyframe.video_pk == video.id)
                                 .order_by(Keyframe.n)).all()
        feats = np.load(layout.video_feature_path(video.video_id), allow_pickle=False)
        if len(feats) != len(kf_ids):
            raise RuntimeError(f"{video.video_id}: {len(feats)} feature rows for {len(kf_ids)} keyframes")
        parts.append(feats)
        ids.append(np.stack([np.full(len(kf_ids), vectors.KIND_KEYFRAME), np.array(kf_ids)], axis=1))
    images = session.execute(select(Image.id, Image.content_hash).order_by(Image.id)).all()
    if images:
        parts.append(np.stack([np.load(layout.image_feature_dir / f"{h}.npy") for _, h in images]))
        ids.append(np.array([(vectors.KIND_IMAGE, i) for i, _ in images]))
    matrix = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)
    id_map = np.concatenate(ids).astype(np.int64) if ids else np.zeros((0, 2), np.int64)
    index, used = vectors.build_index(matrix, index_type, params)
    meta = {"model": identity[0], "pretrained": identity[1], "weights_fingerprint": fingerprint,
            "dim": dim, "count": len(matrix),
            "params": used, "signature": catalogue_signature(session),
            "created": datetime.now(UTC).isoformat()}
    vectors.save_generation(layout.index_dir, index, id_map, meta,
                            rerank=matrix if used["type"] == "ivfpq" else None)
    return len(matrix)
