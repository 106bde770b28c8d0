"""Action and concept labels per shot and per image, zero-shot with the collection's CLIP model.

A vocabulary is a list of labels: by default UCF101's 101 action names and COCO's 80 object classes (app/data/),
or a user's file (`offline.py index --vocabulary FILE`, one label per line). Each label becomes a prompt ("a video
of a person playing guitar" for the CamelCase action PlayingGuitar, "a photo of a dog" for a COCO class, "a photo
of {label}" for a user's label), encoded once per run with the collection's text encoder.

A shot's labels: softmax(100 * keyframe vectors @ prompt vectors.T) per keyframe (the stored keyframe vectors,
row n-1 of feature/<video_id>.npy), averaged over the shot's keyframes; its 5 best labels are kept with those
averaged probabilities as scores (rank 1 is the best; equal scores keep vocabulary order). An image is labelled
the same way from its one vector. Items are marked with the vocabulary's identity (`concepts_vocab`); a run labels
only items not yet labelled with this vocabulary, committing every few videos with their marks, so a killed run
resumes. Videos without shots (AI Challenge imports, whose keyframes belong to no shot) are not labelled: the
labels hang on shots, and such a video has none; they are marked and counted in the summary.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.items import ItemRef
from app.models import ConceptLabel, Image, Keyframe, Shot, Video
from app.paths import DataLayout

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
UCF101_FILE = DATA_DIR / "ucf101_actions.txt"
COCO_FILE = DATA_DIR / "coco_classes.txt"
DEFAULT_IDENTITY = "default-v1"  # change when the default files or prompts change: every item is labelled again
TOP_K = 5  # labels kept per shot or image
FACET_RANK = 3  # `label=` matches a shot whose label is among its best three
CARD_LABELS = 3  # labels a result card shows
LOGIT_SCALE = 100.0  # CLIP's temperature for zero-shot classification
MAX_LABELS = 10_000
MAX_LABEL_CHARS = 200
TEXT_BATCH = 256
VIDEO_BATCH = 32  # videos per commit (short clips commit in groups, not one transaction each)
IMAGE_BATCH = 256


class VocabularyError(ValueError):
    """A vocabulary file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Vocabulary:
    identity: str  # what items are marked with (concepts_vocab, ConceptLabel.vocabulary)
    labels: tuple[str, ...]
    prompts: tuple[str, ...]
    source: str  # for messages

    def __len__(self) -> int:
        return len(self.labels)


_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def words(name: str) -> str:
    """'PlayingGuitar' -> 'playing guitar', 'YoYo' -> 'yo yo', 'walking_with_dog' -> 'walking with dog'."""
    parts = [w for chunk in re.split(r"[\s_\-]+", name.strip()) for w in _CAMEL.findall(chunk)]
    return " ".join(p.lower() for p in parts) or name.strip().lower()


def action_prompt(name: str) -> str:
    """A CamelCase action (a UCF101 class, a UCF101-layout folder name) as CLIP reads it."""
    return f"a video of a person {words(name)}"


def object_prompt(name: str) -> str:
    """A COCO class as CLIP reads it: 'a photo of a dog', 'a photo of an apple'."""
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"a photo of {article} {name}"


def user_prompt(label: str) -> str:
    return f"a photo of {label}"


