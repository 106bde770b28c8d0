"""FAISS index files: build, save as an immutable generation, load, search.

Each build goes to its own folder `feature/index/<generation>/` (index.faiss, ids.npy,
meta.json) and becomes current only when the pointer file `CURRENT` is atomically
replaced, so a reader never sees a half-written index and a crash keeps the previous one.
ids.npy row i = (kind, database id) for FAISS id i; kind 0 is a keyframe, 1 an image.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from app import atomic

KIND_KEYFRAME = 0
KIND_IMAGE = 1
INDEX_TYPES = ("auto", "flat", "ivf", "ivfpq", "hnsw")
EXACT_BELOW = 100_000  # exact search stays under ~10 ms per query up to here (2 cores, 512-d)
MEMORY_BUDGET = 1 << 30  # auto keeps the in-memory index under this many bytes
log = logging.getLogger(__name__)
RERANK_FILE = "vectors.f16.npy"


@dataclass
class IndexBundle:
    index: faiss.Index
    ids: np.ndarray  # (N, 2) int64: kind, database id
    meta: dict
    generation: str
    rerank: np.ndarray | None = None  # (N, D) float16, memory-mapped: exact re-ranking for IVF-PQ
    gpu_index: faiss.Index | None = None  # a GPU copy for unfiltered searches, when faiss-gpu has a GPU

    @property
    def size(self) -> int:
        return int(self.index.ntotal)


def choose_type(n: int, dim: int = 512, memory_budget: int = MEMORY_BUDGET) -> str:
    """Exact while fast enough; IVF-Flat while float32 vectors fit the memory budget; IVF-PQ
    (64 bytes per vector, re-ranked from float16 on disk) beyond."""
    if n < EXACT_BELOW:
        return "flat"
    return "ivf" if n * dim * 4 <= memory_budget else "ivfpq"


def default_nlist(n: int) -> int:
    """About 2*sqrt(n) lists, a power of two, with at least 39 training points per list."""
    target = max(1, int(2 * math.sqrt(max(n, 1))))
    nlist = 1 << max(0, round(math.log2(target)))
    return max(1, min(nlist, n // 39 or 1))


def build_index(vectors: np.ndarray, index_type: str = "auto", params: dict | None = None,
                memory_budget: int = MEMORY_BUDGET) -> tuple[faiss.Index, dict]:
    """Inner product on unit vectors (cosine). Returns the index and the parameters used, which are
    stored with it (and can be overridden per query: nprobe, efSearch, rerank)."""
    n, dim = vectors.shape if vectors.ndim == 2 else (0, 0)
    kind = choose_type(n, dim, memory_budget) if index_type == "auto" else index_type
    params = dict(params or {})
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "flat" or n == 0:
        kind = "flat"
        index = faiss.IndexFlatIP(max(dim, 1))
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.setdefault("M", 32), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.setdefault("efConstruction", 80)
        index.hnsw.efSearch = params.setdefault("efSearch", 256)  # recall@100 0.97 at 1M (0.93 at 128)
    elif kind in ("ivf", "ivfpq"):
        nlist = params.setdefault("nlist", default_nlist(n))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m = params.setdefault("pq_m", _pq_m(dim))
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            params.setdefault("rerank", 1000)
        train_n = min(n, params.setdefault("train_size", max(64 * nlist, 50_000)))
        sample = vectors[np.sort(np.random.default_rng(0).choice(n, train_n, replace=False))]
        index.train(sample)
        index.nprobe = params.setdefault("nprobe", min(nlist, 32))
    else:
        raise ValueError(f"unknown index type '{index_type}' (one of {', '.join(INDEX_TYPES)})")
    if n:
        index.add(vectors)
    params["type"] = kind
    return index, params


def _pq_m(dim: int) -> int:
    """Sub-quantizers (bytes per vector): at most 64 and at least 8 dimensions each, dividing dim
    (64 at 512-d: 64 MB per million vectors)."""
    for m in (64, 48, 32, 16, 8, 4, 2, 1):
        if dim % m == 0 and dim // m >= 8:
            return m
    return 1


def save_generation(index_dir: Path, index: faiss.Index, ids: np.ndarray, meta: dict,
                    rerank: np.ndarray | None = None) -> str:
    """Write a new generation and switch CURRENT to it; older generations but one are removed.
    `rerank` (the float32 vectors, for IVF-PQ) is kept as float16 beside the index."""
    index_dir.mkdir(parents=True, exist_ok=True)
    generation = f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000_000:09d}"
    tmp = index_dir / f".{generation}.tmp"
    tmp.mkdir()
    faiss.write_index(index, str(tmp / "index.faiss"))
    atomic.save_npy(tmp / "ids.npy", ids.astype(np.int64).reshape(-1, 2))
    atomic.write_text(tmp / "meta.json", json.dumps(meta, indent=2, sort_keys=True))
    if rerank is not None:
        np.save(tmp / RERANK_FILE, np.asarray(rerank, dtype=np.float16))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, index_dir / generation)
    atomic.write_text(index_dir / "CURRENT", generation + "\n")
    _remove_old(index_dir, keep={generation, _previous(index_dir, generation)})
    return generation


def _previous(index_dir: Path, current: str) -> str | None:
    older = sorted(p.name for p in index_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and p.name < current)
    return older[-1] if older else None


def _remove_old(index_dir: Path, keep: set[str | None]) -> None:
    for p in index_dir.iterdir():
        if p.is_dir() and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


class IndexDamaged(RuntimeError):
    """No generation of the index can be loaded; the message names the file and the fix."""


def pointer(index_dir: Path) -> str | None:
    """What CURRENT names (whether or not that generation is intact)."""
    try:
        return (index_dir / "CURRENT").read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def _generations(index_dir: Path, current: str | None) -> list[str]:
    """Every complete generation folder, the one CURRENT names first, then newest first."""
    try:
        names = sorted((p.name for p in index_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                       reverse=True)
    except FileNotFoundError:
        return []
    return ([current] if current in names else []) + [n for n in names if n != current]


def _read(path: Path, reader):
    """Read one file of a generation; a failure names the file."""
    try:
        return reader(path)
    except (RuntimeError, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path.name}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") \
            from None


def _load_generation(folder: Path, use_gpu: bool | None) -> IndexBundle:
    index = _read(folder / "index.faiss", lambda p: faiss.read_index(str(p)))
    ids = _read(folder / "ids.npy", lambda p: np.load(p, allow_pickle=False))
    meta = _read(folder / "meta.json", lambda p: json.loads(p.read_text()))
    if ids.ndim != 2 or ids.shape[1] != 2 or len(ids) != index.ntotal:
        raise ValueError(f"ids.npy holds {ids.shape} for an index of {index.ntotal} vectors")
    apply_search_params(index, meta.get("params", {}))
    rerank = np.load(folder / RERANK_FILE, mmap_mode="r") if (folder / RERANK_FILE).is_file() else None
    if rerank is None and isinstance(index, faiss.IndexIVF):
        index.make_direct_map()  # reconstruct() for "more like this" (8 bytes a vector)
    if rerank is not None and len(rerank) != index.ntotal:
        raise ValueError(f"{RERANK_FILE} holds {len(rerank)} rows for an index of {index.ntotal} vectors")
    return IndexBundle(index, ids, meta, folder.name, rerank, to_gpu(index) if use_gpu is not False else None)


def load_current(index_dir: Path, use_gpu: bool | None = None) -> IndexBundle | None:
    """The generation CURRENT names or, if it is missing or damaged, the newest intact one (a warning says
    which). None when there is no generation at all; IndexDamaged when none can be read."""
    problems = []
    current = pointer(index_dir)
    for name in _generations(index_dir, current):
        try:
            bundle = _load_generation(index_dir / name, use_gpu)
        except (RuntimeError, ValueError, OSError, EOFError) as exc:
            problems.append(f"{index_dir / name}/{str(exc).splitlines()[0][:300]}")
            continue
        if problems or name != current:
            log.warning("index generation %s is used because the current one cannot be loaded (%s); "
                        "offline.py index rebuilds it", name, "; ".join(problems) or "CURRENT names no folder")
        return bundle
    if problems:
        raise IndexDamaged(f"no generation of the index can be loaded ({problems[0]}); run `.venv/bin/python "
                           f"offline.py index PATHS` again to rebuild it from the catalogue and feature files")
    return None


def vector_of(bundle: IndexBundle, row: int) -> np.ndarray:
    """A stored vector of the generation: exact from flat and HNSW storage or IVF lists, float16 from the
    IVF-PQ re-rank store (its PQ codes are approximate)."""
    if bundle.rerank is not None:
        return np.asarray(bundle.rerank[row], dtype=np.float32)
    return bundle.index.reconstruct(int(row)).astype(np.float32)


def gpu_count() -> int:
    """GPUs faiss can use: 0 with faiss-cpu (which has no get_num_gpus) or without a GPU."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def to_gpu(index: faiss.Index) -> faiss.Index | None:
    """A GPU copy of flat and IVF indexes when faiss-gpu sees a GPU (HNSW has no GPU version)."""
    if gpu_count() == 0 or isinstance(index, faiss.IndexHNSW) or index.ntotal == 0:
        return None
    try:
        options = faiss.GpuMultipleClonerOptions()
        options.useFloat16 = True  # IVF-PQ lookup tables; needed for 64-byte codes
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except RuntimeError:  # a configuration the GPU code does not support: stay on the CPU
        return None


