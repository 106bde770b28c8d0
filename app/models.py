"""SQLAlchemy 2.x models: the catalogue of videos, shots, keyframes, images and index runs.

The schema itself is created by Alembic (migrations/); these classes are its Python view.
"""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.items import ItemRef


def utcnow() -> datetime:
    return datetime.now(UTC)


def display_name(name: str | None, path: str) -> str:
    """What pages show for an image: its path below the folder that was indexed, else its file name (never the
    server's full path)."""
    return name or path.rsplit("/", 1)[-1]


def on_item(model, ref: ItemRef):
    """The WHERE clause of a model's rows on one item (rows naming a keyframe_id or an image_id): the frame's
    keyframe, or every catalogued image with that content."""
    if ref.is_frame:
        return model.keyframe_id.in_(select(Keyframe.id).join(Video).where(
            Video.video_id == ref.video_id, Keyframe.frame_idx == ref.frame_idx))
    return model.image_id.in_(select(Image.id).where(Image.content_hash == ref.image_hash))


class Base(DeclarativeBase):
    pass


class Video(Base):
    """One ingested video (or one video of an imported AI Challenge dataset)."""

    __tablename__ = "videos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_id: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    source: Mapped[str] = mapped_column(String(16), default="video")  # video | aic
    content_hash: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    fps: Mapped[float] = mapped_column(Float)
    frames: Mapped[int] = mapped_column(Integer)
    duration: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    faces_model: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which model found its faces
    objects_model: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which detector found its objects
    concepts_vocab: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which vocabulary labelled it
    ocr_model: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which OCR model read its keyframes
    asr_model: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which speech model transcribed it

    shots: Mapped[list[Shot]] = relationship(back_populates="video", cascade="all, delete-orphan",
                                             passive_deletes=True, order_by="Shot.shot")
    keyframes: Mapped[list[Keyframe]] = relationship(back_populates="video", cascade="all, delete-orphan",
                                                     passive_deletes=True, order_by="Keyframe.n")


