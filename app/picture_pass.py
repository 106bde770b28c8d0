"""One pass over every keyframe and image a model has not seen yet: the skeleton the face and object passes share.

A video or image carries a mark (a column naming the model that processed it), so a pass finds its work by the
mark, and turning a model on for an indexed collection redoes neither shots nor CLIP. For each video, every
keyframe is analysed first (no database work), then its old rows are deleted and the new ones written with the
mark, in one transaction: a killed run resumes where it stopped, and a picture is never half done. A picture that
cannot be read is reported by name and the pass goes on. Subclasses say what a picture becomes.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image as PILImage
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app.media import Problem
from app.models import Image, Keyframe, Video
from app.paths import DataLayout

log = logging.getLogger(__name__)
Rows = list[tuple[object, object | None]]  # (row, its data row or None), before they have ids


class PicturePass:
    mark: str  # the column of Video and Image naming the model that processed them: "faces_model", ...
    row_model: type  # the rows a picture yields (Face, Detection); deleted again when a picture is redone
    data_key: str  # the data row's column naming its row ("face_id", "detection_id")
    failure: str  # how a picture that cannot be read is reported: "faces not scanned", ...
    image_batch: int = 1  # images analysed, then committed, together

    def __init__(self, session: Session, layout: DataLayout, model_name: str, workers: int = 1) -> None:
        self.session, self.layout, self.model_name, self.workers = session, layout, model_name, workers
        self.failed: list[Problem] = []

    # -- what a subclass says ----------------------------------------------------------------------------------
    def analyse_keyframe(self, keyframe: Keyframe, video: Video) -> object:
        """What the model finds in one keyframe (in a worker thread when workers > 1: no database work, no counts)."""
        raise NotImplementedError

    def analyse_image(self, image: Image) -> object:
        raise NotImplementedError

    def rows_of(self, found: object) -> Rows:
        """The rows of one analysed picture (in the pass's own thread: counts and progress go here)."""
        raise NotImplementedError

    # -- the pass ------------------------------------------------------------------------------------------------
    def _stale(self, model):
        column = getattr(model, self.mark)
        return select(model).where(or_(column.is_(None), column != self.model_name)).order_by(model.id)

    def scan(self) -> None:
        with ThreadPoolExecutor(self.workers, thread_name_prefix=self.mark) as pool:
            for video in self.session.scalars(self._stale(Video)).all():
                self._scan_video(pool, video)
            images = self.session.scalars(self._stale(Image)).all()
            for at in range(0, len(images), self.image_batch):
                self._scan_images(pool, images[at:at + self.image_batch])

    def _store(self, rows: Rows, **owner) -> None:
        for row, _ in rows:
            for key, value in owner.items():
                setattr(row, key, value)
            self.session.add(row)
        self.session.flush()
        for row, data in rows:
            if data is not None:
                setattr(data, self.data_key, row.id)
                self.session.add(data)

    def _scan_video(self, pool: ThreadPoolExecutor, video: Video) -> None:
        keyframes = self.session.scalars(select(Keyframe).where(Keyframe.video_pk == video.id)
                                         .order_by(Keyframe.n)).all()
        try:
            found = list(pool.map(lambda kf: self.analyse_keyframe(kf, video), keyframes))
        except OSError as exc:
            self.failed.append(Problem(video.video_id, f"{self.failure}: {exc}"))
            return
        self.session.execute(delete(self.row_model).where(self.row_model.keyframe_id.in_([k.id for k in keyframes])))
        for kf, picture in zip(keyframes, found, strict=True):
            self._store(self.rows_of(picture), keyframe_id=kf.id)
        setattr(video, self.mark, self.model_name)
        self.session.commit()
        log.info("%s: %s done", self.mark, video.video_id)

    def _scan_images(self, pool: ThreadPoolExecutor, images: Sequence[Image]) -> None:
        def one(image: Image) -> object:
            try:
                return self.analyse_image(image)
            except (OSError, PILImage.DecompressionBombError) as exc:
                return Problem(image.display_name, f"{self.failure}: {exc}")

        for image, found in zip(images, pool.map(one, images), strict=True):
            if isinstance(found, Problem):
                self.failed.append(found)
                continue
            self.session.execute(delete(self.row_model).where(self.row_model.image_id == image.id))
            self._store(self.rows_of(found), image_id=image.id)
            setattr(image, self.mark, self.model_name)
        self.session.commit()
