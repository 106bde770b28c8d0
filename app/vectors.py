"""FAISS index files: build, save as an immutable generation, load, search.

Each build goes to its own folder `feature/index/<generation>/` (index.faiss, ids.npy,
meta.json) and becomes current only when the pointer file `CURRENT` is atomically
replaced, so a reader never sees a half-written index and a crash keeps the previous one.
ids.npy row i = (kind, database id) for FAISS id i; kind 0 is a keyframe, 1 an image.
"""
from __future__ import annotations

import json
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
INDEX_TYPES = ("auto", "flat", "ivf", "hnsw", "ivfpq")


@dataclass
class IndexBundle:
    index: faiss.Index
    ids: np.ndarray  # (N, 2) int64: kind, database id
    meta: dict
    generation: str

    @property
    def size(self) -> int:
        return int(self.index.ntotal)


def choose_type(n: int) -> str:
    """Exact search while it is fast enough; graph search beyond (see issue on scale)."""
    return "flat" if n < 200_000 else "hnsw"


def build_index(vectors: np.ndarray, index_type: str = "auto", params: dict | None = None) -> tuple[faiss.Index, dict]:
    """Inner product on unit vectors (cosine). Returns the index and the parameters used."""
    n, dim = vectors.shape if vectors.ndim == 2 else (0, 0)
    kind = choose_type(n) if index_type == "auto" else index_type
    params = dict(params or {})
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "flat" or n == 0:
        kind = "flat"
        index = faiss.IndexFlatIP(max(dim, 1))
    elif kind == "hnsw":
        m = params.setdefault("M", 32)
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.setdefault("efConstruction", 80)
        index.hnsw.efSearch = params.setdefault("efSearch", 64)
    elif kind in ("ivf", "ivfpq"):
        nlist = params.setdefault("nlist", max(1, min(int(4 * math.sqrt(n)), n // 39 or 1)))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m = params.setdefault("pq_m", 64 if dim % 64 == 0 else 8)
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).permutation(n)[: max(nlist * 39, min(n, 100_000))]]
        index.train(sample)
        index.nprobe = params.setdefault("nprobe", min(nlist, 16))
    else:
        raise ValueError(f"unknown index type '{index_type}' (one of {', '.join(INDEX_TYPES)})")
    if n:
        index.add(vectors)
    params["type"] = kind
    return index, params


def save_generation(index_dir: Path, index: faiss.Index, ids: np.ndarray, meta: dict) -> str:
    """Write a new generation and switch CURRENT to it; older generations but one are removed."""
    index_dir.mkdir(parents=True, exist_ok=True)
    generation = f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000_000:09d}"
    tmp = index_dir / f".{generation}.tmp"
    tmp.mkdir()
    faiss.write_index(index, str(tmp / "index.faiss"))
    atomic.save_npy(tmp / "ids.npy", ids.astype(np.int64).reshape(-1, 2))
    atomic.write_text(tmp / "meta.json", json.dumps(meta, indent=2, sort_keys=True))
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


def current_generation(index_dir: Path) -> str | None:
    try:
        name = (index_dir / "CURRENT").read_text().strip()
    except FileNotFoundError:
        return None
    return name if name and (index_dir / name).is_dir() else None


def load_current(index_dir: Path) -> IndexBundle | None:
    generation = current_generation(index_dir)
    if generation is None:
        return None
    folder = index_dir / generation
    index = faiss.read_index(str(folder / "index.faiss"))
    ids = np.load(folder / "ids.npy", allow_pickle=False)
    meta = json.loads((folder / "meta.json").read_text())
    apply_search_params(index, meta.get("params", {}))
    return IndexBundle(index, ids, meta, generation)


def apply_search_params(index: faiss.Index, params: dict) -> None:
    """Query-time knobs stored with the index (nprobe, efSearch)."""
    if "nprobe" in params and hasattr(index, "nprobe"):
        index.nprobe = int(params["nprobe"])
    if "efSearch" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["efSearch"])


def search(bundle: IndexBundle, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, FAISS ids) per query row; ids are -1 where fewer than k exist."""
    k = max(1, min(k, bundle.size or 1))
    if bundle.size == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    return bundle.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
