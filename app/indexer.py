"""The ingest pipeline: paths in; keyframes, features, catalogue rows and a FAISS index out.

Incremental (unchanged files are recognised by size+mtime, then content hash), resumable
(each video commits on its own; the FAISS index is rebuilt whenever the catalogue no
longer matches it) and forgiving (a bad file is reported and skipped).
"""
from __future__ import annotations

import fcntl
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app import aic, atomic
from app.archives import extract_archive
from app.boxes import annotated_frames
from app.encoders import DEFAULT_MODEL, ClipEncoder, WeightsUnavailable, default_pretrained, resolve_device
from app.index_build import refresh_index
from app.media import BadMediaFile, Discovery, Problem, discover
from app.models import Image, IndexRun, Keyframe, Setting, TextLine, Video
from app.paths import DataLayout
from app.progress import ProgressListener, StageProgress
from app.proxies import make_proxy
from app.store import (
    FileState,
    KeyframeRecord,
    encode_jpeg,
    publish_video_files,
    recover_staged,
    remove_video_files,
    replace_video_rows,
    staged_proxy_path,
    unique_video_id,
    write_video_files,
)
from app.video_decode import browser_playable
from app.video_ingest import VideoError, process_video

log = logging.getLogger(__name__)
MAX_IMAGE_PIXELS = 100_000_000
PREFETCH_VIDEOS = 2  # decoded ahead per decode worker; each holds its candidate keyframes in memory
SMALL_VIDEO_BYTES = 32 * 1024 * 1024  # a folder of files this small (short clips) gets more decode workers
MAX_DECODE_WORKERS = 4


class CollectionBusy(RuntimeError):
    """Another offline.py run holds this data directory."""


class ModelMismatch(RuntimeError):
    """The collection was built with another model; vectors are never mixed."""


@dataclass
class IndexOptions:
    model: str | None = None  # None: the collection's model (what it was indexed with), else ViT-B-32
    pretrained: str | None = None  # None: the collection's weights for that model, else its LAION-2B tag
    device: str = "auto"
    index_type: str = "auto"
    interval_s: float = 4.0
    keyframe_max_side: int = 1280
    batch_size: int = 32
    prune: bool = False
    progress: bool | None = None
    retrain: bool = False  # rebuild and retrain the index even when the catalogue's changes could be added to it
    force: bool = False  # ingest again even when unchanged (new keyframe settings)
    features_model: tuple[str, str] | None = None  # (model, pretrained) that made an AI Challenge set's features
    faces: bool | None = None  # None: when the face model loads here
    face_model: str = "dlib"  # app.face_model.load_face_model's spec
    faces_redo: bool = False  # scan every picture again (another face model)
    concepts: bool = True  # zero-shot action/concept labels per shot and image (app.concepts)
    vocabulary: Path | None = None  # a file of labels, one per line; None: UCF101's actions and COCO's classes
    objects: bool | None = None  # object detection (app.objects); None: when the detector loads here
    detector: str | None = None  # a torchvision detection model; None: the default, if its weights are cached
    detector_weights: str | None = None  # None: torchvision's (cache or download); a file; 'none': random weights
    object_threshold: float = 0.5  # detections below this score are not kept
    hierarchy: Path | None = None  # a YAML or JSON file of label parents; None: COCO's supercategories
    listener: ProgressListener | None = None  # hears stage counts and per-file outcomes (a job's page)
    ocr: bool | None = None  # on-screen text of keyframes and images (app.ocr); None: when the OCR model loads
    ocr_model: str | None = None  # None: RapidOCR's shipped PP-OCRv4; a folder of PP-OCR ONNX models
    asr: bool | None = None  # speech of videos (app.asr); None: when the speech model loads
    asr_model: str | None = None  # None: PocketSphinx's shipped English; a faster-whisper model folder
    asr_language: str = "en"
    ray: str | None = None  # None: this machine; auto or HOST:PORT: videos decoded on that Ray cluster (app.ray_ingest)
    ray_workers: int | None = None  # videos at once on Ray; None: the cluster's CPUs
    model_config: str | None = None  # the extra open_clip config, for Ray's CLIP actors to know the model too


