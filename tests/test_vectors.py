"""Every index type on small clustered data: same top results as exact search (within the recall
target), filters applied inside the search, persistence and reload, query-time knobs."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from app import vectors


def clustered(n: int, dim: int = 64, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """A mixture of Gaussians on the unit sphere, like embeddings (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + 0.9 * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def data():
    base = clustered(6000)
    queries = clustered(50, seed=1)
    exact = (queries @ base.T).argsort(axis=1)[:, ::-1][:, :10]
    return base, queries, exact


def bundle_of(index, params, base=None) -> vectors.IndexBundle:
    ids = np.stack([np.zeros(index.ntotal, np.int64), np.arange(index.ntotal)], axis=1)
    rerank = base.astype(np.float16) if params["type"] == "ivfpq" else None
    return vectors.IndexBundle(index, ids, {"params": params, "dim": index.d}, "test", rerank)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_index_type_finds_the_exact_top_10(kind, data):
    base, queries, exact = data
    index, params = vectors.build_index(base, kind, {"nlist": 32, "nprobe": 16} if kind.startswith("ivf") else None)
    assert params["type"] == kind
    scores, rows = vectors.search(bundle_of(index, params, base), queries, 10)
    assert recall(rows, exact) >= (1.0 if kind == "flat" else 0.95)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    if kind == "ivfpq":  # re-ranked scores are exact inner products (float16 storage)
        np.testing.assert_allclose(scores, np.take_along_axis(queries @ base.T, rows, axis=1), atol=2e-3)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_filter_applies_before_top_k(kind, data):
    base, queries, _ = data
    index, params = vectors.build_index(base, kind, {"nlist": 32, "nprobe": 32} if kind.startswith("ivf") else None)
    allowed = np.arange(0, len(base), 7)  # one vector in seven
    _, rows = vectors.search(bundle_of(index, params, base), queries[:5], 20, allowed=allowed)
    assert rows.shape == (5, 20) and np.all(rows >= 0), "a filtered query still gets K results"
    assert np.all(rows % 7 == 0)


def test_query_time_knobs_change_the_work_done(data):
    base, queries, exact = data
    index, params = vectors.build_index(base, "ivf", {"nlist": 64, "nprobe": 1})
    bundle = bundle_of(index, params)
    narrow = recall(vectors.search(bundle, queries, 10)[1], exact)
    wide = recall(vectors.search(bundle, queries, 10, params={"nprobe": 64})[1], exact)
    assert wide == 1.0 and narrow < wide


def test_generation_persists_params_and_rerank_store(tmp_path, data):
    base, queries, exact = data
    index, params = vectors.build_index(base, "ivfpq", {"nlist": 32, "nprobe": 16, "rerank": 200})
    ids = np.stack([np.zeros(len(base), np.int64), np.arange(len(base))], axis=1)
    vectors.save_generation(tmp_path, index, ids, {"params": params, "dim": base.shape[1]}, rerank=base)
    loaded = vectors.load_current(tmp_path)
    assert loaded.meta["params"]["rerank"] == 200 and loaded.index.nprobe == 16
    assert loaded.rerank.dtype == np.float16 and loaded.rerank.shape == base.shape
    assert recall(vectors.search(loaded, queries, 10)[1], exact) >= 0.95


def test_auto_picks_by_size_and_memory():
    assert vectors.choose_type(30_000, 512) == "flat"
    assert vectors.choose_type(50_000, 512) == "ivf"  # exact search at 50k takes about 10 ms on two cores
    assert vectors.choose_type(300_000, 512) == "ivf"  # 600 MB of float32 fits 1 GB
    assert vectors.choose_type(1_000_000, 512) == "ivfpq"  # 2 GB would not
    assert vectors.choose_type(1_000_000, 512, memory_budget=4 << 30) == "ivf"


def test_a_generation_of_segments_reads_as_one_store(tmp_path, data):
    base, queries, exact = data
    index, params = vectors.build_index(base, "ivfpq", {"nlist": 32, "nprobe": 16, "rerank": 200})
    ids = np.stack([np.zeros(len(base), np.int64), np.arange(len(base))], axis=1)
    vectors.save_generation(tmp_path, index, ids, {"params": params}, rerank=[base[:4000], [base[4000:5000],
                                                                                          base[5000:]]])
    loaded = vectors.load_current(tmp_path)
    assert [s["rows"] for s in loaded.meta["rerank_segments"]] == [4000, 2000]
    assert isinstance(loaded.rerank, vectors.Segments) and loaded.rerank.shape == base.shape
    np.testing.assert_allclose(vectors.vector_of(loaded, 4500), base[4500], atol=2e-3)
    assert recall(vectors.search(loaded, queries, 10)[1], exact) >= 0.95


def test_generations_of_one_rerank_file_still_load(tmp_path, data):
    """Generations written before segments keep a single vectors.f16.npy and no tags."""
    base, queries, exact = data
    index, params = vectors.build_index(base, "ivfpq", {"nlist": 32, "nprobe": 16, "rerank": 200})
    folder = tmp_path / "20250101T000000-000000000"
    folder.mkdir()
    faiss.write_index(index, str(folder / "index.faiss"))
    np.save(folder / "ids.npy", np.stack([np.zeros(len(base), np.int64), np.arange(len(base))], axis=1))
    np.save(folder / vectors.RERANK_FILE, base.astype(np.float16))
    (folder / "meta.json").write_text(json.dumps({"params": params}))
    (tmp_path / "CURRENT").write_text(folder.name)
    loaded = vectors.load_current(tmp_path)
    assert loaded.tags is None and vectors.segment_paths(loaded) == [folder / vectors.RERANK_FILE]
    assert recall(vectors.search(loaded, queries, 10)[1], exact) >= 0.95


def test_tombstones_never_come_back_and_k_results_still_do(data):
    base, queries, _ = data
    index, params = vectors.build_index(base, "hnsw")
    ids = np.stack([np.zeros(len(base), np.int64), np.arange(len(base))], axis=1)
    _, before = vectors.search(bundle_of(index, params), queries, 10)
    ids[np.unique(before), 0] = vectors.KIND_REMOVED  # every earlier hit is now removed
    bundle = vectors.IndexBundle(index, ids, {"params": params}, "test")
    _, rows = vectors.search(bundle, queries, 10)
    assert rows.shape == (len(queries), 10) and np.all(rows >= 0) and not np.isin(rows, before).any()