def read_labels(path: Path) -> list[str]:
    """A vocabulary file's labels, checked: one label per line (UTF-8); `#` comment lines and blank lines before
    the first or after the last label are skipped. An empty line between labels, a duplicate (case-insensitive), a
    line over 200 characters or more than 10,000 labels is a VocabularyError that names the line."""
    name = path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VocabularyError(f"{path}: cannot read the vocabulary file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise VocabularyError(f"{name}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    labels: list[str] = []
    seen: dict[str, int] = {}
    blank_at: int | None = None
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line:
            if labels and blank_at is None:
                blank_at = lineno
            continue
        if blank_at is not None:
            raise VocabularyError(f"{name}:{blank_at}: empty line between labels (one label per line; remove it, "
                                  f"or start it with # to make it a comment)")
        if len(line) > MAX_LABEL_CHARS:
            raise VocabularyError(f"{name}:{lineno}: the label is {len(line)} characters long; a label has at most "
                                  f"{MAX_LABEL_CHARS}")
        key = line.casefold()
        if key in seen:
            raise VocabularyError(f"{name}:{lineno}: '{line[:80]}' repeats the label of line {seen[key]} "
                                  f"(labels are compared without case)")
        if len(labels) >= MAX_LABELS:
            raise VocabularyError(f"{name}:{lineno}: more than {MAX_LABELS:,} labels; a vocabulary holds at most "
                                  f"{MAX_LABELS:,}")
        seen[key] = lineno
        labels.append(line)
    if not labels:
        raise VocabularyError(f"{name}: no labels (one label per line)")
    return labels


def load_vocabulary(path: Path | None = None) -> Vocabulary:
    """The default vocabulary (UCF101's actions and COCO's classes), or a user's file. Checked here, so a bad file
    is refused before any labelling."""
    if path is None:
        actions, objects = read_labels(UCF101_FILE), read_labels(COCO_FILE)
        clash = {a.casefold() for a in actions} & {o.casefold() for o in objects}
        if clash:  # the shipped files never do this; a label must name one thing
            raise VocabularyError(f"the default vocabulary names {sorted(clash)} twice")
        return Vocabulary(DEFAULT_IDENTITY, tuple(actions + objects),
                          tuple([action_prompt(a) for a in actions] + [object_prompt(o) for o in objects]),
                          "UCF101 actions + COCO classes")
    path = Path(path)
    labels = read_labels(path)
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    return Vocabulary(f"file:{digest}", tuple(labels), tuple(user_prompt(label) for label in labels), path.name)


def text_vectors(encoder, prompts: tuple[str, ...] | list[str]) -> np.ndarray:
    """The prompts' unit vectors (float32, one row each), in batches."""
    parts = [encoder.encode_text(list(prompts[at:at + TEXT_BATCH])) for at in range(0, len(prompts), TEXT_BATCH)]
    return np.concatenate(parts).astype(np.float32)


def probabilities(vectors: np.ndarray, text: np.ndarray) -> np.ndarray:
    """softmax(100 * vectors @ text.T) per row, in float64."""
    logits = LOGIT_SCALE * (np.asarray(vectors, np.float64) @ np.asarray(text, np.float64).T)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def best(scores: np.ndarray, k: int = TOP_K) -> list[int]:
    """Indices of the k highest scores; equal scores keep vocabulary order."""
    return np.argsort(-scores, kind="stable")[:k].tolist()


@dataclass
class ConceptSummary:
    vocabulary: str = ""
    labels: int = 0
    videos: int = 0
    shots: int = 0
    images: int = 0
    without_shots: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        if not (self.videos or self.images or self.without_shots or self.failed):
            return f"concepts: nothing new to label ({self.vocabulary})"
        extra = (f", {self.without_shots} videos without shots not labelled (AI Challenge imports)"
                 if self.without_shots else "")
        extra += f", {len(self.failed)} not labelled ({'; '.join(self.failed[:3])})" if self.failed else ""
        return (f"concepts: {self.shots} shots in {self.videos} videos and {self.images} images labelled with "
                f"{self.vocabulary} ({self.labels} labels){extra}, {self.seconds:.1f} s")


class ConceptPass:
    """Label every shot and image not yet labelled with this vocabulary (see the module docstring)."""

    def __init__(self, session: Session, layout: DataLayout, encoder, vocabulary: Path | Vocabulary | None = None,
                 progress=None) -> None:
        self.session = session
        self.layout = layout
        self.encoder = encoder
        self.vocabulary = vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary)
        self.progress = progress
        self.summary = ConceptSummary(self.vocabulary.identity, len(self.vocabulary))
        self._text: np.ndarray | None = None

    @property
    def text(self) -> np.ndarray:
        if self._text is None:  # encoded once, and only when something needs labels
            self._text = text_vectors(self.encoder, self.vocabulary.prompts)
        return self._text

    def _stale(self, model):
        return or_(model.concepts_vocab.is_(None), model.concepts_vocab != self.vocabulary.identity)

    def run(self) -> str:
        start = time.monotonic()
        videos = self.session.execute(select(Video.id, Video.video_id).where(self._stale(Video))
                                      .order_by(Video.id)).all()
        pending = 0
        for video_pk, video_id in videos:
            pending += self._label_video(video_pk, video_id)
            if pending >= VIDEO_BATCH:
                self.session.commit()
                pending = 0
        self.session.commit()
        images = self.session.execute(select(Image.id, Image.content_hash).where(self._stale(Image))
                                      .order_by(Image.id)).all()
        for at in range(0, len(images), IMAGE_BATCH):
            self._label_images(images[at:at + IMAGE_BATCH])
            self.session.commit()
        self.summary.seconds = time.monotonic() - start
        return self.summary.line()

    def _rows(self, probs: np.ndarray, **owner) -> list[dict]:
        return [{**owner, "label": self.vocabulary.labels[i], "score": float(probs[i]), "rank": rank,
                 "vocabulary": self.vocabulary.identity} for rank, i in enumerate(best(probs), start=1)]

    def _mark(self, model, ids: list[int]) -> None:
        self.session.execute(update(model).where(model.id.in_(ids)).values(concepts_vocab=self.vocabulary.identity))

    def _label_video(self, video_pk: int, video_id: str) -> int:
        """One video's shots (not committed here); 1 when it did work, else 0."""
        keyframes = self.session.execute(select(Keyframe.n, Keyframe.shot_id)
                                         .where(Keyframe.video_pk == video_pk, Keyframe.shot_id.is_not(None))
                                         .order_by(Keyframe.n)).all()
        if not keyframes:
            self.summary.without_shots += 1
            self._mark(Video, [video_pk])
            return 1
        try:
            features = np.load(self.layout.video_feature_path(video_id))
        except (OSError, ValueError) as exc:
            self.summary.failed.append(f"{video_id}: feature file unreadable ({exc})")
            log.warning("concepts: %s not labelled: %s", video_id, exc)
            return 0
        if max(n for n, _ in keyframes) > len(features):
            self.summary.failed.append(f"{video_id}: {len(features)} feature rows for keyframe "
                                       f"{max(n for n, _ in keyframes)}")
            return 0
        by_shot: dict[int, list[int]] = {}
        for n, shot_id in keyframes:
            by_shot.setdefault(shot_id, []).append(n - 1)
        rows = []
        for shot_id, kf_rows in by_shot.items():
            probs = probabilities(features[kf_rows], self.text).mean(axis=0)
            rows += self._rows(probs, shot_id=shot_id)
        self.session.execute(delete(ConceptLabel).where(
            ConceptLabel.shot_id.in_(select(Shot.id).where(Shot.video_pk == video_pk))))
        self.session.execute(insert(ConceptLabel), rows)
        self._mark(Video, [video_pk])
        self.summary.videos += 1
        self.summary.shots += len(by_shot)
        if self.progress is not None:
            self.progress.update("concepts", len(by_shot))
        return 1

    def _label_images(self, images) -> None:
        done, vecs = [], []
        for image_id, content_hash in images:
            try:
                vec = np.load(self.layout.image_feature_dir / f"{content_hash}.npy")
            except (OSError, ValueError) as exc:
                self.summary.failed.append(f"image {image_id}: feature file unreadable ({exc})")
                continue
            done.append(image_id)
            vecs.append(np.asarray(vec, np.float32).reshape(-1))
        if not done:
            return
        probs = probabilities(np.stack(vecs), self.text)
        rows = [row for image_id, p in zip(done, probs, strict=True) for row in self._rows(p, image_id=image_id)]
        self.session.execute(delete(ConceptLabel).where(ConceptLabel.image_id.in_(done)))
        self.session.execute(insert(ConceptLabel), rows)
        self._mark(Image, done)
        self.summary.images += len(done)
        if self.progress is not None:
            self.progress.update("concepts", len(done))


