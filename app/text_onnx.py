"""Text queries in milliseconds on the CPU: CLIP's text tower run only as far as it must, in ONNX Runtime.

Two things make a text query cheap without changing its vector:

- open_clip's CLIP text transformer has a causal attention mask and takes its output at the end-of-text token
  (argmax of the token ids), so nothing after that token can change the vector: running the transformer on the
  first EOT+1 tokens instead of all 77 gives the same numbers (a short query is about 8 tokens). Checked on the
  model (`short_text_reason`); any other text tower runs at full length.
- The short transformer is exported once to ONNX Runtime (dynamic batch and length axes) and cached as a file
  named by the model and its weights fingerprint, so a restart loads it instead of exporting again. Every file,
  fresh or cached, is checked against torch's own vectors before it is used; a file that fails is exported again,
  and a failed export (or no onnxruntime) leaves text on torch, said in one logged sentence.

int8 (`onnx-int8`, onnxruntime's dynamic quantisation) is only kept when its top-10 agrees with fp32's on at least
INT8_MIN_OVERLAP of the results of REAL_QUERIES over the collection's own index (`ranking_agreement`).
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

ENGINES = ("auto", "torch", "onnx", "onnx-int8")
EXPORT_VERSION = 2  # part of the cached file's name: a change to ShortText's graph makes new files
INT8_MIN_OVERLAP = 0.99  # top-10 overlap with fp32 an int8 model needs to be used
FP32_MIN_COSINE = 0.9999  # an fp32 ONNX file must give torch's vectors (measured: max abs diff ~3e-6)
INT8_MIN_COSINE = 0.99  # sanity only (a wrong or damaged file gives ~0); int8's real test is its rankings
PROBES = ("a photo of a dog", "Phở bò ở Hà Nội, một buổi sáng 🍜 über café",
          " ".join(["a long caption that goes on"] * 20))  # the last is cut at the context length
log = logging.getLogger("framefinder.text")

# Queries as people type them into a news/video collection: the int8 ranking check and bench/query.py use them.
REAL_QUERIES = tuple(q.strip() for q in """
a news anchor reading the news in a studio; a man in a suit speaking at a podium; a woman holding a microphone;
a crowd of people marching in the street; firefighters putting out a fire; a burning house at night;
a red car driving on a highway; a traffic jam in the city; motorbikes on a busy street in Hanoi;
a boat on a river; fishing boats in a harbour; a flooded street after heavy rain; snow covered mountains;
a beach with palm trees; a sunset over the sea; an aerial view of a city; a farmer working in a rice field;
cows grazing in a field; a dog running on the grass; a cat sleeping on a sofa; children playing football;
a football match in a stadium; a goalkeeper catching the ball; a tennis player serving; a basketball game;
people swimming in a pool; a cyclist racing on a road; a marathon runner crossing the line;
a doctor in a hospital; nurses wearing masks; a patient lying in a hospital bed; a scientist in a laboratory;
a teacher writing on a blackboard; students sitting in a classroom; a graduation ceremony;
a press conference with many journalists; soldiers in uniform; a military parade; a police car with lights;
an ambulance on the street; a helicopter flying over the city; an airplane taking off; a train at a station;
a bus stop with people waiting; a construction site with cranes; workers in a factory; a car assembly line;
a supermarket with shelves of food; a street market selling vegetables; a chef cooking in a kitchen;
a bowl of noodle soup; people eating at a restaurant; a wedding ceremony; a bride in a white dress;
a concert with a singer on stage; a man playing the guitar; traditional dancers in colourful costumes;
fireworks in the night sky; a temple with a golden roof; a church interior; a museum exhibition;
an old woman smiling; a baby crying; two men shaking hands; a politician giving a speech;
a meeting around a large table; a signing ceremony with flags; a computer screen showing a chart;
a smartphone in someone's hand; a robot in a factory; solar panels on a roof; wind turbines on a hill;
an oil tanker at sea; a forest fire with smoke; an earthquake damaged building; rescue workers digging;
a map of the weather forecast; a stock market board with numbers; a courtroom with a judge; a man in handcuffs;
a protest with banners; a queue of people at a counter; a library with books; a zoo with elephants;
a tiger in the jungle; birds flying over a lake; a horse race; a bridge over a river;
a lighthouse on the coast; a street at night with neon lights; people walking in the rain with umbrellas;
a man riding a bicycle; a woman reading a newspaper; a phone interview shown on screen; a map with a red arrow;
a close-up of a face; an empty road through the desert; hai người đàn ông bắt tay; cánh đồng lúa chín vàng;
phóng viên đưa tin tại hiện trường;
""".replace("\n", " ").split(";") if q.strip())


class TextEngine(Protocol):
    """Tokens (B, 77) in, unit vectors (B, D) float32 out."""

    name: str

    def encode(self, tokens: torch.Tensor) -> np.ndarray: ...


class EncoderLike(Protocol):
    model: Any
    tokenizer: Any
    model_name: str
    fingerprint: str
    device: str
    precision: str


def check_engine(value: str) -> str:
    """The engine name, or a ValueError that lists the choices (a typo must not silently mean torch)."""
    name = str(value).strip().lower()
    if name not in ENGINES:
        raise ValueError(f"text_engine must be one of {', '.join(ENGINES)}, not {str(value)[:40]!r}")
    return name


def unit_rows(arr: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, float32 (the index holds unit vectors and ranks by inner product)."""
    arr = np.asarray(arr, dtype=np.float32)
    return (arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# -- the short-sequence forward ---------------------------------------------------------------------------------
def short_text_reason(model: Any) -> str | None:
    """None when running the text transformer on the first EOT+1 tokens is exact for this model (an open_clip CLIP
    with a causal mask and argmax pooling), else why not (then text runs at full length)."""
    import open_clip
    import torch

    if type(model) is not open_clip.model.CLIP:
        return f"its model class is {type(model).__name__}, not open_clip's CLIP"
    if getattr(model, "text_pool_type", None) != "argmax":
        return f"it pools text with '{getattr(model, 'text_pool_type', None)}', not the end-of-text token (argmax)"
    mask = getattr(model, "attn_mask", None)
    pos = getattr(model, "positional_embedding", None)
    if mask is None or pos is None or mask.shape != (pos.shape[0], pos.shape[0]):
        return "its text transformer has no causal mask of the context length"
    causal = torch.full(mask.shape, float("-inf")).triu(1)
    if not torch.equal(mask.detach().float().cpu(), causal):
        return "its text attention mask is not causal"
    return None


def export_reason(model: Any) -> str | None:
    """None when ShortText can rebuild this model's text transformer for export (the standard open_clip block),
    else why not."""
    from open_clip.transformer import ResidualAttentionBlock
    from torch import nn

    reason = short_text_reason(model)
    if reason:
        return reason
    for block in model.transformer.resblocks:
        attn = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return f"its text blocks are {type(block).__name__}, not open_clip's ResidualAttentionBlock"
        if (type(attn) is not nn.MultiheadAttention or not attn._qkv_same_embed_dim or attn.bias_k is not None
                or attn.add_zero_attn):
            return "its text attention is not a plain nn.MultiheadAttention"
    return None


def trim_to_eot(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens up to and including the last row's furthest end-of-text token (argmax): what a causal tower with
    EOT pooling reads. Rows with an earlier EOT keep padding after it, which the causal mask keeps out."""
    length = int(tokens.argmax(dim=-1).max()) + 1
    return tokens[:, :length]


def torch_short_features(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text on the trimmed tokens, through the model's own modules (the torch engine's path)."""
    from open_clip.transformer import text_global_pool

    tokens = trim_to_eot(tokens)
    n = tokens.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = text_global_pool(model.ln_final(x), tokens, "argmax")
    return _project(model, x)


def _project(model: Any, x: torch.Tensor) -> torch.Tensor:
    import torch

    proj = model.text_projection
    if isinstance(proj, torch.nn.Linear):
        return proj(x)
    return x if proj is None else x @ proj


def _attention(attn: Any, x: torch.Tensor, mask: torch.Tensor, b: Any, n: Any) -> torch.Tensor:
    """nn.MultiheadAttention's self-attention on rows x (b*n, d), written out: the legacy ONNX exporter bakes the
    example's batch and length into nn.MultiheadAttention's own graph."""
    import torch.nn.functional as F

    d = x.shape[-1]
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).reshape(b, n, 3, heads, d // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (b, heads, n, d/heads)
    scores = (q * (d // heads) ** -0.5) @ k.transpose(-1, -2) + mask
    return attn.out_proj((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, d))


def short_text_module(model: Any) -> torch.nn.Module:
    """The text tower as a module of tokens (B, L) -> features (B, D), L = EOT+1, for export. Tokens are kept as
    rows (B*L, width) between the attentions, so each linear layer exports as one Gemm with its bias (measured:
    6% faster than (B, L, width) with a MatMul and an Add)."""
    import torch

    class ShortText(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            m = self.model
            b, n = tokens.shape
            width = m.positional_embedding.shape[-1]
            x = (m.token_embedding(tokens) + m.positional_embedding[:n]).reshape(-1, width)
            mask = m.attn_mask[:n, :n]
            for block in m.transformer.resblocks:
                x = x + block.ls_1(_attention(block.attn, block.ln_1(x), mask, b, n))
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            x = m.ln_final(x).reshape(b, n, width)
            eot = tokens.argmax(dim=-1)
            x = x.gather(1, eot[:, None, None].expand(-1, 1, width))[:, 0]  # (squeeze exports an If)
            return _project(m, x)

    return ShortText().eval()


# -- engines ----------------------------------------------------------------------------------------------------
class TorchText:
    """open_clip in torch: on the trimmed tokens when that is exact (`short`), else all of them."""

    def __init__(self, model: Any, device: str, autocast: Callable[[], Any], short: bool) -> None:
        self.model, self.device, self.autocast, self.short = model, device, autocast, short
        self.name = "torch" if short else "torch-full"

    def encode(self, tokens: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode(), self.autocast():
            tokens = tokens.to(self.device)
            feats = torch_short_features(self.model, tokens) if self.short else self.model.encode_text(tokens)
        return unit_rows(feats.float().cpu().numpy())


class OnnxText:
    """A warm ONNX Runtime session of ShortText; `source` says whether the file was cached or exported now."""

    def __init__(self, path: Path, name: str, source: str = "cache") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # no busy-waiting: in the server, spinning threads took the cores from the FAISS search and the request
        # that follow (measured at 1M: encode p50 15 ms without spinning, 18-19 ms with)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path, self.name, self.source = path, name, source

    def encode(self, tokens: torch.Tensor) -> np.ndarray:
        ids = trim_to_eot(tokens).cpu().numpy().astype(np.int64)
        return unit_rows(self.session.run(None, {"tokens": ids})[0])


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine of two sets of unit vectors."""
    return float(np.min(np.sum(a * b, axis=1)))


# -- the cached files -------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """Where exported text towers are kept: the user's cache (XDG_CACHE_HOME), shared by every collection that
    uses the same weights, like the downloaded weights themselves."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "framefinder" / "text-onnx"


def cache_path(cache_dir: Path, model_name: str, fingerprint: str, int8: bool = False) -> Path:
    """One file per model, weights fingerprint, export version and precision."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)
    return Path(cache_dir) / f"{safe}-{fingerprint}-text-v{EXPORT_VERSION}{'-int8' if int8 else ''}.onnx"


def export_onnx(model: Any, path: Path) -> None:
    """ShortText to ONNX with dynamic batch and length axes (torch's TorchScript exporter: the newer one needs
    onnxscript, which Framefinder does not install)."""
    import warnings

    import torch

    example = torch.arange(10, dtype=torch.long).reshape(2, 5)  # batch 2, length 5: no axis traced as a constant 1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(short_text_module(model), (example,), str(path), dynamo=False, input_names=["tokens"],
                          output_names=["features"], opset_version=17,
                          dynamic_axes={"tokens": {0: "batch", 1: "length"}, "features": {0: "batch"}})


def quantize_int8(source: Path, path: Path) -> None:
    """onnxruntime's dynamic int8 quantisation (weights int8 per channel, activations quantised per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_not_from_quantization)  # it logs a line per tensor on the root logger
    try:
        quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(_not_from_quantization)


def _not_from_quantization(record: logging.LogRecord) -> bool:
    return f"onnxruntime{os.sep}quantization" not in record.pathname


def _checked(path: Path, name: str, reference: np.ndarray, tokens: torch.Tensor, source: str) -> OnnxText:
    """Open the file and compare its vectors with torch's; ValueError when they differ."""
    engine = OnnxText(path, name, source)
    cosine = min_cosine(engine.encode(tokens), reference)
    floor = INT8_MIN_COSINE if name == "onnx-int8" else FP32_MIN_COSINE
    if not cosine >= floor:
        raise ValueError(f"its vectors differ from torch's (cosine {cosine:.6f} < {floor})")
    return engine


def load_or_build(encoder: EncoderLike, cache_dir: Path, int8: bool = False) -> OnnxText:
    """The ONNX text engine from the cache, or exported (and quantised) now and cached. A cached file that cannot
    be opened or gives other vectors is built again; an error here means ONNX cannot be used."""
    import onnxruntime  # noqa: F401 - missing: say so before exporting anything

    tokens = encoder.tokenizer(list(PROBES))
    reference = TorchText(encoder.model, "cpu", _no_autocast, short=False).encode(tokens)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fp32 = cache_path(cache_dir, encoder.model_name, encoder.fingerprint)
    path = cache_path(cache_dir, encoder.model_name, encoder.fingerprint, int8) if int8 else fp32
    name = "onnx-int8" if int8 else "onnx"
    if path.is_file():
        try:
            return _checked(path, name, reference, tokens, "cache")
        except Exception as exc:  # noqa: BLE001 - any damage to a cache file: build it again
            log.warning("the cached ONNX text model %s cannot be used (%s); building it again", path,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            path.unlink(missing_ok=True)
    if int8 and not fp32.is_file():
        load_or_build(encoder, cache_dir)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    t0 = time.perf_counter()
    try:
        if int8:
            quantize_int8(fp32, tmp)
        else:
            export_onnx(encoder.model, tmp)
        engine = _checked(tmp, name, reference, tokens, "exported")
        os.replace(tmp, path)  # whole files only: another process may be reading or writing the same name
    finally:
        tmp.unlink(missing_ok=True)
    engine.path = path
    log.info("text tower of %s exported to ONNX (%s) in %.1f s: %s", encoder.model_name, name,
             time.perf_counter() - t0, path)
    return engine


def _no_autocast():
    import contextlib

    return contextlib.nullcontext()


# -- choosing an engine -----------------------------------------------------------------------------------------
Search = Callable[[np.ndarray, int], np.ndarray]  # unit query vectors (Q, D), k -> row ids (Q, k), -1 for none


def top_k_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each row of `a`'s ids (ignoring -1) that `b`'s same row also holds."""
    shares = []
    for row_a, row_b in zip(np.asarray(a), np.asarray(b), strict=True):
        want = {int(i) for i in row_a if i >= 0}
        if want:
            shares.append(len(want & {int(i) for i in row_b if i >= 0}) / len(want))
    return float(np.mean(shares)) if shares else 1.0


def ranking_agreement(reference: TextEngine, candidate: TextEngine, tokenizer: Any, search: Search,
                      queries: Sequence[str] = REAL_QUERIES, k: int = 10) -> float:
    """Top-k overlap of two engines' rankings of the same queries over the same index: what users would see
    change (a cosine of 0.999 per vector says little about whether the top 10 stays the top 10)."""
    tokens = tokenizer(list(queries))
    return top_k_overlap(search(reference.encode(tokens), k), search(candidate.encode(tokens), k))


def choose(encoder: EncoderLike, asked: str, torch_engine: TextEngine, search: Search | None = None,
           cache_dir: Path | None = None) -> tuple[TextEngine, float | None]:
    """The engine `asked` names where it can be used, else the next best (one logged sentence says why), and the
    int8 top-10 overlap when it was measured."""
    asked = check_engine(asked)
    if asked == "torch":
        return torch_engine, None
    reason = None
    if not encoder.device.startswith("cpu"):
        reason = f"ONNX Runtime runs text on the CPU and this model runs on {encoder.device}"
    elif encoder.precision == "bf16":
        reason = "bf16 was asked for, which the ONNX models do not run"
    else:
        reason = export_reason(encoder.model)
    if reason:
        if asked != "auto" or encoder.device.startswith("cpu"):
            log.warning("text engine %s not used: %s; text queries run on %s", asked, reason, torch_engine.name)
        return torch_engine, None
    try:
        fp32 = load_or_build(encoder, cache_dir or default_cache_dir())
    except Exception as exc:  # noqa: BLE001 - no onnxruntime, a failed export, an unwritable cache: torch works
        log.warning("text engine %s not used: ONNX export or load failed (%s: %s); text queries run on torch",
                    asked, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return torch_engine, None
    if asked != "onnx-int8":
        return fp32, None
    if search is None:
        log.warning("text engine onnx-int8 not used: it needs the collection's index to check its rankings "
                    "against fp32; text queries run on onnx fp32")
        return fp32, None
    try:
        int8 = load_or_build(encoder, cache_dir or default_cache_dir(), int8=True)
    except Exception as exc:  # noqa: BLE001 - quantisation failed: fp32 is the exact engine anyway
        log.warning("text engine onnx-int8 not used: quantisation failed (%s: %s); text queries run on onnx fp32",
                    type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return fp32, None
    overlap = ranking_agreement(fp32, int8, encoder.tokenizer, search)
    if overlap < INT8_MIN_OVERLAP:
        log.warning("text engine onnx-int8 refused: its top-10 agrees with fp32 on %.3f of %d real queries over "
                    "this index (needs %.2f); text queries run on onnx fp32", overlap, len(REAL_QUERIES),
                    INT8_MIN_OVERLAP)
        return fp32, overlap
    log.info("text engine onnx-int8: top-10 overlap with fp32 %.3f on %d real queries", overlap, len(REAL_QUERIES))
    return int8, overlap
