"""Adding words to the catalogue: OCR lines of every keyframe and image, speech of every video, not yet read by the
collection's models.

Both are passes of their own after the CLIP ingest, marked per item (`ocr_model`, `asr_model`), so turning them on
for an indexed collection redoes neither shots nor CLIP, and a killed run resumes where it stopped: each video (or
batch of images) commits its lines with its mark. OCR reads the stored keyframe JPEGs through app.picture_pass.
Speech streams the video's audio track in chunks; a video without sound is marked with nothing to say, and a
damaged audio stream keeps what was heard before the damage and is reported, the video staying indexed.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app.asr import Segment
from app.audio import RATE, AudioError, pcm_chunks
from app.media import Problem
from app.models import Image, Keyframe, Shot, TextLine, Video
from app.ocr import OcrLine, OcrModel
from app.paths import DataLayout
from app.picture_pass import PicturePass
from app.words import fold, ocr_tokens, tokens

log = logging.getLogger(__name__)


@dataclass
class WordsSummary:
    pictures: int = 0
    lines: int = 0
    videos: int = 0
    segments: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    failed: list[Problem] = field(default_factory=list)

    def line(self, what: str) -> str:
        if what == "ocr":
            return f"ocr: {self.lines} lines in {self.pictures} pictures read, {self.seconds:.1f} s"
        return (f"speech: {self.segments} segments in {self.videos} videos ({self.audio_seconds:.0f} s of sound), "
                f"{self.seconds:.1f} s")


def _ocr_rows(lines: list[OcrLine], model: str) -> list[tuple[object, None]]:
    return [(TextLine(source="ocr", text=line.text, folded=" ".join(ocr_tokens(line.text)),
                      confidence=line.confidence, x=line.box[0], y=line.box[1], w=line.box[2], h=line.box[3],
                      model=model), None) for line in lines if tokens(line.text)]


def _read(model: OcrModel, path: Path) -> list[OcrLine]:
    with PILImage.open(path) as picture:
        picture.load()
        return model.read(np.asarray(picture.convert("RGB")))


class OcrPass(PicturePass):
    """One thread (ONNX Runtime uses every core itself)."""

    mark, row_model, data_key, failure, image_batch = "ocr_model", TextLine, "", "text not read", 16

    def __init__(self, session: Session, layout: DataLayout, model: OcrModel, progress=None) -> None:
        super().__init__(session, layout, model.name, 1)
        self.model, self.progress = model, progress
        self.summary = WordsSummary(failed=self.failed)

    def run(self) -> WordsSummary:
        start = time.monotonic()
        self.scan()
        self.summary.seconds = time.monotonic() - start
        return self.summary

    def analyse_keyframe(self, keyframe: Keyframe, video: Video) -> list[OcrLine]:
        return _read(self.model, self.layout.data_dir / keyframe.image_path)

    def analyse_image(self, image: Image) -> list[OcrLine]:
        return _read(self.model, Path(image.path))

    def rows_of(self, found: object) -> list[tuple[object, None]]:
        rows = _ocr_rows(found, self.model_name)  # type: ignore[arg-type]
        self.summary.pictures += 1
        self.summary.lines += len(rows)
        if self.progress is not None:
            self.progress.update("ocr", 1)
        return rows


def _shot_at(shots: list[Shot], fps: float, seconds: float) -> int | None:
    frame = int(seconds * fps) if fps else 0
    for shot in shots:
        if shot.start_frame <= frame <= shot.end_frame:
            return shot.id
    return None


def _asr_row(segment: Segment, video: Video, shots: list[Shot], model: str) -> TextLine:
    words = [(fold(w), round(s, 3), round(e, 3)) for w, s, e in segment.words]
    return TextLine(source="asr", video_pk=video.id, shot_id=_shot_at(shots, video.fps, segment.start),
                    text=segment.text[:4000], folded=" ".join(tokens(segment.text)),
                    confidence=float(min(1.0, max(0.0, segment.confidence))), start_s=round(float(segment.start), 3),
                    end_s=round(float(segment.end), 3), words_json=json.dumps(words), model=model)


class SpeechPass:
    """Every video (not AI Challenge keyframe sets: they have no sound) whose speech this model has not heard."""

    def __init__(self, session: Session, model, progress=None) -> None:
        self.session, self.model, self.progress = session, model, progress
        self.summary = WordsSummary()

    def run(self) -> WordsSummary:
        start = time.monotonic()
        stale = select(Video).where(Video.source == "video",
                                    or_(Video.asr_model.is_(None), Video.asr_model != self.model.name))
        for video in self.session.scalars(stale.order_by(Video.id)).all():
            self._video(video)
        self.summary.seconds = time.monotonic() - start
        return self.summary

    def _video(self, video: Video) -> None:
        if not Path(video.path).is_file():  # moved or removed since (--prune drops it): tried again when it is back
            log.warning("speech: %s not transcribed, its file is gone", video.video_id)
            return
        shots = list(self.session.scalars(select(Shot).where(Shot.video_pk == video.id).order_by(Shot.start_frame)))
        segments: list[Segment] = []
        heard = [0.0]

        def counted(chunks):
            for chunk in chunks:
                heard[0] += len(chunk) / 2 / RATE
                if self.progress is not None:
                    self.progress.update("speech", round(len(chunk) / 2 / RATE))
                yield chunk

        try:
            segments.extend(self.model.transcribe(counted(pcm_chunks(Path(video.path)))))
        except AudioError as exc:
            kept = "; the sound that could be decoded is transcribed" if segments else ""
            self.summary.failed.append(Problem(video.video_id, f"speech: {exc}{kept} (the video is indexed)"))
        self.session.execute(delete(TextLine).where(TextLine.video_pk == video.id, TextLine.source == "asr"))
        for segment in segments:
            if tokens(segment.text):
                self.session.add(_asr_row(segment, video, shots, self.model.name))
        video.asr_model = self.model.name
        self.session.commit()
        self.summary.videos += 1
        self.summary.segments += len(segments)
        self.summary.audio_seconds += heard[0]
        log.info("speech: %s done (%d segments)", video.video_id, len(segments))
