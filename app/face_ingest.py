"""Adding faces to the catalogue: every keyframe and image not yet scanned by the collection's face model.

A pass of its own after the CLIP ingest (app.picture_pass), reading the stored keyframe JPEGs (and the original
images), so turning faces on for an indexed collection re-runs neither shot detection nor CLIP. Each video (or batch
of images) commits with its scan mark: a killed run resumes where it stopped.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.face_model import MAX_FACES, MIN_FACE_PX, FaceModel, analysed, thumbnail
from app.media import Problem
from app.models import Face, FaceData, Image, Keyframe, Setting, Video
from app.paths import DataLayout
from app.picture_pass import PicturePass

log = logging.getLogger(__name__)
IMAGE_BATCH = 32


class FaceModelMismatch(RuntimeError):
    """The collection's faces came from another face model; vectors of two models are never mixed."""


@dataclass
class FaceSummary:
    pictures: int = 0
    faces: int = 0
    too_small: int = 0  # faces found but too small to embed
    capped: int = 0  # pictures with more than MAX_FACES faces (the largest were kept)
    seconds: float = 0.0
    failed: list[Problem] = field(default_factory=list)

    def line(self) -> str:
        extra = f", {self.too_small} too small to embed" if self.too_small else ""
        extra += f", {self.capped} pictures over {MAX_FACES} faces (largest kept)" if self.capped else ""
        return f"faces: {self.faces} in {self.pictures} pictures scanned{extra}, {self.seconds:.1f} s"


def check_face_model(session: Session, model: FaceModel, redo: bool = False) -> None:
    """Refuse a second face model while faces of another exist (unless `redo`: then every picture is scanned
    again with this one)."""
    rows = {k: v for k, v in session.execute(select(Setting.key, Setting.value)
                                             .where(Setting.key.in_(("face_model", "face_dim"))))}
    known = rows.get("face_model")
    if known and known != model.name:
        if session.scalar(select(Face.id).limit(1)) is not None and not redo:
            raise FaceModelMismatch(f"this collection's faces were found with --face-model {known}; refusing to mix "
                                    f"in {model.name} vectors. Use the same --face-model, add --faces-redo to scan "
                                    f"every picture again with the new one, or use --no-faces.")
    if redo or (known and known != model.name):
        session.execute(delete(Face))
        session.execute(Video.__table__.update().values(faces_model=None))
        session.execute(Image.__table__.update().values(faces_model=None))
    for key, value in (("face_model", model.name), ("face_dim", str(model.dim))):
        session.merge(Setting(key=key, value=value))
    session.commit()


@dataclass
class Found:
    """One picture's faces as the model saw them (made in a worker thread; no database work)."""

    faces: list[tuple[tuple[float, float, float, float], float, bytes, bytes]]  # source box, score, vector, thumbnail
    too_small: int = 0
    capped: bool = False


def analyse(model: FaceModel, path: Path, source_width: int | None) -> Found:
    """Detect, embed and crop the faces of one picture file; boxes in the source's pixels (a keyframe JPEG may be
    smaller than its video: `source_width` scales them)."""
    with PILImage.open(path) as picture:
        picture.load()
        rgb, scale = analysed(picture)
        to_source = source_width / picture.width if source_width else 1.0
    faces = model.detect(rgb)
    kept = [f for f in faces if f.side >= MIN_FACE_PX]
    found = Found([], len(faces) - len(kept), len(kept) > MAX_FACES)
    kept = kept[:MAX_FACES]
    factor = to_source / scale
    for f, vec in zip(kept, model.embed(rgb, kept), strict=True):
        found.faces.append((tuple(v * factor for v in f.box), f.score, np.asarray(vec, np.float32).tobytes(),
                            thumbnail(rgb, f)))
    return found


class FaceScanner(PicturePass):
    """Pictures are analysed by a pool of threads (dlib's detector lets go of the GIL), in order; each video's (or
    image batch's) rows are written by this thread in one transaction (app.picture_pass)."""

    mark, row_model, data_key, failure, image_batch = "faces_model", Face, "face_id", "faces not scanned", IMAGE_BATCH

    def __init__(self, session: Session, layout: DataLayout, model: FaceModel, progress=None,
                 workers: int | None = None) -> None:
        super().__init__(session, layout, model.name, workers or max(1, os.cpu_count() or 1))
        self.model = model
        self.progress = progress
        self.summary = FaceSummary()
        self.summary.failed = self.failed

    def run(self) -> FaceSummary:
        start = time.monotonic()
        self.scan()
        self.summary.seconds = time.monotonic() - start
        return self.summary

    def analyse_keyframe(self, keyframe: Keyframe, video: Video) -> Found:
        return analyse(self.model, self.layout.data_dir / keyframe.image_path, video.width or None)

    def analyse_image(self, image: Image) -> Found:
        return analyse(self.model, Path(image.path), None)

    def rows_of(self, found: Found) -> list[tuple[Face, FaceData]]:
        self.summary.pictures += 1
        self.summary.faces += len(found.faces)
        self.summary.too_small += found.too_small
        self.summary.capped += found.capped
        if self.progress is not None:
            self.progress.update("faces", 1)
        return [(Face(x=box[0], y=box[1], w=box[2], h=box[3], score=score, model=self.model.name),
                 FaceData(vector=vector, thumb=thumb)) for box, score, vector, thumb in found.faces]
