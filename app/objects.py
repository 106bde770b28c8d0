"""Objects: a torchvision detector at ingest, its boxes stored as machine boxes, and each object's crop embedded
by CLIP into a regions index (objects as search targets).

The detector's weights come as CLIP's do: torchvision's (from its cache, else downloaded), a local file
(`--detector-weights PATH`), or random weights drawn from a fixed seed (`--detector-weights none`: the same network
in every process; its boxes mean nothing, like `--pretrained none`). Detections belong to a keyframe or an image and
are found anew only when it is; annotators' boxes are another table and never touched.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from app.media import Problem
from app.models import Detection, DetectionData, Image, Keyframe, Setting, Video
from app.paths import DataLayout
from app.picture_pass import PicturePass
from app.row_index import refresh_row_index

DEFAULT_DETECTOR = "fasterrcnn_mobilenet_v3_large_fpn"
RANDOM_WEIGHTS_SEED = 20261126
MAX_OBJECTS = 30  # per picture, best first
MIN_CROP_PX = 8  # a box thinner than this has nothing for CLIP to see
KIND_REGION = 3  # ids.npy kind of a detected object
log = logging.getLogger(__name__)


class DetectorUnavailable(RuntimeError):
    """The detector cannot be loaded here; the message names the flag that fixes it."""


def coco_categories() -> list[str]:
    """COCO's class names by torchvision label id (0 is the background; 'N/A' marks unused ids)."""
    from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_FPN_Weights

    return list(FasterRCNN_MobileNet_V3_Large_FPN_Weights.DEFAULT.meta["categories"])


DEFAULT_WEIGHTS_FILE = {DEFAULT_DETECTOR: "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth"}  # torchvision 0.28's


def default_weights_cached(name: str) -> bool:
    """Whether torchvision's default weights of `name` are in its cache already (no network is tried). The default
    detector's file name is known here, so every index run does not pay for importing torchvision.models (4 s)."""
    filename = DEFAULT_WEIGHTS_FILE.get(name)
    if filename is None:
        import torchvision

        try:
            filename = torchvision.models.get_model_weights(name).DEFAULT.url.rsplit("/", 1)[-1]
        except (ValueError, AttributeError):
            return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / filename).is_file()


def detector_names() -> list[str]:
    import torchvision
    from torchvision.models import detection

    return sorted(torchvision.models.list_models(module=detection))


@dataclass
class Found:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x, y, w, h in the picture's pixels


class Detector:
    """A torchvision detection model with COCO's classes; `detect(pictures)` -> per picture, its objects."""

    def __init__(self, name: str = DEFAULT_DETECTOR, weights: str | None = None, threshold: float = 0.5,
                 device: str = "cpu") -> None:
        import torchvision

        if name not in detector_names():
            raise DetectorUnavailable(f"unknown --detector {name!r}; torchvision has: {', '.join(detector_names())}")
        if not 0.0 <= threshold <= 1.0:
            raise DetectorUnavailable(f"--object-threshold must be between 0 and 1, not {threshold}")
        self.device = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.categories = coco_categories()
        self.threshold = threshold
        kwargs = {"box_score_thresh": threshold, "box_detections_per_img": MAX_OBJECTS} \
            if name.startswith(("fasterrcnn", "maskrcnn")) else {"score_thresh": threshold} \
            if name.startswith(("retinanet", "fcos", "ssd")) else {}
        builder = torchvision.models.get_model_builder(name)
        if weights is not None and weights.lower() == "none":
            # random weights: COCO's 80 real classes only (torchvision's 91 ids include unused 'N/A' ones, which an
            # untrained head favours as much as any)
            self.categories = [c for c in self.categories if c != "N/A"]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = builder(weights=None, weights_backbone=None, num_classes=len(self.categories), **kwargs)
            tag = "none"
        elif weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise DetectorUnavailable(f"--detector-weights {weights}: no such file")
            model = builder(weights=None, weights_backbone=None, num_classes=len(self.categories), **kwargs)
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as exc:  # noqa: BLE001 - not a checkpoint, another network, damaged: one sentence
                why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
                raise DetectorUnavailable(f"--detector-weights {weights} are not {name} weights with COCO's "
                                          f"{len(self.categories)} classes ({why})") from None
            tag = "file-" + hashlib.sha1(path.read_bytes()[: 1 << 20]).hexdigest()[:12]
        else:
            from app.encoders import _hub_reachable

            if not default_weights_cached(name) and not _hub_reachable("download.pytorch.org"):
                raise DetectorUnavailable(self._no_weights(name, "not in torchvision's cache, and no network"))
            try:
                model = builder(weights="DEFAULT", **kwargs)
            except Exception as exc:  # noqa: BLE001 - a broken download or cache: one clear sentence
                raise DetectorUnavailable(self._no_weights(name, type(exc).__name__)) from None
            tag = "default"
        self.model = model.eval().to(self.device)
        self.name = f"{name}:{tag}"[:64]
        self.random = tag == "none"

    @staticmethod
    def _no_weights(name: str, why: str) -> str:
        return (f"the {name} weights could not be had ({why}). Put the file in ~/.cache/torch/hub/checkpoints/, or "
                f"give --detector-weights PATH, or --detector-weights none for random weights, or --no-detector.")

    def detect(self, pictures: list[PILImage.Image]) -> list[list[Found]]:
        from torchvision.transforms.functional import pil_to_tensor

        batch = [pil_to_tensor(p.convert("RGB")).float().div(255).to(self.device) for p in pictures]
        with torch.inference_mode():
            outputs = self.model(batch)
        found = []
        for out in outputs:
            objects = []
            for (x1, y1, x2, y2), score, label in zip(out["boxes"].tolist(), out["scores"].tolist(),
                                                       out["labels"].tolist(), strict=True):
                name = self.categories[label] if 0 < label < len(self.categories) else "N/A"
                if name != "N/A" and score >= self.threshold and x2 - x1 >= 1 and y2 - y1 >= 1:
                    objects.append(Found(name, float(score), (x1, y1, x2 - x1, y2 - y1)))
            found.append(sorted(objects, key=lambda o: -o.score)[:MAX_OBJECTS])
        return found


