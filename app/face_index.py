"""The faces' FAISS index from the catalogue: same generations, types and incremental updates as CLIP's
(app.index_build), over the `faces` rows. A face row never changes its vector, so a face's id is its tag."""
from __future__ import annotations

import hashlib
import logging

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.index_build import Catalogue, load_for_update, sync_index
from app.models import Face, FaceData
from app.paths import DataLayout

KIND_FACE = 2  # ids.npy kind of a face row
log = logging.getLogger(__name__)
READ_CHUNK = 20_000


def face_signature(session: Session) -> str:
    """Changes whenever faces are added or removed (ids are never reused)."""
    count, low, high, total = session.execute(select(func.count(Face.id), func.min(Face.id), func.max(Face.id),
                                                     func.sum(Face.id))).one()
    return hashlib.blake2b(f"faces:{count}:{low}:{high}:{total}".encode(), digest_size=16).hexdigest()


def read_face_catalogue(session: Session, dim: int, signature: str = "") -> Catalogue:
    face_ids = np.array(session.scalars(select(Face.id).order_by(Face.id)).all(), dtype=np.int64)
    ids = np.stack([np.full(len(face_ids), KIND_FACE, np.int64), face_ids], axis=1).reshape(-1, 2)

    def load(positions: np.ndarray) -> np.ndarray:
        wanted = face_ids[np.asarray(positions, dtype=np.int64)]
        out = np.empty((len(wanted), dim), np.float32)
        where = {int(f): i for i, f in enumerate(wanted.tolist())}
        for start in range(0, len(wanted), READ_CHUNK):
            chunk = wanted[start:start + READ_CHUNK].tolist()
            for face_id, blob in session.execute(select(FaceData.face_id, FaceData.vector)
                                                 .where(FaceData.face_id.in_(chunk))):
                vec = np.frombuffer(blob, dtype=np.float32)
                if len(vec) != dim:
                    raise RuntimeError(f"face {face_id}: a vector of {len(vec)} dimensions for an index of {dim}")
                out[where[face_id]] = vec
        return out

    return Catalogue(ids, face_ids.copy(), load, signature)


def refresh_face_index(session: Session, layout: DataLayout, model_name: str, dim: int, fingerprint: str,
                       retrain: bool = False) -> int:
    """Make the served face index match the faces table; returns the number of faces in it."""
    signature = face_signature(session)
    current = load_for_update(layout.face_index_dir)
    identity = {"model": model_name, "pretrained": "", "weights_fingerprint": fingerprint, "dim": dim}
    if current is not None and not retrain and current.meta.get("signature") == signature \
            and current.meta.get("model") == model_name:
        return int(current.meta.get("count", current.size))
    layout.face_index_dir.mkdir(parents=True, exist_ok=True)
    outcome = sync_index(layout.face_index_dir, current, read_face_catalogue(session, dim, signature), dim, "auto",
                         identity, retrain=retrain)
    log.info("face index: %s", outcome)
    return outcome.size

