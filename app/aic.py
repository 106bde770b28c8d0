"""Import of datasets in the HCMC AI Challenge layout.

keyframes/<video_id>/<n>.jpg, map-keyframes/<video_id>.csv (n,pts_time,fps,frame_idx) and,
when present, clip-features-*/<video_id>.npy, used instead of recomputing only when the operator
says which model made them (a MODEL file beside them, or --features-model) and it is the
collection's model: a matching dimension alone proves nothing.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.media import BadMediaFile

REQUIRED_COLUMNS = ("n", "pts_time", "fps", "frame_idx")


class DatasetError(BadMediaFile):
    """One video of the dataset is malformed; it is reported and skipped."""


@dataclass
class AicVideo:
    video_id: str
    csv_path: Path
    rows: list[dict]  # n, pts_time, fps, frame_idx per keyframe, in n order
    images: list[Path]
    features: Path | None

    @property
    def fps(self) -> float:
        return float(self.rows[0]["fps"]) if self.rows else 25.0

    def fingerprint(self) -> str:
        """Changes when the CSV, any keyframe file or the feature file changes."""
        h = hashlib.blake2b(self.csv_path.read_bytes(), digest_size=20)
        for p in self.images + ([self.features] if self.features else []):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()


def list_videos(folder: Path) -> list[Path]:
    return sorted((folder / "map-keyframes").glob("*.csv"))


def read_video(folder: Path, csv_path: Path) -> AicVideo:
    video_id = csv_path.stem
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{csv_path}: missing columns {', '.join(missing)}")
            rows = []
            for line_no, row in enumerate(reader, start=2):
                try:
                    rows.append({"n": int(row["n"]), "pts_time": float(row["pts_time"]),
                                 "fps": float(row["fps"]), "frame_idx": int(float(row["frame_idx"]))})
                except (TypeError, ValueError, OverflowError) as exc:
                    raise DatasetError(f"{csv_path}, line {line_no}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{csv_path}: not a text CSV ({exc})") from None
    except csv.Error as exc:
        raise DatasetError(f"{csv_path}: not readable CSV ({exc})") from None
    if not rows:
        raise DatasetError(f"{csv_path}: no keyframes listed")
    rows.sort(key=lambda r: r["n"])
    by_number: dict[int, Path] = {}
    for p in (folder / "keyframes" / video_id).glob("*"):
        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") and p.stem.isascii() and p.stem.isdigit():
            by_number[int(p.stem)] = p
    missing_images = [r["n"] for r in rows if r["n"] not in by_number]
    if missing_images:
        raise DatasetError(f"{csv_path}: keyframe images missing for n={missing_images[:5]}")
    features = next((p for p in sorted(folder.glob(f"clip-features*/{video_id}.npy"))), None)
    return AicVideo(video_id, csv_path, rows, [by_number[r["n"]] for r in rows], features)


MODEL_FILE = "MODEL"  # beside clip-features-*/<video>.npy: 'MODEL PRETRAINED' (open_clip names) that made them


def declared_model(features_dir: Path) -> tuple[str, str] | None:
    """Which open_clip model and weights made a dataset's features, as its MODEL file says (None: not said)."""
    try:
        words = (features_dir / MODEL_FILE).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    return (words[0], words[1]) if len(words) == 2 else None


def precomputed_features(video: AicVideo, dim: int) -> np.ndarray | None:
    """The shipped features, L2-normalised, when their shape fits; None means recompute."""
    if video.features is None:
        return None
    try:
        feats = np.load(video.features, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError):
        return None
    if feats.ndim != 2 or feats.shape != (len(video.rows), dim):
        return None
    feats = np.asarray(feats, dtype=np.float32)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
