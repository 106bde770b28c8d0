"""The torchvision baselines: feature shapes with random weights, and a clear message for missing weights."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.baselines import TorchvisionEncoder
from app.encoders import WeightsUnavailable


@pytest.mark.parametrize(("name", "dim"), [("tv:vgg16", 4096), ("tv:resnet50", 2048)])
def test_baseline_gives_unit_vectors_of_its_documented_size_random_weights(name, dim):
    encoder = TorchvisionEncoder(name, "none", "cpu")
    frames = [Image.new("RGB", (64, 48), (200, 30, 30)), np.full((30, 40, 3), 90, np.uint8)]
    feats = encoder.encode_images(frames)
    assert feats.shape == (2, dim) and feats.dtype == np.float32
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="image queries only"):
        encoder.encode_text(["a dog"])


def test_missing_weights_file_names_the_flag(tmp_path):
    with pytest.raises(WeightsUnavailable, match="--baseline-weights PATH to a local resnet50-0676ba61.pth"):
        TorchvisionEncoder("tv:resnet50", str(tmp_path), "cpu")
    (tmp_path / "resnet50-0676ba61.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="is not a readable resnet50-0676ba61.pth checkpoint"):
        TorchvisionEncoder("tv:resnet50", str(tmp_path), "cpu")