@dataclass
class ObjectSummary:
    pictures: int = 0
    objects: int = 0
    regions: int = 0
    index_size: int = 0
    seconds: float = 0.0
    failed: list[Problem] = field(default_factory=list)

    def line(self) -> str:
        return (f"objects: {self.objects} in {self.pictures} pictures scanned, {self.regions} regions embedded, "
                f"regions index {self.index_size} vectors, {self.seconds:.1f} s")


def check_detector(session: Session, detector: Detector) -> None:
    """Record the detector; a collection's objects from another detector are detected again (they are machine boxes:
    nothing of a person's is lost)."""
    known = session.get(Setting, "detector")
    if known is not None and known.value != detector.name:
        session.execute(Video.__table__.update().values(objects_model=None))
        session.execute(Image.__table__.update().values(objects_model=None))
    session.merge(Setting(key="detector", value=detector.name))
    session.commit()


class ObjectPass(PicturePass):
    """Detection on every keyframe and image not yet scanned by this detector; each object's crop into CLIP; the
    regions index refreshed. Commits per video (a killed run resumes; app.picture_pass)."""

    mark, row_model, data_key, failure = "objects_model", Detection, "detection_id", "objects not detected"

    def __init__(self, session: Session, layout: DataLayout, detector: Detector, encoder, options,
                 progress=None) -> None:
        super().__init__(session, layout, detector.name)
        self.detector = detector
        self.encoder = encoder
        self.options = options
        self.progress = progress
        self.summary = ObjectSummary()
        self.summary.failed = self.failed

    def run(self) -> ObjectSummary:
        start = time.monotonic()
        self.scan()
        identity = {"model": self.encoder.identity[0], "pretrained": self.encoder.identity[1],
                    "weights_fingerprint": self.encoder.fingerprint, "dim": self.encoder.dim}
        self.summary.index_size = refresh_row_index(self.session, self.layout.regions_index_dir, KIND_REGION,
                                                    DetectionData.detection_id, DetectionData.vector, identity,
                                                    self.options.retrain)
        self.summary.seconds = time.monotonic() - start
        return self.summary

    def analyse_keyframe(self, keyframe: Keyframe, video: Video) -> list[list]:
        with PILImage.open(self.layout.data_dir / keyframe.image_path) as pic:
            pic.load()
            return self._objects(pic.convert("RGB"), video.width / pic.width if video.width else 1.0)

    def analyse_image(self, image: Image) -> list[list]:
        with PILImage.open(image.path) as pic:
            pic.load()
            return self._objects(pic.convert("RGB"), 1.0)

    def rows_of(self, found: list[list]) -> list[tuple[Detection, DetectionData | None]]:
        self.summary.pictures += 1
        self.summary.objects += len(found)
        self.summary.regions += sum(data is not None for _, data in found)
        if self.progress is not None:
            self.progress.update("objects", 1)
        return [tuple(r) for r in found]

    def _objects(self, picture: PILImage.Image, to_source: float) -> list[list]:
        """Detections in source pixels, each with the CLIP vector of its crop (None for a box too thin to see)."""
        found = self.detector.detect([picture])[0]
        crops, rows = [], []
        for f in found:
            x, y, w, h = f.box
            row = Detection(label=f.label, score=f.score, x=x * to_source, y=y * to_source, w=w * to_source,
                            h=h * to_source, model=self.detector.name, status="new")
            rows.append([row, None])
            if min(w, h) >= MIN_CROP_PX:
                crops.append((len(rows) - 1, picture.crop((int(x), int(y), int(x + w), int(y + h)))))
        if crops:
            vecs = self.encoder.encode_images([c for _, c in crops])
            for (i, _), vec in zip(crops, vecs, strict=True):
                rows[i][1] = DetectionData(vector=np.asarray(vec, np.float32).tobytes())
        return rows
