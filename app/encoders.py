"""Feature extractors behind one small interface: `encode_images(frames) -> (N, D)` unit vectors.

CLIP comes from open_clip. Weights are resolved before any work starts, and a missing
network becomes one clear sentence that names `--pretrained PATH`.
"""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from app.text_onnx import Search, TextEngine
    from app.vectors import IndexBundle

DEFAULT_MODEL = "ViT-B-32"
RANDOM_WEIGHTS_SEED = 20261125  # `--pretrained none` builds this one network in every process


class WeightsUnavailable(RuntimeError):
    """The pretrained weights could not be found locally nor downloaded."""


class WeightsMismatch(WeightsUnavailable):
    """This process loaded other weights than those the collection's vectors were made with."""


def register_model_configs(path: str | os.PathLike | None) -> None:
    """Make extra open_clip model configs (a JSON file or a folder of them) known by name."""
    import open_clip

    for p in filter(None, [path, os.environ.get("FRAMEFINDER_MODEL_CONFIG")]):
        open_clip.add_model_config(Path(p))


def default_pretrained(model: str) -> str:
    """A LAION-2B tag for the model where open_clip has one, else its first tag, else 'none'."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    laion = [t for t in tags if t.startswith("laion2b")]
    if laion:
        return sorted(laion, key=lambda t: ("s34b" not in t, t))[0]
    return tags[0] if tags else "none"


def weights_hint(model: str, tag: str | None = None) -> str:
    """Which file to fetch for `--pretrained PATH`: open_clip's Hugging Face repository and file name."""
    import open_clip

    tag = tag if tag and tag.lower() != "none" else default_pretrained(model)
    cfg = open_clip.get_pretrained_cfg(model, tag) if tag != "none" else {}
    repo = (cfg.get("hf_hub") or "").strip("/")
    if repo:
        return (f"open_clip's {model} / {tag} weights: the file open_clip_pytorch_model.bin (or "
                f"open_clip_model.safetensors) from the Hugging Face repository {repo}")
    if cfg.get("url"):
        return f"open_clip's {model} / {tag} weights: {cfg['url']}"
    return f"an open_clip checkpoint file for {model}"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the network's weights (a sample of every tensor), recorded with the index so
    that a process holding another network (other weights, other random draw) is refused."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        h.update(name.encode())
        # sampled, then cast to fp16: the fp16 copy of a model on CUDA hashes like its fp32 original
        h.update(flat[:: max(1, flat.numel() // 64)][:64].half().cpu().numpy().tobytes())
    return h.hexdigest()


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """Whether the hub's name resolves within a few seconds (a lookup in a worker thread: no process-wide
    socket timeout is changed)."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, host, 443).result(timeout=timeout_s)
        return True
    except (OSError, FutureTimeout):
        return False
    finally:
        pool.shutdown(wait=False)


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """huggingface_hub uses its local cache only inside (it fails at once instead of retrying a dead network)."""
    import huggingface_hub.constants as hub

    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's global generator at `seed` inside, restored after (other code keeps its randomness)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class ClipEncoder:
    """An open_clip model and its preprocessing; fp16 on CUDA, fp32 on CPU."""

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str | None = None, device: str = "auto",
                 batch_size: int = 32, precision: str = "auto", text_engine: str = "torch") -> None:
        """`text_engine`: auto, torch, onnx or onnx-int8 (app.text_onnx); torch by default, so only a caller that
        serves queries pays for an ONNX export."""
        import open_clip

        from app.text_onnx import check_engine

        check_engine(text_engine)  # a bad name fails before minutes of loading

        if model not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model '{model}' (see open_clip.list_models(), "
                             f"or add a config with --model-config)")
        self.model_name = model
        self.pretrained = (pretrained or default_pretrained(model)).strip()
        self.device = resolve_device(device)
        self.batch_size = batch_size
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, not '{precision}'")
        self.precision = precision  # auto: fp16 weights on CUDA, fp32 on the CPU; bf16: CPU autocast (opt-in)
        weights = None if self.pretrained.lower() == "none" else self.pretrained
        if weights is not None and not Path(weights).is_file():
            if weights not in open_clip.list_pretrained_tags_by_model(model):
                raise WeightsUnavailable(f"'{weights}' is neither a pretrained tag of {model} nor a file; "
                                         f"pass --pretrained PATH to a local checkpoint file "
                                         f"({weights_hint(model)}).")
        offline = weights is not None and not Path(weights).is_file() and not _hub_reachable()
        weights_precision = "fp16" if self.device.startswith("cuda") and precision == "auto" else "fp32"
        try:
            # Random weights are drawn from a fixed seed, so the indexer, the server and every later
            # run build the very same network (the fingerprint recorded with the index checks it).
            with _seeded(RANDOM_WEIGHTS_SEED) if weights is None else _hub_offline(offline):
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=weights, device=self.device, precision=weights_precision)
        except RuntimeError as exc:
            if "download" in str(exc).lower() or "hub" in str(exc).lower():
                raise WeightsUnavailable(
                    f"Could not download the '{weights}' weights for {model} (no network?); "
                    f"pass --pretrained PATH to a local checkpoint file ({weights_hint(model, weights)}), or "
                    f"--pretrained none for random weights to try Framefinder without them (image search "
                    f"works, text search means nothing).") from exc
            raise
        self.fingerprint = weights_fingerprint(self.model)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        self.context_length = int(getattr(self.model, "context_length", 77) or 77)
        self.dim = int(open_clip.get_model_config(model)["embed_dim"])
        self.int8_overlap: float | None = None  # onnx-int8's measured top-10 overlap with fp32, once checked
        self.text = self.torch_text()
        self.use_text_engine(text_engine)

    def torch_text(self, full_length: bool = False) -> TextEngine:
        """The torch text path: on the tokens up to end-of-text where that is exact (app.text_onnx)."""
        from app.text_onnx import TorchText, short_text_reason

        short = not full_length and short_text_reason(self.model) is None
        return TorchText(self.model, self.device, self._autocast, short)

    def use_text_engine(self, engine: str, search: Search | None = None, cache_dir: Path | None = None) -> str:
        """Encode text with `engine` (auto, torch, onnx, onnx-int8) from now on, or with the best that loads
        (a logged sentence says why); the ONNX session is made here, warm, not on a query. `search` over the
        collection's index is what onnx-int8's ranking check needs. Returns the engine in use."""
        from app.text_onnx import choose

        self.text, self.int8_overlap = choose(self, engine, self.torch_text(), search, cache_dir)
        return self.text.name

    @property
    def text_engine(self) -> str:
        """The engine text goes through now: torch, torch-full, onnx or onnx-int8."""
        return self.text.name

    def _autocast(self):
        """On CUDA, fp16 autocast: open_clip's fp16 weights convert only the matrix and convolution weights (the class
        and positional embeddings stay fp32), so without autocast the first convolution meets a float32 picture
        and fails (found on an H200). On the CPU, fp32 unless bf16 is asked for: measured on 2 cores
        (bench/encoders.py) bf16 autocast made images slower (21 vs 32 img/s) and text only 22% faster
        (27 vs 35 ms) with a top-10 overlap of 0.97 with fp32, which is not the same ranking."""
        if self.device.startswith("cuda") and self.precision == "auto":
            return torch.autocast("cuda", dtype=torch.float16)
        if self.precision == "bf16" and not self.device.startswith("cuda"):
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def identity(self) -> tuple[str, str]:
        """What the index must record: vectors of different models are never mixed."""
        return self.model_name, self.pretrained

    def encode_images(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """RGB PIL images or RGB uint8 arrays -> float32 (N, D), each row L2-normalised."""
        dtype = next(self.model.parameters()).dtype
        with self._autocast():
            return encode_image_batches(images, self.preprocess, lambda b: self.model.encode_image(b.to(dtype)),
                                        self.device, self.batch_size, self.dim)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> float32 (N, D) unit vectors, through the engine chosen (use_text_engine)."""
        return self.text.encode(self.tokenizer(list(texts)))


def encoder_for_index(meta: dict, device: str = "auto", text_engine: str = "torch",
                      index: IndexBundle | None = None) -> ClipEncoder:
    """The encoder an index was built with (model, weights, and the very same network), its text going through
    `text_engine` (onnx-int8 is checked against fp32's rankings over `index`, and refused when they differ)."""
    encoder = ClipEncoder(meta["model"], meta["pretrained"], device)
    recorded = meta.get("weights_fingerprint")
    if not recorded and encoder.pretrained.lower() == "none":
        raise WeightsMismatch("this collection was indexed with random weights by an older version that drew a "
                              "different network in every process, so its vectors match nothing; index it again "
                              "(offline.py index PATHS --pretrained none, into an empty --data-dir).")
    if recorded and recorded != encoder.fingerprint:
        raise WeightsMismatch(
            f"the index was built with {meta['model']} / {meta['pretrained']} weights whose fingerprint is "
            f"{recorded}, but this process loaded weights with fingerprint {encoder.fingerprint} (the checkpoint "
            f"file changed, or another open_clip/torch version drew other random weights); re-index into a new "
            f"--data-dir, or restore the original weights file.")
    if text_engine != "torch":  # after the fingerprint check: no export for weights that will be refused
        search = None
        if index is not None:
            from app import vectors

            def search(queries: np.ndarray, k: int) -> np.ndarray:
                return vectors.search(index, queries, k)[1]
        encoder.use_text_engine(text_engine, search)
    return encoder


def encode_image_batches(images: Sequence[Image.Image | np.ndarray], preprocess, forward, device: str,
                         batch_size: int, dim: int) -> np.ndarray:
    """The batching every image encoder shares: preprocess each batch, run `forward`, normalise rows."""
    out = []
    for start in range(0, len(images), batch_size):
        pils = [im if isinstance(im, Image.Image) else Image.fromarray(im) for im in images[start:start + batch_size]]
        batch = torch.stack([preprocess(p.convert("RGB")) for p in pils]).to(device)
        with torch.inference_mode():
            out.append(normalise_rows(forward(batch)))
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def normalise_rows(feats: torch.Tensor) -> np.ndarray:
    arr = feats.float().cpu().numpy()
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return (arr / np.maximum(norms, 1e-12)).astype(np.float32)
