"""The faces' FAISS index: app.row_index over the `face_data` rows, with the face model's identity."""
from __future__ import annotations

from sqlalchemy.orm import Session

from app.models import FaceData
from app.paths import DataLayout
from app.row_index import refresh_row_index

KIND_FACE = 2  # ids.npy kind of a face row


def refresh_face_index(session: Session, layout: DataLayout, model_name: str, dim: int, fingerprint: str,
                       retrain: bool = False) -> int:
    """Make the served face index match the faces table; returns the number of faces in it."""
    identity = {"model": model_name, "pretrained": "", "weights_fingerprint": fingerprint, "dim": dim}
    return refresh_row_index(session, layout.face_index_dir, KIND_FACE, FaceData.face_id, FaceData.vector, identity,
                             retrain)