def apply_search_params(index: faiss.Index, params: dict) -> None:
    """Query-time knobs stored with the index (nprobe, efSearch)."""
    if "nprobe" in params and hasattr(index, "nprobe"):
        index.nprobe = int(params["nprobe"])
    if "efSearch" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["efSearch"])


def _search_parameters(index: faiss.Index, params: dict, allowed: np.ndarray | None):
    """Per-call parameters: the filter (an ID selector applied during the search, so filtered
    queries still get K results) and overrides of nprobe / efSearch."""
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64)) if allowed is not None else None
    if isinstance(index, faiss.IndexIVF):
        sp = faiss.SearchParametersIVF()
        sp.nprobe = int(params.get("nprobe", index.nprobe))
    elif isinstance(index, faiss.IndexHNSW):
        sp = faiss.SearchParametersHNSW()
        sp.efSearch = int(params.get("efSearch", index.hnsw.efSearch))
    else:
        sp = faiss.SearchParameters()
    if selector is not None:
        sp.sel = selector
    return sp, selector


def search(bundle: IndexBundle, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
           params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, FAISS ids) per query row; ids are -1 where fewer than k exist.

    `allowed`: FAISS ids a filter keeps (applied inside the search). `params`: per-query
    overrides of nprobe, efSearch and rerank (IVF-PQ candidates re-scored exactly from float16).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, bundle.index.d)
    if bundle.size == 0 or k <= 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    k = min(k, bundle.size)
    overrides = params or {}
    params = {**bundle.meta.get("params", {}), **overrides}
    fetch = k
    if bundle.rerank is not None:
        fetch = min(bundle.size, max(k, int(params.get("rerank", 0))))
    if allowed is None and bundle.gpu_index is not None and not overrides:
        scores, rows = bundle.gpu_index.search(queries, fetch)
    else:
        sp, _selector = _search_parameters(bundle.index, params, allowed)  # keep the selector alive
        scores, rows = bundle.index.search(queries, fetch, params=sp)
    if bundle.rerank is not None and fetch > 0:
        scores, rows = _rerank(bundle.rerank, queries, rows, k)
    return scores[:, :k], rows[:, :k]


def _rerank(store: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of the candidates, from the float16 copy of the vectors."""
    out_s = np.full((len(queries), k), -np.inf, np.float32)
    out_r = np.full((len(queries), k), -1, np.int64)
    for i, (q, cand) in enumerate(zip(queries, rows, strict=True)):
        cand = cand[cand >= 0]
        if cand.size == 0:
            continue
        order = np.argsort(cand)  # sorted reads from the memory map
        exact = np.asarray(store[cand[order]], dtype=np.float32) @ q
        best = np.argsort(-exact, kind="stable")[:k]
        out_s[i, :len(best)] = exact[best]
        out_r[i, :len(best)] = cand[order][best]
    return out_s, out_r