class Shot(Base):
    """A shot: inclusive, 0-based frame range between two detected transitions."""

    __tablename__ = "shots"
    __table_args__ = (UniqueConstraint("video_pk", "shot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_pk: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    shot: Mapped[int] = mapped_column(Integer)
    start_frame: Mapped[int] = mapped_column(Integer)
    end_frame: Mapped[int] = mapped_column(Integer)

    video: Mapped[Video] = relationship(back_populates="shots")


class Keyframe(Base):
    """A keyframe; row n-1 of the video's feature file holds its embedding."""

    __tablename__ = "keyframes"
    # ids are never reused: a served index generation names keyframes by id
    __table_args__ = (UniqueConstraint("video_pk", "n"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_pk: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    n: Mapped[int] = mapped_column(Integer)
    frame_idx: Mapped[int] = mapped_column(Integer)
    pts_time: Mapped[float] = mapped_column(Float)
    shot_id: Mapped[int | None] = mapped_column(ForeignKey("shots.id", ondelete="SET NULL"), nullable=True)
    image_path: Mapped[str] = mapped_column(Text)  # relative to the data directory

    video: Mapped[Video] = relationship(back_populates="keyframes")
    shot: Mapped[Shot | None] = relationship()

    @property
    def ref(self) -> ItemRef:
        return ItemRef.frame(self.video.video_id, self.frame_idx)


class Image(Base):
    """A still image, kept where it is; its embedding lives in feature/images/<content_hash>.npy."""

    __tablename__ = "images"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused (index generations name them)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # what pages and exports show: the path below the folder that was indexed (never the server's full path)
    name: Mapped[str | None] = mapped_column(Text, nullable=True)
    faces_model: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which model found its faces
    objects_model: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which detector found its objects
    concepts_vocab: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which vocabulary labelled it
    ocr_model: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which OCR model read it

    @property
    def ref(self) -> ItemRef:
        return ItemRef.image(self.content_hash)

    @property
    def display_name(self) -> str:
        return display_name(self.name, self.path)


class IndexRun(Base):
    """One `offline.py index` run: which model built what, and what happened."""

    __tablename__ = "index_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(255))
    pretrained: Mapped[str] = mapped_column(Text)
    index_type: Mapped[str] = mapped_column(String(32), default="flat")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed
    files_seen: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    pruned: Mapped[int] = mapped_column(Integer, default=0)
    keyframes: Mapped[int] = mapped_column(Integer, default=0)
    images: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)


class Setting(Base):
    """Collection-wide facts, such as the model its vectors came from (never mixed)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class EvaluationRun(Base):
    """One evaluation: which ground truth, which model and index, when, and every number it gave."""

    __tablename__ = "evaluation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    gt_name: Mapped[str] = mapped_column(String(255))
    gt_format: Mapped[str] = mapped_column(String(16))
    gt_source: Mapped[str] = mapped_column(Text)
    protocol: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(255))
    pretrained: Mapped[str] = mapped_column(Text)
    index_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed
    message: Mapped[str] = mapped_column(Text, default="")
    map_value: Mapped[float | None] = mapped_column(Float, nullable=True)  # headline mAP, for listing
    n_queries: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    summary_json: Mapped[str] = mapped_column(Text, default="{}")
    queries_json: Mapped[str] = mapped_column(Text, default="[]")


class User(Base):
    """An account: admin (users, evaluations), annotator (own boxes), viewer (search only)."""

    __tablename__ = "users"
    __table_args__ = {"sqlite_autoincrement": True}  # a removed user's id (and old cookies) never come back

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="viewer")
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)  # sha256 of the token
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    session_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # +1 ends all sessions

    # Flask-Login's user interface
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        """What the session cookie holds: the id and the session version it was issued under."""
        return f"{self.id}:{self.session_version}"


class Label(Base):
    """A box label; the table feeds autocomplete and per-label pages."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Annotation(Base):
    """A box on a video frame (video_id, frame_idx) in the source video's pixels, or on a catalogued image
    (image_hash, its content hash) in its own pixels: what a re-index or a moved collection does not change.

    Targets are named, not foreign keys, so re-indexing never deletes a box; a box whose frame or image is no
    longer catalogued is orphaned (listed, kept). `n` and `image_path` are set only on boxes migrated from the
    old form whose keyframe or image was already gone (0005). `version` makes an edit of a box someone else
    changed meanwhile fail instead of overwrite.
    """

    __tablename__ = "annotations"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused after a delete

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_id: Mapped[str | None] = mapped_column(String(255), index=True, nullable=True)
    frame_idx: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id"), index=True)
    note: Mapped[str] = mapped_column(Text, default="")
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    label: Mapped[Label] = relationship(lazy="joined")
    author: Mapped[User] = relationship(lazy="joined")

    __mapper_args__ = {"version_id_col": version}

    @property
    def ref(self) -> ItemRef | None:
        """The item the box is on; None only for a migrated box whose keyframe or image was already gone."""
        if self.video_id is not None and self.frame_idx is not None:
            return ItemRef.frame(self.video_id, self.frame_idx)
        if self.image_hash is not None:
            return ItemRef.image(self.image_hash)
        return None

    @property
    def target(self) -> str:
        """The item's text form; an old-form orphan shows what it was on."""
        ref = self.ref
        if ref is not None:
            return str(ref)
        return f"{self.video_id} keyframe {self.n} (before 0005)" if self.video_id else "an image no longer catalogued"


class Person(Base):
    """A cluster of faces taken as one person; named by an annotator, or not yet. `centroid` (the mean of its faces,
    unit length) lets a name find its person again after the faces were detected anew (a re-index)."""

    __tablename__ = "people"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100), unique=True, nullable=True)
    centroid: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Face(Base):
    """A face found on a keyframe or an image: its box in the source's pixels, the detector's score, the model.
    Its vector and thumbnail are in FaceData (one transaction with the row: never a row without its vector).
    `locked`: an annotator placed it (or took it out of a person); clustering leaves it where it is."""

    __tablename__ = "faces"
    __table_args__ = {"sqlite_autoincrement": True}  # index generations name faces by id

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    keyframe_id: Mapped[int | None] = mapped_column(ForeignKey("keyframes.id", ondelete="CASCADE"), index=True,
                                                    nullable=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True,
                                                 nullable=True)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    w: Mapped[float] = mapped_column(Float)
    h: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(64))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id", ondelete="SET NULL"), index=True,
                                                  nullable=True)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.x, self.y, self.w, self.h


