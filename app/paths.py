"""Where Framefinder keeps its data: one place that knows the on-disk layout.

The layout follows the HCMC AI Challenge (keyframes/, map-keyframes/, feature/) so
that collections can be exchanged with other tools, plus shots/ and the FAISS files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DataLayout:
    """Paths of one collection. `data_dir` holds media-derived files, `instance_dir` the database."""

    data_dir: Path
    instance_dir: Path

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike | None) -> DataLayout:
        """Default: the project's static/ plus instance/ (as Flask does); else everything under DIR."""
        if data_dir is None:
            return cls(PROJECT_ROOT / "static", PROJECT_ROOT / "instance")
        root = Path(data_dir).resolve()
        return cls(root, root / "instance")

    @property
    def keyframes_dir(self) -> Path:
        return self.data_dir / "keyframes"

    @property
    def map_dir(self) -> Path:
        return self.data_dir / "map-keyframes"

    @property
    def shots_dir(self) -> Path:
        return self.data_dir / "shots"

    @property
    def feature_dir(self) -> Path:
        return self.data_dir / "feature"

    @property
    def image_feature_dir(self) -> Path:
        return self.feature_dir / "images"

    @property
    def index_dir(self) -> Path:
        return self.feature_dir / "index"

    @property
    def face_index_dir(self) -> Path:
        """The faces' own FAISS generations (their model and dimension, not CLIP's)."""
        return self.feature_dir / "faces-index"

    @property
    def regions_index_dir(self) -> Path:
        """The detected objects' CLIP vectors (objects as search targets)."""
        return self.feature_dir / "regions-index"

    @property
    def archives_dir(self) -> Path:
        return self.data_dir / "archives"

    @property
    def uploads_dir(self) -> Path:
        """Files uploaded from the browser: one folder per upload job, plus .partial/ for unfinished uploads."""
        return self.data_dir / "uploads"

    @property
    def proxies_dir(self) -> Path:
        """Browser-playable copies of videos that browsers cannot play as they are."""
        return self.data_dir / "proxies"

    def proxy_path(self, video_id: str) -> Path:
        return self.proxies_dir / f"{video_id}.mp4"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / ".framefinder.lock"

    @property
    def groundtruth_dir(self) -> Path:
        """Ground-truth sets the evaluation page offers (the operator's, and uploads below uploads/)."""
        return self.data_dir / "groundtruth"

    @property
    def baseline_feature_dir(self) -> Path:
        """Cached features of the torchvision baselines, one .npz per model and weights."""
        return self.feature_dir / "baselines"

    def ensure(self) -> None:
        for d in (self.keyframes_dir, self.map_dir, self.shots_dir, self.image_feature_dir,
                  self.index_dir, self.proxies_dir, self.instance_dir):
            d.mkdir(parents=True, exist_ok=True)

    def video_feature_path(self, video_id: str) -> Path:
        return self.feature_dir / f"{video_id}.npy"

    def keyframe_relpath(self, video_id: str, n: int) -> str:
        """Keyframe path relative to data_dir, n zero-padded to at least 3 digits."""
        return f"keyframes/{video_id}/{n:03d}.jpg"
