"""A FAISS index over catalogue rows whose vectors live in the database (faces, detected objects): the same
generations, types and incremental updates as CLIP's (app.index_build). A row never changes its vector, so its id is
its tag; the signature changes whenever rows come or go (ids are never reused)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.index_build import Catalogue, load_for_update, sync_index

log = logging.getLogger(__name__)
READ_CHUNK = 20_000


def row_signature(session: Session, id_column) -> str:
    count, low, high, total = session.execute(select(func.count(id_column), func.min(id_column), func.max(id_column),
                                                     func.sum(id_column))).one()
    return hashlib.blake2b(f"{id_column}:{count}:{low}:{high}:{total}".encode(), digest_size=16).hexdigest()


def read_row_catalogue(session: Session, kind: int, id_column, vector_column, dim: int,
                       signature: str = "") -> Catalogue:
    """Every row that has a vector (`id_column` is the vector table's id column), in id order."""
    row_ids = np.array(session.scalars(select(id_column).order_by(id_column)).all(), dtype=np.int64)
    ids = np.stack([np.full(len(row_ids), kind, np.int64), row_ids], axis=1).reshape(-1, 2)

    def load(positions: np.ndarray) -> np.ndarray:
        wanted = row_ids[np.asarray(positions, dtype=np.int64)]
        out = np.empty((len(wanted), dim), np.float32)
        where = {int(f): i for i, f in enumerate(wanted.tolist())}
        for start in range(0, len(wanted), READ_CHUNK):
            chunk = wanted[start:start + READ_CHUNK].tolist()
            for row_id, blob in session.execute(select(id_column, vector_column).where(id_column.in_(chunk))):
                vec = np.frombuffer(blob, dtype=np.float32)
                if len(vec) != dim:
                    raise RuntimeError(f"row {row_id}: a vector of {len(vec)} dimensions for an index of {dim}")
                out[where[row_id]] = vec
        return out

    return Catalogue(ids, row_ids.copy(), load, signature)


def refresh_row_index(session: Session, index_dir: Path, kind: int, id_column, vector_column, identity: dict,
                      retrain: bool = False) -> int:
    """Make the served index in `index_dir` hold exactly the rows' vectors; returns how many it holds."""
    signature = row_signature(session, id_column)
    current = load_for_update(index_dir)
    if current is not None and not retrain and current.meta.get("signature") == signature \
            and current.meta.get("model") == identity.get("model"):
        return int(current.meta.get("count", current.size))
    index_dir.mkdir(parents=True, exist_ok=True)
    dim = int(identity["dim"])
    outcome = sync_index(index_dir, current, read_row_catalogue(session, kind, id_column, vector_column, dim,
                                                                signature), dim, "auto", identity, retrain=retrain)
    log.info("%s: %s", index_dir.name, outcome)
    return outcome.size
