"""Face detection and recognition behind one small interface: `detect(rgb)` then `embed(rgb, faces)`.

The default is dlib (weights shipped by the `face-recognition-models` package, so it runs without network): a HOG
face detector, a 5-point landmark predictor and the 128-d ResNet recognition model, which embeds a crop aligned on
the landmarks. `insightface:PATH` loads InsightFace (SCRFD detector + ArcFace, 512-d) from a model folder the user
has (for example buffalo_l unpacked), through the `insightface` package and onnxruntime.

Vectors are unit length, so FAISS inner product is cosine similarity. Each model says which similarity means
"same person" (`match_threshold`), the default floor of a face search.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

DEFAULT_FACE_MODEL = "dlib"
MAX_FACES = 50  # per picture: the largest ones are kept (a crowd shot would otherwise cost seconds per frame)
MIN_FACE_PX = 20  # a face smaller than this (side, in the analysed picture) has too few pixels to embed
DETECT_SIDE = 1280  # pictures are analysed at most this large (keyframes are at most 1280 by default)
THUMB_SIDE = 112


class FaceModelUnavailable(RuntimeError):
    """The face model cannot be loaded here; the message names the setting that fixes it."""


@dataclass
class DetectedFace:
    box: tuple[float, float, float, float]  # x, y, w, h in the analysed picture's pixels
    score: float  # the detector's confidence (model-specific scale)
    shape: Any = None  # landmarks, in the model's own form

    @property
    def side(self) -> float:
        return min(self.box[2], self.box[3])


class FaceModel(Protocol):
    name: str  # what the collection records (mixing two models' vectors is refused)
    dim: int
    match_threshold: float  # cosine similarity from which two faces are taken as the same person

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        """Faces in an HxWx3 uint8 RGB array, largest first."""

    def embed(self, rgb: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """(len(faces), dim) float32 unit vectors, one per face, in order."""



def _dlib_models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelUnavailable("the dlib face model needs the face-recognition-models package "
                                   "(pip install -r requirements.txt), or use --no-faces")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class DlibFaceModel:
    """dlib's HOG detector (upsampled once: faces from about 40 px) and 128-d ResNet embedding of an aligned chip."""

    name = "dlib-resnet-v1"
    dim = 128
    # dlib's own rule is Euclidean distance 0.6 between raw descriptors (norm about 1.4): cosine about 0.91. Measured:
    # same person 0.948 and up, different people 0.838 and below on tests/data/faces, up to 0.906 among the six people
    # of InsightFace's t1.jpg group photo.
    match_threshold = 0.93

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise FaceModelUnavailable("the dlib face model needs the dlib-bin package "
                                       "(pip install -r requirements.txt), or use --no-faces") from None
        models = _dlib_models_dir()
        self._dlib = dlib
        # dlib's detector may not be shared between threads (its scanner keeps state): one per thread, built in
        # microseconds; the landmark predictor may be shared; the recognition network may not, so embedding takes a
        # lock. Detection, the slow part, runs in parallel (dlib lets go of the GIL).
        self._local = threading.local()
        self._embed_lock = threading.Lock()
        self._landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._recognizer = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self.fingerprint = _fingerprint(models / "dlib_face_recognition_resnet_model_v1.dat")

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = self._dlib.get_frontal_face_detector()
        rects, scores, _ = detector.run(np.ascontiguousarray(rgb), 1, 0.0)
        faces = [self._face(rgb, r, s) for r, s in zip(rects, scores, strict=True)]
        return sorted(faces, key=lambda f: -f.box[2] * f.box[3])

    def _face(self, rgb: np.ndarray, rect, score: float) -> DetectedFace:
        h, w = rgb.shape[:2]
        left, top = max(rect.left(), 0), max(rect.top(), 0)
        right, bottom = min(rect.right() + 1, w), min(rect.bottom() + 1, h)
        rect = self._dlib.rectangle(left, top, right - 1, bottom - 1)
        return DetectedFace((float(left), float(top), float(right - left), float(bottom - top)), float(score),
                            self._landmarks(rgb, rect))

    def embed(self, rgb: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        shapes = self._dlib.full_object_detections()
        for f in faces:
            shapes.append(f.shape)
        with self._embed_lock:
            found = self._recognizer.compute_face_descriptor(np.ascontiguousarray(rgb), shapes)
        return _unit(np.array(found))


class InsightFaceModel:
    """InsightFace's detector and ArcFace recogniser from a local model folder (the `insightface` package runs them
    on onnxruntime; nothing is downloaded)."""

    dim = 512
    match_threshold = 0.40  # ArcFace cosine: about 0.3-0.45 is the usual same-person boundary

    def __init__(self, path: str) -> None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FaceModelUnavailable(f"--face-model insightface:{path}: no such folder (give the folder that holds "
                                       f"the detection and recognition .onnx files, e.g. buffalo_l)")
        try:
            from insightface.app import FaceAnalysis
        except ImportError:
            raise FaceModelUnavailable("--face-model insightface:PATH needs the insightface and onnxruntime "
                                       "packages (pip install insightface onnxruntime)") from None
        root = folder.parent.parent
        if folder.parent.name != "models":  # FaceAnalysis reads ROOT/models/NAME and would download anything else
            root = Path(tempfile.mkdtemp(prefix="insightface-"))
            (root / "models").mkdir()
            (root / "models" / folder.name).symlink_to(folder.resolve())
        self._app = FaceAnalysis(name=folder.name, root=str(root), allowed_modules=["detection", "recognition"],
                                 providers=["CPUExecutionProvider"])
        self._app.prepare(ctx_id=-1, det_size=(640, 640))
        self.name = f"insightface-{folder.name}"
        onnx = sorted(folder.glob("*.onnx"))
        self.fingerprint = _fingerprint(*onnx)

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        found = self._app.get(np.ascontiguousarray(rgb[:, :, ::-1]))
        faces = [DetectedFace((float(f.bbox[0]), float(f.bbox[1]), float(f.bbox[2] - f.bbox[0]),
                               float(f.bbox[3] - f.bbox[1])), float(f.det_score), f) for f in found]
        return sorted(faces, key=lambda f: -f.box[2] * f.box[3])

    def embed(self, rgb: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        vectors = [f.shape.normed_embedding for f in faces]
        return _unit(np.array(vectors).reshape(len(faces), self.dim))


def _fingerprint(*files: Path) -> str:
    """Which weights: a hash of the files' sizes and first megabyte (the model files are large)."""
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()


_loaded: dict[str, FaceModel] = {}


def load_face_model(spec: str = DEFAULT_FACE_MODEL) -> FaceModel:
    """`dlib` (shipped weights), or `insightface:PATH` (a local InsightFace model folder). Loaded once per process."""
    if spec not in _loaded:
        if spec == "dlib":
            _loaded[spec] = DlibFaceModel()
        elif spec.startswith("insightface:"):
            _loaded[spec] = InsightFaceModel(spec.split(":", 1)[1])
        else:
            raise FaceModelUnavailable(f"unknown --face-model {spec!r}: use dlib, or insightface:PATH")
    return _loaded[spec]


def face_model_available(spec: str = DEFAULT_FACE_MODEL) -> bool:
    """Whether `spec` loads here (the default of --faces)."""
    try:
        load_face_model(spec)
    except FaceModelUnavailable:
        return False
    return True


def analysed(picture: Image.Image, side: int = DETECT_SIDE) -> tuple[np.ndarray, float]:
    """The RGB array a model looks at (at most `side` pixels long) and its scale from the picture's pixels."""
    picture = picture.convert("RGB")
    scale = min(1.0, side / max(picture.size))
    if scale < 1.0:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.BILINEAR)
    return np.asarray(picture), scale


def thumbnail(rgb: np.ndarray, face: DetectedFace, side: int = THUMB_SIDE) -> bytes:
    """A square JPEG of the face with a margin, for pages (the People page shows hundreds)."""
    x, y, w, h = face.box
    cx, cy, half = x + w / 2, y + h / 2, max(w, h) * 0.75
    crop = Image.fromarray(rgb).crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
    crop = crop.resize((side, side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    crop.save(out, format="JPEG", quality=85)
    return out.getvalue()
