#!/usr/bin/env python3
"""Vector search at scale: every index type on one synthetic clustered collection, in one run.

Vectors are a mixture of Gaussians on the unit sphere (clusters of uneven size, within-
cluster cosine about 0.75, like CLIP embeddings), not uniform noise. For each index type:
build seconds, memory of the index, single-query latency p50/p95/p99, batch QPS, and
recall@10 / recall@100 against exact search. Searches go through app.vectors.search, the
code the server runs. Prints a table and, last, one JSON line.

    python bench/search.py --n 1000000 --dim 512
    python bench/search.py --n 1000000 --index ivfpq --nprobe 48
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import vectors  # noqa: E402

TYPES = ("flat", "ivf", "ivfpq", "hnsw")


def clustered(n: int, dim: int, clusters: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """Unit vectors around `clusters` centres with Zipf-like cluster sizes."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.6
    weights /= weights.sum()
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.choice(clusters, m, p=weights)] + 0.9 * rng.standard_normal((m, dim), np.float32) / np.sqrt(dim)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth,
                                                                                               strict=True)]))


def index_bytes(index: faiss.Index) -> int:
    with tempfile.NamedTemporaryFile() as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def run_one(kind: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, args, tmp: Path) -> dict:
    params = {k: v for k, v in (("nprobe", args.nprobe), ("efSearch", args.ef), ("rerank", args.rerank),
                                ("nlist", args.nlist)) if v is not None}
    t0 = time.perf_counter()
    index, used = vectors.build_index(base, kind, params)
    build_s = time.perf_counter() - t0
    rerank = None
    rerank_mb = 0.0
    if used["type"] == "ivfpq":
        np.save(tmp / "rerank.npy", base.astype(np.float16))
        rerank = np.load(tmp / "rerank.npy", mmap_mode="r")
        rerank_mb = rerank.nbytes / 2**20
    ids = np.stack([np.zeros(len(base), np.int64), np.arange(len(base), dtype=np.int64)], axis=1)
    bundle = vectors.IndexBundle(index, ids, {"params": used}, "bench", rerank)
    single = queries[:args.single]
    vectors.search(bundle, single[:5], args.k)  # warm caches
    latencies = []
    for q in single:
        t = time.perf_counter()
        vectors.search(bundle, q[None, :], args.k)
        latencies.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    _, rows = vectors.search(bundle, queries, 100)
    batch_s = time.perf_counter() - t
    return {"index": kind, "params": {k: v for k, v in used.items() if k != "type"},
            "build_s": round(build_s, 1), "memory_mb": round(index_bytes(index) / 2**20, 1),
            "rerank_store_mb": round(rerank_mb, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p95_ms": round(float(np.percentile(latencies, 95)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3),
            "qps_batch": round(len(queries) / batch_s, 1),
            "recall_at_10": round(recall_at(rows, truth, 10), 4),
            "recall_at_100": round(recall_at(rows, truth, 100), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--queries", type=int, default=1000, help="batch queries (recall and QPS)")
    p.add_argument("--single", type=int, default=300, help="single queries timed for p50/p95/p99")
    p.add_argument("--k", type=int, default=100, help="top-K of the timed single queries")
    p.add_argument("--index", action="append", choices=TYPES, help="run only this type (repeatable)")
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--ef", type=int, default=None, help="HNSW efSearch")
    p.add_argument("--rerank", type=int, default=None, help="IVF-PQ candidates re-ranked exactly")
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="FAISS threads (default: all cores)")
    args = p.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = clustered(args.n, args.dim, args.clusters, seed=0)
    queries = clustered(args.queries, args.dim, args.clusters, seed=1)
    gen_s = time.perf_counter() - t0
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(base)
    _, truth = exact.search(queries, 100)
    del exact
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.index or TYPES:
            row = run_one(kind, base, queries, truth, args, Path(tmp))
            results.append(row)
            print(f"{kind:>6}: build {row['build_s']:>7.1f} s  memory {row['memory_mb']:>8.1f} MB "
                  f"(+{row['rerank_store_mb']:.0f} MB float16 on disk)  p50 {row['p50_ms']:>7.2f}  "
                  f"p95 {row['p95_ms']:>7.2f}  p99 {row['p99_ms']:>7.2f} ms  {row['qps_batch']:>8.1f} QPS  "
                  f"R@10 {row['recall_at_10']:.4f}  R@100 {row['recall_at_100']:.4f}  {row['params']}",
                  flush=True)
    print(json.dumps({"bench": "search", "n": args.n, "dim": args.dim, "threads": faiss.omp_get_max_threads(),
                      "gpus": vectors.gpu_count(), "data_s": round(gen_s, 1), "results": results}))


if __name__ == "__main__":
    main()
