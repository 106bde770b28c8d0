"""The classic baseline: a torchvision ImageNet backbone as feature extractor (image queries only).

`tv:vgg16` gives the 4096-d fc6 activation (after its ReLU), as the original simple
image search used; `tv:resnet50` the 2048-d globally pooled features. Same interface as
ClipEncoder's image side: `encode_images(frames) -> (N, D)` unit vectors.
"""
from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from PIL import Image

from app.encoders import WeightsUnavailable, encode_image_batches, resolve_device

BASELINES = ("tv:vgg16", "tv:resnet50")
WEIGHT_FLAG = "--baseline-weights"


def is_baseline(model: str) -> bool:
    return model.startswith("tv:")


def _architecture(name: str):
    from torchvision import models

    if name == "tv:vgg16":
        return models.vgg16, models.VGG16_Weights.IMAGENET1K_V1, 4096
    if name == "tv:resnet50":
        return models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1, 2048
    raise ValueError(f"unknown baseline '{name}' (one of {', '.join(BASELINES)})")


def _weights_file(url: str, given: str | None) -> Path | None:
    """A local file for the weights: the path given, a folder holding torchvision's file name, or
    torchvision's own cache. None when it must be downloaded."""
    filename = url.rsplit("/", 1)[-1]
    if given:
        p = Path(given)
        if p.is_dir():
            p = p / filename
        if not p.is_file():
            raise WeightsUnavailable(f"no weights file at {p}; pass {WEIGHT_FLAG} PATH to a local {filename}")
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return cached if cached.is_file() else None


class TorchvisionEncoder:
    """An ImageNet backbone cut before its classifier; frames resized to 224x224 whole (no crop,
    so a query box is seen entirely)."""

    def __init__(self, name: str, weights: str | None = None, device: str = "auto", batch_size: int = 16) -> None:
        from torchvision import transforms

        build, default, self.dim = _architecture(name)
        self.model_name = name
        self.device = resolve_device(device)
        self.batch_size = batch_size
        if weights is not None and weights.lower() == "none":
            model, self.pretrained = build(weights=None), "none"
        else:
            local = _weights_file(default.url, weights)
            self.pretrained = str(local) if weights else default.name
            model = build(weights=None)
            model.load_state_dict(self._state_dict(default, local))
        if name == "tv:vgg16":
            model.classifier = model.classifier[:2]  # fc6 + ReLU
        else:
            model.fc = torch.nn.Identity()
        self.model = model.eval().to(self.device)
        self.preprocess = transforms.Compose([
            transforms.Resize((224, 224)), transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])

    @staticmethod
    def _state_dict(default, local: Path | None) -> dict:
        if local is not None:
            try:
                return torch.load(local, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means the same to the user
                raise WeightsUnavailable(f"{local} is not a readable {default.url.rsplit('/', 1)[-1]} "
                                         f"checkpoint ({exc})") from exc
        try:
            socket.getaddrinfo("download.pytorch.org", 443)
            return default.get_state_dict(progress=False)
        except (OSError, URLError) as exc:
            raise WeightsUnavailable(
                f"Could not download torchvision's {default.url.rsplit('/', 1)[-1]} (no network?); "
                f"pass {WEIGHT_FLAG} PATH to a local copy of it.") from exc

    @property
    def identity(self) -> tuple[str, str]:
        return self.model_name, self.pretrained

    def encode_images(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        return encode_image_batches(images, self.preprocess, self.model, self.device, self.batch_size, self.dim)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        raise ValueError(f"{self.model_name} is an image model: it answers image queries only")