@dataclass
class RunSummary:
    seen: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    pruned: int = 0
    keyframes: int = 0
    images: int = 0
    seconds: float = 0.0
    index_size: int = 0
    index_rebuilt: bool = False
    failed: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    faces: str = ""  # what the face pass did, when it ran
    concepts: str = ""  # what the concept pass did
    objects: str = ""  # what the object pass did
    ocr: str = ""  # what the OCR pass did
    speech: str = ""  # what the speech pass did

    def line(self) -> str:
        return (f"files seen {self.seen}, added {self.added}, updated {self.updated}, "
                f"unchanged {self.unchanged}, skipped {len(self.skipped)}, failed {len(self.failed)}, "
                f"pruned {self.pruned}, keyframes {self.keyframes}, images {self.images}, "
                f"index {self.index_size} vectors, {self.seconds:.1f} s"
                + "".join(f"\n{line}" for line in (self.concepts, self.objects, self.faces, self.ocr, self.speech)
                          if line))


@contextmanager
def collection_lock(layout: DataLayout):
    """One writer per data directory; a second run fails at once instead of corrupting the first."""
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CollectionBusy(f"another offline.py run is writing to {layout.data_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def collection_identity(session: Session) -> tuple[str, str] | None:
    rows = {key: value for key, value in session.execute(select(Setting.key, Setting.value))}
    if "model" in rows:
        return rows["model"], rows.get("pretrained", "")
    return None


def _has_items(session: Session) -> bool:
    return bool(session.scalar(select(func.count(Keyframe.id))) or session.scalar(select(func.count(Image.id))))


def check_identity(session: Session, model: str, pretrained: str) -> None:
    """Refuse to add vectors of another model (or other weights) to a non-empty collection."""
    known = collection_identity(session)
    if known is None:
        return
    if _has_items(session) and known != (model, pretrained):
        raise ModelMismatch(f"this collection was indexed with --model {known[0]} --pretrained {known[1]}; "
                            f"refusing to mix in vectors of --model {model} --pretrained {pretrained}. "
                            f"Use the same model, or another --data-dir.")


def resolve_identity(session: Session, model: str | None, pretrained: str | None) -> tuple[str, str]:
    """What the user named, completed by what the collection was indexed with: indexing more files into a
    collection needs no --model/--pretrained (random-weight collections included)."""
    known = collection_identity(session) if _has_items(session) else None
    if model is None:
        model = known[0] if known else DEFAULT_MODEL
    if pretrained is None:
        pretrained = known[1] if known and known[0] == model else default_pretrained(model)
    return model, pretrained


def check_fingerprint(session: Session, encoder: ClipEncoder) -> None:
    """Same names, other network (a replaced checkpoint file): refused like another model."""
    known = session.get(Setting, "weights_fingerprint")
    if known is not None and known.value != encoder.fingerprint and _has_items(session):
        raise ModelMismatch(f"this collection's vectors were made with {encoder.model_name} / {encoder.pretrained} "
                            f"weights of fingerprint {known.value}; the weights loaded now have fingerprint "
                            f"{encoder.fingerprint}. Use the original weights file, or another --data-dir.")


def _set_identity(session: Session, encoder: ClipEncoder) -> None:
    for key, value in (("model", encoder.model_name), ("pretrained", encoder.pretrained),
                       ("dim", str(encoder.dim)), ("weights_fingerprint", encoder.fingerprint)):
        session.merge(Setting(key=key, value=value))
    session.commit()


class Outcome(Enum):
    """What one file's step did; the value names the RunSummary counter it adds to."""

    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    QUEUED = "queued"  # checked now, finished later (videos)


def _bad_file(step):
    """Turn the input file's own problems (unreadable, damaged image) into BadMediaFile; other errors pass."""
    def run(path: Path):
        try:
            return step(path)
        except (UnidentifiedImageError, PILImage.DecompressionBombError) as exc:
            raise BadMediaFile(str(exc) or type(exc).__name__) from exc
        except OSError as exc:
            if exc.filename is not None and Path(exc.filename) != path:
                raise  # our own files (the data dir): not this input's fault
            raise BadMediaFile(str(exc) or type(exc).__name__) from exc
    return run


def _read_image(path: Path) -> PILImage.Image:
    """The RGB pixels of an image to index; the size is checked from the header before decoding (no
    process-wide PIL setting is changed)."""
    with PILImage.open(path) as im:
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise BadMediaFile(f"image of {im.width}x{im.height} pixels is over the limit of {MAX_IMAGE_PIXELS:,}")
        im.load()
        return im.convert("RGB")


class Indexer:
    """One run over a list of paths. Construct, then `run()`."""

    def __init__(self, layout: DataLayout, session: Session, encoder: ClipEncoder, options: IndexOptions,
                 face_model=None, detector=None, ocr_model=None, speech_model=None) -> None:
        self.face_model = face_model  # None: no face pass
        self.detector = detector  # None: no object pass
        self.ocr_model, self.speech_model = ocr_model, speech_model  # None: no OCR, no speech pass
        self.layout = layout
        self.session = session
        self.encoder = encoder
        self.options = options
        self.summary = RunSummary()
        self.progress = StageProgress(options.progress, options.listener)
        self._transnet = None

    @property
    def transnet(self):
        if self._transnet is None:
            from app.shots import load_transnet

            self._transnet = load_transnet(self.encoder.device)
        return self._transnet

    def run(self, paths: list[Path]) -> RunSummary:
        start = time.monotonic()
        found = discover(paths)
        self._expand_archives(found)
        found.videos, found.images = list(dict.fromkeys(found.videos)), list(dict.fromkeys(found.images))  # named twice
        self._names = found.names
        self.summary.failed.extend(found.failed)
        self.summary.skipped.extend(found.skipped)
        for problems, status in ((found.failed, "failed"), (found.skipped, "skipped")):
            for problem in problems:
                self.progress.file(problem.name, status, problem.reason)
        _set_identity(self.session, self.encoder)
        try:
            self._ingest_videos(found.videos)
            for folder in found.aic_datasets:
                self._ingest_aic(folder)
            self._ingest_images(found.images)
            if self.options.prune:
                self._prune()
            self._refresh_index()
            if self.options.concepts:
                self._concepts()
            if self.detector is not None:
                self._objects()
            if self.face_model is not None:
                self._faces()
            if self.ocr_model is not None:
                self._ocr()
            if self.speech_model is not None:
                self._speech()
        finally:
            self.progress.close()
        self.summary.seconds = time.monotonic() - start
        return self.summary

    def _guard(self, path: Path, step, count: bool = True) -> None:
        """Run one file's step; a failure is recorded, the run goes on."""
        self.summary.seen += count
        try:
            outcome = _bad_file(step)(path)
        except BadMediaFile as exc:
            self.session.rollback()
            self.summary.failed.append(Problem(str(path), str(exc) or type(exc).__name__))
            self.progress.file(str(path), "failed", str(exc) or type(exc).__name__)
            log.warning("failed: %s: %s", path, exc)
            return
        if outcome is not Outcome.QUEUED:
            setattr(self.summary, outcome.value, getattr(self.summary, outcome.value) + 1)
            self.progress.file(str(path), outcome.value)

    def _expand_archives(self, found: Discovery) -> None:
        for archive in found.archives:
            files, failed, skipped = extract_archive(archive, self.layout.archives_dir)
            found.failed.extend(failed)
            found.skipped.extend(skipped)
            if files:
                discover(files, found)

    # -- videos ---------------------------------------------------------------------------
    def _unchanged(self, row, path: Path, state: FileState) -> bool:
        if row is None or self.options.force:
            return False
        if state.same_as(row.size, row.mtime_ns):
            return True
        if state.hash(path) == row.content_hash:
            row.size, row.mtime_ns = state.size, state.mtime_ns
            self.session.commit()
            return True
        return False

    def _moved_video(self, path: Path, state: FileState) -> bool:
        """The same content known under a path that is gone: a move, not a new video."""
        for row in self.session.scalars(select(Video).where(Video.content_hash == state.hash(path))):
            if not Path(row.path).exists():
                row.path, row.size, row.mtime_ns = str(path), state.size, state.mtime_ns
                self.session.commit()
                return True
        return False

    def _ingest_videos(self, paths: list[Path]) -> None:
        """Decode and shot detection of the next videos run in worker threads (or Ray tasks, with --ray) while this
        thread encodes, writes and commits the current one, so the slowest stage sets the pace. One worker for long
        videos (decoding and TransNetV2 already use every core); for a folder of short clips, where each file's own
        start-up and its short TransNetV2 windows leave cores idle, up to MAX_DECODE_WORKERS (a quarter of the cores
        on the CPU, more with a GPU doing the network work). Videos are committed in their order either way."""
        todo: list[tuple[Path, FileState, Video | None]] = []
        for path in paths:
            self._guard(path, lambda p: self._check_video(p, todo))
        if not todo:
            return
        if self.options.ray:
            self._ingest_on_ray(todo)
            return
        from os import cpu_count

        sizes = sorted(state.size for _, state, _ in todo)
        small = len(todo) > 1 and sizes[len(sizes) // 2] <= SMALL_VIDEO_BYTES
        per_worker = 2 if self.encoder.device.startswith("cuda") else 4  # cores per worker
        workers = max(1, min(MAX_DECODE_WORKERS, (cpu_count() or 1) // per_worker, len(todo))) if small else 1
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            def send(path: Path, pinned: frozenset[int]):
                return pool.submit(process_video, path, self.transnet, interval_s=self.options.interval_s,
                                   keyframe_max_side=self.options.keyframe_max_side, progress=self.progress,
                                   pinned=pinned)

            self._in_order(todo, PREFETCH_VIDEOS * workers, send,
                           lambda future: self._encode_keyframes(future.result()))

    def _ingest_on_ray(self, todo: list[tuple[Path, FileState, Video | None]]) -> None:
        """The same loop with the decoding, shots and keyframes as Ray tasks and CLIP in Ray actors."""
        from app.ray_ingest import RayVideoPool

        pool = RayVideoPool(self.options.ray, self.encoder, self.options.model_config, self.options.ray_workers)

        def receive(handle) -> tuple:
            prepared, features = pool.result(handle)
            self.progress.update("decode", prepared.result.frames)
            self.progress.update("shots", prepared.result.frames)
            self.progress.update("features", len(prepared.jpegs))
            return prepared.result, prepared.jpegs, features

        self._in_order(todo, pool.in_flight, lambda path, pinned: pool.submit(
            path, self.options.interval_s, self.options.keyframe_max_side, pinned), receive)

    def _in_order(self, todo: list, ahead_count: int, send, receive) -> None:
        """Keep `ahead_count` videos in flight and commit each in the order given (back-pressure: no more than that
        many results wait in memory)."""
        ahead: deque = deque()
        queue_iter = iter(todo)

        def submit_next() -> None:
            item = next(queue_iter, None)
            if item is not None:
                path, _, existing = item
                video_id = existing.video_id if existing else unique_video_id(self.session, path.stem, str(path))
                pinned = frozenset(annotated_frames(self.session, video_id))  # boxes stay on their frames
                ahead.append((*item, send(path, pinned)))

        for _ in range(ahead_count):
            submit_next()
        while ahead:
            path, state, existing, handle = ahead.popleft()
            submit_next()
            self._guard(path, lambda p, h=handle, s=state, e=existing: self._finish_video(p, s, e, *receive(h)),
                        count=False)

    def _check_video(self, path: Path, todo: list) -> Outcome:
        state = FileState.of(path)
        existing = self.session.scalar(select(Video).where(Video.path == str(path)))
        if self._unchanged(existing, path, state) or (existing is None and self._moved_video(path, state)):
            return Outcome.UNCHANGED
        state.hash(path)
        todo.append((path, state, existing))
        return Outcome.QUEUED

    def _encode_keyframes(self, result) -> tuple:
        """Here, not on Ray: each keyframe's JPEG and CLIP's vectors of the decoded JPEG."""
        encoded = [encode_jpeg(kf.image) for kf in result.keyframes]
        features = self.encoder.encode_images([pixels[:, :, ::-1] for _, pixels in encoded])
        self.progress.update("features", len(encoded))
        return result, [data for data, _ in encoded], features

    def _finish_video(self, path: Path, state: FileState, existing: Video | None, result, jpegs: list[bytes],
                      features: np.ndarray) -> Outcome:
        records = [KeyframeRecord(kf.frame_idx, kf.shot, jpeg=data, pts_time=kf.pts_time)
                   for kf, data in zip(result.keyframes, jpegs, strict=True)]
        video_id = existing.video_id if existing else unique_video_id(self.session, path.stem, str(path))
        shots = [(s.start_frame, s.end_frame) for s in result.shots]
        write_video_files(self.layout, video_id, state.content_hash, result.fps, records, shots, features)
        self._proxy(path, video_id, result.info)
        log.info("staged %s", video_id)
        self.progress.update("keyframes", len(records))
        replace_video_rows(self.session, self.layout, existing, video_id, str(path), state, result.fps,
                           result.frames, (result.width, result.height), "video", records, shots,
                           duration=result.duration)
        log.info("committed %s", video_id)
        publish_video_files(self.layout, video_id)
        log.info("published %s", video_id)
        self.summary.keyframes += len(records)
        return Outcome.UPDATED if existing else Outcome.ADDED

    def _proxy(self, path: Path, video_id: str, info) -> None:
        """A browser-playable copy when the original is not, staged with the video's other files so that it
        switches with them (a failure only costs the player)."""
        if info is None or browser_playable(path, info):
            return
        try:
            make_proxy(path, staged_proxy_path(self.layout, video_id), info.rotation)
        except VideoError as exc:
            self.summary.skipped.append(Problem(str(path), f"indexed, but {exc}; the page shows keyframes only"))

    # -- AI Challenge datasets ----------------------------------------------------------------
    def _ingest_aic(self, folder: Path) -> None:
        for csv_path in aic.list_videos(folder):
            self._guard(csv_path, lambda p, folder=folder: self._ingest_aic_video(folder, p))

    def _shipped_features(self, folder: Path, video: aic.AicVideo) -> np.ndarray | None:
        """A dataset's own features, only when the operator said which model made them (--features-model, or a
        MODEL file beside them) and it is this collection's model; otherwise they are computed again."""
        if video.features is None:
            return None
        made_by = self.options.features_model or aic.declared_model(video.features.parent)
        if made_by is None:
            self._note_once(folder, f"{video.features.parent.name} not used: which model made these features is "
                                    f"not said (name it with --features-model 'MODEL PRETRAINED', or a MODEL file "
                                    f"beside them); computed again with {' '.join(self.encoder.identity)}")
            return None
        if tuple(made_by) != tuple(self.encoder.identity):
            self._note_once(folder, f"{video.features.parent.name} were made by {' '.join(made_by)}, not this "
                                    f"collection's {' '.join(self.encoder.identity)}; computed again")
            return None
        return aic.precomputed_features(video, self.encoder.dim)

    def _note_once(self, folder: Path, reason: str) -> None:
        if not any(p.name == str(folder) and p.reason == reason for p in self.summary.skipped):
            self.summary.skipped.append(Problem(str(folder), reason))

    def _ingest_aic_video(self, folder: Path, csv_path: Path) -> Outcome:
        video = aic.read_video(folder, csv_path)
        key = str(folder / "keyframes" / video.video_id)
        state = FileState(0, 0, video.fingerprint())
        existing = self.session.scalar(select(Video).where(Video.path == key))
        if existing is not None and existing.content_hash == state.content_hash:
            return Outcome.UNCHANGED
        features = self._shipped_features(folder, video)
        if features is None:
            features = self.encoder.encode_images([PILImage.open(p).convert("RGB") for p in video.images])
        self.progress.update("features", len(features))
        records = [KeyframeRecord(r["frame_idx"], None, source=img)
                   for r, img in zip(video.rows, video.images, strict=True)]
        video_id = existing.video_id if existing else unique_video_id(self.session, video.video_id, key)
        write_video_files(self.layout, video_id, state.content_hash, video.fps, records, None, features)
        self.progress.update("keyframes", len(records))
        last = max(r["frame_idx"] for r in video.rows)
        with PILImage.open(video.images[0]) as im:
            size = im.size
        replace_video_rows(self.session, self.layout, existing, video_id, key, state, video.fps, last + 1,
                           size, "aic", records, None)
        publish_video_files(self.layout, video_id)
        self.summary.keyframes += len(records)
        return Outcome.UPDATED if existing else Outcome.ADDED

    # -- images ---------------------------------------------------------------------------------
    def _ingest_images(self, paths: list[Path]) -> None:
        batch: list[tuple[Path, FileState, Image | None, PILImage.Image]] = []
        for path in paths:
            self._guard(path, lambda p: self._prepare_image(p, batch))
            if len(batch) >= self.options.batch_size:
                self._flush_images(batch)
        self._flush_images(batch)

    def _prepare_image(self, path: Path, batch: list) -> Outcome:
        state = FileState.of(path)
        if state.size == 0:
            raise BadMediaFile("empty file (0 bytes)")
        existing = self.session.scalar(select(Image).where(Image.path == str(path)))
        if self._unchanged(existing, path, state):
            if existing.name is None or existing.name != self._names.get(path, existing.name):
                existing.name = self._names.get(path) or path.name
                self.session.commit()
            return Outcome.UNCHANGED
        state.hash(path)
        batch.append((path, state, existing, _read_image(path)))
        return Outcome.UPDATED if existing else Outcome.ADDED

    def _flush_images(self, batch: list) -> None:
        if not batch:
            return
        features = self.encoder.encode_images([item[3] for item in batch])
        self.progress.update("features", len(batch))
        for (path, state, existing, rgb), vec in zip(batch, features, strict=True):
            atomic.save_npy(self.layout.image_feature_dir / f"{state.content_hash}.npy", vec)
            row = existing or Image(path=str(path))
            if row.content_hash != state.content_hash:  # other pixels: faces, objects and words are found again
                row.faces_model = row.objects_model = row.concepts_vocab = row.ocr_model = None
                if row.id is not None:  # the old picture's words go now, even if this run reads none
                    self.session.execute(delete(TextLine).where(TextLine.image_id == row.id))
            row.content_hash, row.size, row.mtime_ns = state.content_hash, state.size, state.mtime_ns
            row.name = self._names.get(path) or path.name
            row.width, row.height = rgb.size
            row.indexed_at = datetime.now(UTC)
            self.session.add(row)
        self.session.commit()
        self.summary.images += len(batch)
        batch.clear()

    # -- pruning and the FAISS index --------------------------------------------------------------
    def _prune(self) -> None:
        for video in self.session.scalars(select(Video)).all():
            if not Path(video.path).exists():
                remove_video_files(self.layout, video.video_id)
                self.session.delete(video)
                self.summary.pruned += 1
        for image in self.session.scalars(select(Image)).all():
            if not Path(image.path).exists():
                self.session.delete(image)
                self.summary.pruned += 1
        self.session.commit()

    def _concepts(self) -> None:
        """Action and concept labels of every shot and image not yet labelled with this vocabulary."""
        from app.concepts import ConceptPass

        self.summary.concepts = ConceptPass(self.session, self.layout, self.encoder, self.options.vocabulary,
                                            self.progress).run()

    def _objects(self) -> None:
        """Objects of every keyframe and image not yet scanned by this detector, and the regions index."""
        from app.objects import ObjectPass

        found = ObjectPass(self.session, self.layout, self.detector, self.encoder, self.options, self.progress).run()
        self.summary.failed.extend(found.failed)
        self.summary.objects = found.line()

    def _faces(self) -> None:
        """Faces of every keyframe and image not yet scanned, their index, and the people they cluster into."""
        from app.face_index import refresh_face_index
        from app.face_ingest import FaceScanner
        from app.people import recluster

        model = self.face_model
        faces = FaceScanner(self.session, self.layout, model, self.progress).run()
        self.summary.failed.extend(faces.failed)
        size = refresh_face_index(self.session, self.layout, model.name, model.dim, model.fingerprint,
                                  retrain=self.options.retrain)
        people = recluster(self.session, model.match_threshold) if faces.pictures or self.options.retrain else None
        self.summary.faces = f"{faces.line()}; face index {size} vectors" + (f"; {people.line()}" if people else "")

    def _ocr(self) -> None:
        """On-screen text of every keyframe and image not yet read by this OCR model."""
        from app.text_ingest import OcrPass

        found = OcrPass(self.session, self.layout, self.ocr_model, self.progress).run()
        self.summary.failed.extend(found.failed)
        self.summary.ocr = found.line("ocr")

    def _speech(self) -> None:
        """Speech of every video not yet transcribed by this speech model."""
        from app.text_ingest import SpeechPass

        found = SpeechPass(self.session, self.speech_model, self.progress).run()
        self.summary.failed.extend(found.failed)
        self.summary.speech = found.line("asr")

    def _refresh_index(self) -> None:
        self.summary.index_size, self.summary.index_rebuilt = refresh_index(
            self.session, self.layout, self.encoder.identity, self.encoder.dim, self.options.index_type,
            fingerprint=self.encoder.fingerprint, retrain=self.options.retrain)
        self.progress.update("index", self.summary.index_size)


def _face_model(session: Session, options: IndexOptions):
    """The face model of this run, checked against the collection's before any work; None: no face pass."""
    from app.face_ingest import check_face_model
    from app.face_model import DEFAULT_FACE_MODEL, FaceModelUnavailable, load_face_model

    if options.faces is False:
        return None
    try:
        model = load_face_model(options.face_model)
    except FaceModelUnavailable:
        if options.faces is None and options.face_model == DEFAULT_FACE_MODEL:  # a model named by hand must load
            log.warning("faces: the face model does not load here; indexing without faces")
            return None
        raise
    check_face_model(session, model, options.faces_redo)
    session.merge(Setting(key="face_model_spec", value=options.face_model))
    session.commit()
    return model


def _detector(session: Session, options: IndexOptions, device: str):
    """The object detector of this run, loaded before any work: (detector or None, a sentence when there is none).
    Named by hand (--detector, --detector-weights), it must load, else the run stops here as for CLIP; by default it
    runs when torchvision's weights are in its cache already (no download is tried unasked)."""
    from app.objects import DEFAULT_DETECTOR, Detector, check_detector, default_weights_cached

    if options.objects is False:
        return None, ""
    name = options.detector or DEFAULT_DETECTOR
    named = options.detector is not None or options.detector_weights is not None or options.objects is True
    if not named and not default_weights_cached(name):
        return None, (f"objects: not detected ({name}'s weights are not in torchvision's cache; --detector {name} "
                      f"downloads them, --detector-weights PATH or none gives others, --no-detector silences this)")
    detector = Detector(name, options.detector_weights, options.object_threshold, device)
    check_detector(session, detector)
    return detector, ""


def _word_models(options: IndexOptions) -> tuple:
    """The OCR and speech models of this run, loaded before any work: (ocr or None, speech or None). Named by hand
    (--ocr-model, --asr-model, --ocr, --asr) a model must load, else the run stops here with the reason; by default
    a model that does not load here is left out with a warning."""
    from app.asr import AsrUnavailable, load_speech_model
    from app.ocr import OcrUnavailable, load_ocr_model

    loaded = []
    for wanted, spec, load, unavailable, what in (
            (options.ocr, options.ocr_model, load_ocr_model, OcrUnavailable, "on-screen text"),
            (options.asr, options.asr_model, lambda s: load_speech_model(s, options.asr_language), AsrUnavailable,
             "speech")):
        if wanted is False:
            loaded.append(None)
            continue
        try:
            loaded.append(load(spec))
        except unavailable as exc:
            if wanted is None and spec is None:
                log.warning("%s: not read (%s)", what, exc)
                loaded.append(None)
                continue
            raise
    return tuple(loaded)


def run_index(layout: DataLayout, paths: list[Path], options: IndexOptions, session_factory,
              encoder: ClipEncoder | None = None) -> RunSummary:
    """Everything `offline.py index` does, with the checks made before any work."""
    layout.ensure()
    with collection_lock(layout), session_factory() as session:
        if options.ray:  # the cluster first: an unreachable one is told in seconds, before any model loads
            from app.ray_ingest import connect

            connect(options.ray)
        named = options.features_model  # shipped features name the model, unless the user named one
        model, pretrained = resolve_identity(session, options.model or (named[0] if named else None),
                                             options.pretrained or (named[1] if named and not options.model else None))
        check_identity(session, model, pretrained)
        # the cheap checks first (files the user named, then the small models), so a mistake is told in a moment
        if options.concepts:  # a bad vocabulary file is refused before any work
            from app.concepts import load_vocabulary

            load_vocabulary(options.vocabulary)
        if options.hierarchy is not None:  # checked and kept whether or not this run detects
            from app.categories import load_hierarchy, store_hierarchy

            store_hierarchy(session, load_hierarchy(options.hierarchy))
        face_model = _face_model(session, options)
        device = encoder.device if encoder is not None else resolve_device(options.device)
        detector, no_objects = _detector(session, options, device)
        ocr_model, speech_model = _word_models(options)
        if encoder is None:
            encoder = ClipEncoder(model, pretrained, options.device, options.batch_size)
        check_fingerprint(session, encoder)
        recover_staged(session, layout)  # finish (or drop) what a killed run had staged
        run = IndexRun(model=encoder.model_name, pretrained=encoder.pretrained, index_type=options.index_type)
        session.add(run)
        session.commit()
        try:
            summary = Indexer(layout, session, encoder, options, face_model, detector, ocr_model,
                              speech_model).run(paths)
            summary.objects = summary.objects or no_objects
        except BaseException:
            session.rollback()
            run.status = "failed"
            session.commit()
            raise
        for name in ("seen", "added", "updated", "unchanged", "pruned", "keyframes", "images", "seconds"):
            setattr(run, "files_seen" if name == "seen" else name, getattr(summary, name))
        run.failed, run.skipped = len(summary.failed), len(summary.skipped)
        run.status, run.finished_at = "done", datetime.now(UTC)
        session.commit()
        return summary


__all__ = ["CollectionBusy", "IndexOptions", "ModelMismatch", "RunSummary", "WeightsUnavailable", "run_index"]