# -- reading labels back (result cards, the label facet) ---------------------------------------------------------
def top_labels(session: Session, shot_ids: list[int], image_ids: list[int], limit: int = CARD_LABELS
               ) -> tuple[dict[int, list[dict]], dict[int, list[dict]]]:
    """The best `limit` labels of these shots and images, in one query: (by shot id, by image id)."""
    by_shot: dict[int, list[dict]] = {}
    by_image: dict[int, list[dict]] = {}
    shot_ids, image_ids = sorted(set(shot_ids)), sorted(set(image_ids))
    if not shot_ids and not image_ids:
        return by_shot, by_image
    owners = []
    if shot_ids:
        owners.append(ConceptLabel.shot_id.in_(shot_ids))
    if image_ids:
        owners.append(ConceptLabel.image_id.in_(image_ids))
    rows = session.execute(select(ConceptLabel.shot_id, ConceptLabel.image_id, ConceptLabel.label,
                                  ConceptLabel.score).where(or_(*owners), ConceptLabel.rank <= limit)
                           .order_by(ConceptLabel.rank)).all()
    for shot_id, image_id, label, score in rows:
        target = by_shot.setdefault(shot_id, []) if shot_id is not None else by_image.setdefault(image_id, [])
        target.append({"label": label, "score": round(float(score), 6)})
    return by_shot, by_image


def matching_labels(session: Session, label: str) -> list[str]:
    """The stored label spellings equal to `label` without case (Unicode-aware, unlike SQL lower())."""
    key = label.strip().casefold()
    return [s for s in session.scalars(select(ConceptLabel.label).distinct()) if s.casefold() == key]


def labelled_refs(session: Session, label: str, max_rank: int = FACET_RANK) -> set[ItemRef]:
    """Frames (every keyframe of a shot) and images whose label of rank <= max_rank is `label` (any case)."""
    spellings = matching_labels(session, label)
    if not spellings:
        return set()
    chosen = ConceptLabel.label.in_(spellings) & (ConceptLabel.rank <= max_rank)
    frames = session.execute(select(Video.video_id, Keyframe.frame_idx)
                             .join(Keyframe, Keyframe.video_pk == Video.id)
                             .join(ConceptLabel, ConceptLabel.shot_id == Keyframe.shot_id).where(chosen)).all()
    images = session.scalars(select(Image.content_hash).join(ConceptLabel, ConceptLabel.image_id == Image.id)
                             .where(chosen)).all()
    return {ItemRef.frame(v, f) for v, f in frames} | {ItemRef.image(h) for h in images}


def labels_state(session: Session) -> tuple:
    """Changes whenever labels are written or removed: part of the label facet's cache key."""
    return tuple(session.execute(select(func.count(ConceptLabel.id), func.max(ConceptLabel.id))).one())
