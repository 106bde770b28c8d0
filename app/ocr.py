"""Reading on-screen text: lines of text with their boxes, from a picture's pixels.

The default is RapidOCR (PP-OCRv4 detection and recognition, ONNX Runtime), whose models ship inside the
`rapidocr-onnxruntime` wheel: it runs with no network. `--ocr-model DIR` loads other PP-OCR ONNX models from a
folder instead (a stronger or a language-specific recogniser): det.onnx, rec.onnx, optionally cls.onnx, and the
recogniser's character list as keys.txt.
"""
from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_OCR_MODEL = "rapidocr"
MIN_CONFIDENCE = 0.5  # lines the recogniser is less sure of are not kept
MAX_LINES = 200  # per picture: a page of small print is cut, the largest lines first
MAX_LINE_CHARS = 2000
DET_SIDE = 960  # the detector sees the picture with its longer side at most this (PaddleOCR's default)
UNCLIP = 2.0  # how far a detected box is grown before recognition; PP-OCR's 1.6 often loses the spaces of a
# Latin line ("EMERGENCYEXIT"), which makes its words unsearchable


class OcrUnavailable(RuntimeError):
    """The OCR model named cannot be loaded here; the message names the flag to use."""


@dataclass(frozen=True)
class OcrLine:
    text: str
    confidence: float
    box: tuple[float, float, float, float]  # x, y, w, h as fractions of the picture


class OcrModel:
    """One loaded OCR model; `name` marks what it read (a different model reads everything again)."""

    def __init__(self, spec: str = DEFAULT_OCR_MODEL) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:  # pragma: no cover - it is in requirements.txt
            raise OcrUnavailable(f"OCR needs the rapidocr-onnxruntime package ({exc}); install it, or use "
                                 f"--no-ocr") from None
        params: dict = {"max_side_len": DET_SIDE, "det_limit_side_len": DET_SIDE, "det_limit_type": "max",
                        "det_unclip_ratio": UNCLIP, "print_verbose": False, "text_score": MIN_CONFIDENCE}
        if spec == DEFAULT_OCR_MODEL:
            self.name = "rapidocr-ppocrv4"
        else:
            folder = Path(spec)
            files = {"det": folder / "det.onnx", "rec": folder / "rec.onnx", "keys": folder / "keys.txt"}
            missing = [p.name for p in files.values() if not p.is_file()]
            if missing:
                raise OcrUnavailable(f"--ocr-model {spec}: the folder must hold det.onnx, rec.onnx and keys.txt "
                                     f"(cls.onnx optional); missing {', '.join(missing)}")
            params.update({"det_model_path": str(files["det"]), "rec_model_path": str(files["rec"]),
                           "rec_keys_path": str(files["keys"])})
            if (folder / "cls.onnx").is_file():
                params["cls_model_path"] = str(folder / "cls.onnx")
            digest = hashlib.sha256()
            for path in sorted(folder.glob("*.onnx")) + [files["keys"]]:
                digest.update(path.read_bytes())
            self.name = f"ppocr-{digest.hexdigest()[:12]}"
        try:
            self._engine = RapidOCR(**params)
        except Exception as exc:  # onnxruntime refuses a damaged or foreign model file
            raise OcrUnavailable(f"--ocr-model {spec} does not load: {exc}") from None

    def read(self, rgb: np.ndarray) -> list[OcrLine]:
        """The text lines of an RGB picture, top to bottom."""
        height, width = rgb.shape[:2]
        if height < 8 or width < 8:
            return []
        # return_word_box: the recogniser's character positions also put back the spaces it often drops in Latin
        # lines ("EMERGENCYEXIT")
        result, _ = self._engine(np.ascontiguousarray(rgb[:, :, ::-1]), return_word_box=True)
        lines = []
        for points, text, score, *_ in result or []:
            # NFKC: full-width forms ("！", "１") as their plain letters, which every font has
            text = " ".join(unicodedata.normalize("NFKC", str(text)).split())[:MAX_LINE_CHARS]
            if not text or not np.isfinite(score) or score < MIN_CONFIDENCE:
                continue
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
            x1, y1 = min(float(width), max(xs)), min(float(height), max(ys))
            if x1 <= x0 or y1 <= y0:
                continue
            lines.append(OcrLine(text, float(score), (x0 / width, y0 / height, (x1 - x0) / width,
                                                      (y1 - y0) / height)))
        lines.sort(key=lambda line: -line.box[2] * line.box[3])
        return sorted(lines[:MAX_LINES], key=lambda line: (round(line.box[1], 2), line.box[0]))


def load_ocr_model(spec: str | None) -> OcrModel:
    return OcrModel(spec or DEFAULT_OCR_MODEL)