class FaceData(Base):
    """A face's unit vector (float32 bytes) and JPEG thumbnail."""

    __tablename__ = "face_data"

    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    thumb: Mapped[bytes] = mapped_column(LargeBinary)


class Detection(Base):
    """A machine box: an object the detector found on a keyframe or an image (class, score, box in source pixels,
    model). Never a human box: an annotator may accept it (a human Annotation is made from it and linked), correct
    that box, or reject it. Detected anew when its keyframe or image is; human boxes are never touched."""

    __tablename__ = "detections"
    __table_args__ = {"sqlite_autoincrement": True}  # index generations name detections by id

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    keyframe_id: Mapped[int | None] = mapped_column(ForeignKey("keyframes.id", ondelete="CASCADE"), index=True,
                                                    nullable=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True,
                                                 nullable=True)
    label: Mapped[str] = mapped_column(String(100), index=True)
    score: Mapped[float] = mapped_column(Float)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    w: Mapped[float] = mapped_column(Float)
    h: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="new")  # new | accepted | rejected
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id", ondelete="SET NULL"),
                                                      nullable=True)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.x, self.y, self.w, self.h


class DetectionData(Base):
    """The CLIP vector (float32 bytes) of a detection's crop: the regions index searches these."""

    __tablename__ = "detection_data"

    detection_id: Mapped[int] = mapped_column(ForeignKey("detections.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class ConceptLabel(Base):
    """An action or concept label of a shot (or of an image), zero-shot from CLIP over a vocabulary: its score is
    the label's probability averaged over the shot's keyframes; `rank` 1 is the shot's best."""

    __tablename__ = "concept_labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shot_id: Mapped[int | None] = mapped_column(ForeignKey("shots.id", ondelete="CASCADE"), index=True, nullable=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True,
                                                 nullable=True)
    label: Mapped[str] = mapped_column(String(200), index=True)
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)
    vocabulary: Mapped[str] = mapped_column(String(64))


class TextLine(Base):
    """Words found in the collection: an OCR line on a keyframe or an image (its box as fractions of the picture),
    or a stretch of speech in a video (start and end in seconds, each word's times in `words_json`). `folded` is
    what the full-text index holds (app.words.fold); the index itself is made by migration 0009."""

    __tablename__ = "text_lines"
    __table_args__ = {"sqlite_autoincrement": True}  # the FTS5 table names lines by id

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(8))  # ocr | asr
    keyframe_id: Mapped[int | None] = mapped_column(ForeignKey("keyframes.id", ondelete="CASCADE"), index=True,
                                                    nullable=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True,
                                                 nullable=True)
    video_pk: Mapped[int | None] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True,
                                                 nullable=True)
    shot_id: Mapped[int | None] = mapped_column(ForeignKey("shots.id", ondelete="SET NULL"), nullable=True)
    text: Mapped[str] = mapped_column(Text)
    folded: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    x: Mapped[float | None] = mapped_column(Float, nullable=True)
    y: Mapped[float | None] = mapped_column(Float, nullable=True)
    w: Mapped[float | None] = mapped_column(Float, nullable=True)
    h: Mapped[float | None] = mapped_column(Float, nullable=True)
    start_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    words_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    model: Mapped[str] = mapped_column(String(64))


class Job(Base):
    """Work the server's worker runs in an `offline.py job` process: an upload to ingest, items to delete, an item to
    index again. Kept in the catalogue so the queue survives a restart (app.jobs)."""

    __tablename__ = "jobs"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # upload | delete | reindex
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)  # app.jobs.STATUSES
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    folder: Mapped[str | None] = mapped_column(Text, nullable=True)  # an upload's folder below uploads/
    targets_json: Mapped[str] = mapped_column(Text, default="[]")  # item refs (delete, reindex) or files (retry)
    stages_json: Mapped[str] = mapped_column(Text, default="{}")
    files_json: Mapped[str] = mapped_column(Text, default="[]")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the offline.py process running it
    attempts: Mapped[int] = mapped_column(Integer, default=0)
