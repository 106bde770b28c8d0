#!/usr/bin/env python3
"""Vector search at scale: every index type on one synthetic clustered collection, in one run.

Vectors are a mixture of Gaussians on the unit sphere (clusters of uneven size, within-
cluster cosine about 0.75, like CLIP embeddings), not uniform noise. Each index type is built
the way `offline.py index` builds it (app.index_build: training, then the query knobs tuned to
the recall target on the collection's own vectors) and loaded the way the server loads it. For
each: build seconds (tuning included), memory of the index, single-query latency p50/p95/p99,
batch QPS, recall@10 / recall@100 against exact search on separate queries, and the seconds to
add 1,000 new vectors through the incremental path (a new generation, no retraining). `auto`
marks the type the server would pick at this size. Prints a table and, last, one JSON line.

`--backend faiss,milvus` runs the same vectors through Milvus as well (`--vectors milvus`, app.milvus_store: a Milvus
Lite file in the work dir unless --milvus-uri names a server), one row per `--milvus-index` type, measured through the
same vectors.search seam the server uses (the Milvus knobs tuned as FAISS's are), and says which index types that
Milvus builds.

    python bench/search.py --n 1000000 --dim 512
    python bench/search.py --n 1000000 --index ivfpq --nprobe 48
    python bench/search.py --n 100000 --backend faiss,milvus --index flat --index hnsw
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import index_build, milvus_store, vectors  # noqa: E402

TYPES = ("flat", "ivf", "ivfpq", "hnsw")
MILVUS_TYPES = ("FLAT", "HNSW")  # measured by default with --backend milvus
PROBED = ("FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "AUTOINDEX", "DISKANN", "SCANN", "GPU_CAGRA")
IDENTITY = {"model": "bench", "pretrained": "synthetic", "weights_fingerprint": None}


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


def catalogue(parts: list[np.ndarray]) -> index_build.Catalogue:
    """Images 0..n-1 whose vectors are the rows of `parts` one after another (no copy of them)."""
    starts = np.cumsum([0] + [len(p) for p in parts])

    def load(positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), parts[0].shape[1]), np.float32)
        seg = np.searchsorted(starts, positions, side="right") - 1
        for s in np.unique(seg):
            out[seg == s] = parts[s][positions[seg == s] - starts[s]]
        return out

    n = int(starts[-1])
    ids = np.stack([np.full(n, vectors.KIND_IMAGE, np.int64), np.arange(n, dtype=np.int64)], axis=1)
    return index_build.Catalogue(ids, np.zeros(n, np.int64), load, f"bench-{n}")


def run_one(kind: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, added: np.ndarray, args,
            folder: Path, target: milvus_store.Target | None = None) -> dict:
    """One index type built as offline.py builds it and searched as the server searches; with a target, a Milvus
    collection of that index type instead of a FAISS index."""
    params = {k: v for k, v in (("nprobe", args.nprobe), ("efSearch", args.ef), ("rerank", args.rerank),
                                ("nlist", args.nlist), ("recall_target", args.recall_target)) if v is not None}
    identity = {**IDENTITY, "dim": base.shape[1]}
    t0 = time.perf_counter()
    index_build.sync_index(folder, None, catalogue([base]), base.shape[1], kind, identity, params=params,
                           target=target)
    build_s = time.perf_counter() - t0
    bundle = vectors.load_current(folder)
    used, tuning = bundle.meta["params"], bundle.meta["tuning"]
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
    found = np.where(rows >= 0, bundle.ids[rows, 1], -1)  # generation rows -> positions in base
    index_file = folder / bundle.generation / "index.faiss"
    row = {"backend": bundle.backend, "index": kind,
           "params": {k: v for k, v in used.items() if k not in ("type", "recall_target", "index")},
           "build_s": round(build_s, 1), "tune_s": tuning.get("seconds", 0.0),
           "tuned_recall_at_100": tuning.get("recall"),
           "memory_mb": round(index_file.stat().st_size / 2**20, 1) if index_file.exists() else None,
           "rerank_store_mb": round(bundle.rerank.nbytes / 2**20, 1) if bundle.rerank is not None else 0.0,
           "p50_ms": round(float(np.percentile(latencies, 50)), 3),
           "p95_ms": round(float(np.percentile(latencies, 95)), 3),
           "p99_ms": round(float(np.percentile(latencies, 99)), 3),
           "qps_batch": round(len(queries) / batch_s, 1),
           "recall_at_10": round(recall_at(found, truth, 10), 4),
           "recall_at_100": round(recall_at(found, truth, 100), 4)}
    del bundle
    if len(added):
        t = time.perf_counter()
        outcome = index_build.sync_index(folder, index_build.load_for_update(folder), catalogue([base, added]),
                                         base.shape[1], kind, identity, target=target)
        row["add_s"] = round(time.perf_counter() - t, 2)
        row["add_rebuilt"] = outcome.rebuilt
        after = vectors.load_current(folder)
        _, top = vectors.search(after, added[:20], 1)
        row["added_found_top1"] = round(float(np.mean(after.ids[top[:, 0], 1] == np.arange(len(base),
                                                                                          len(base) + 20))), 2)
    return row


def probe_types(uri: str, work: Path, dim: int) -> dict[str, str]:
    """Which index types this Milvus builds: each on 2,000 vectors, written, flushed and loaded afresh as offline.py
    does before publishing ("ok", or Milvus's refusal)."""
    found = {}
    data = clustered(2000, dim, 20, seed=3)
    for index_type in PROBED:
        folder = work / f"probe-{index_type}"
        try:
            index_build.sync_index(folder, None, catalogue([data]), dim, "auto", {**IDENTITY, "dim": dim},
                                   target=milvus_store.Target(uri, index_type))
            found[index_type] = "ok"
        except milvus_store.MilvusRefused as exc:
            found[index_type] = str(exc).split(": ", 1)[-1].split(";")[0][:160]
        milvus_store.drop_all(folder)
        shutil.rmtree(folder, ignore_errors=True)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--queries", type=int, default=1000, help="batch queries (recall and QPS)")
    p.add_argument("--single", type=int, default=300, help="single queries timed for p50/p95/p99")
    p.add_argument("--k", type=int, default=100, help="top-K of the timed single queries")
    p.add_argument("--index", action="append", choices=("auto", *TYPES),
                   help="run only this type (repeatable; auto: the one auto picks at --n)")
    p.add_argument("--nprobe", type=int, default=None, help="fixed instead of tuned")
    p.add_argument("--ef", type=int, default=None, help="HNSW efSearch, fixed instead of tuned")
    p.add_argument("--rerank", type=int, default=None,
                   help="IVF-PQ candidates re-ranked exactly, fixed instead of tuned")
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--recall-target", type=float, default=None,
                   help=f"recall@100 the tuning aims at (default {index_build.RECALL_TARGET})")
    p.add_argument("--add", type=int, default=1000, help="vectors added through the incremental path (0: skip)")
    p.add_argument("--threads", type=int, default=None, help="FAISS threads (default: all cores)")
    p.add_argument("--work-dir", type=Path, default=None, help="where generations are written (default: a temp dir)")
    p.add_argument("--backend", default="faiss",
                   help="faiss, milvus, or faiss,milvus: both on the same vectors in one run (default: faiss)")
    p.add_argument("--milvus-uri", default=None,
                   help="the Milvus to measure (default: MILVUS_URI, else a Milvus Lite file in the work dir)")
    p.add_argument("--milvus-index", action="append", type=str.upper,
                   help=f"a Milvus index type to measure (repeatable; default: {', '.join(MILVUS_TYPES)})")
    args = p.parse_args()
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if not backends or set(backends) - set(milvus_store.BACKENDS):
        p.error("--backend takes faiss, milvus or faiss,milvus")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    auto = vectors.choose_type(args.n, args.dim)
    kinds = [auto if k == "auto" else k for k in (args.index or TYPES)] if "faiss" in backends else []
    kinds = list(dict.fromkeys(kinds))
    milvus_kinds = list(dict.fromkeys(args.milvus_index or MILVUS_TYPES)) if "milvus" in backends else []
    t0 = time.perf_counter()
    base = clustered(args.n, args.dim, args.clusters, seed=0)
    queries = clustered(args.queries, args.dim, args.clusters, seed=1)
    added = clustered(args.add, args.dim, args.clusters, seed=2) if args.add else np.zeros((0, args.dim), np.float32)
    gen_s = time.perf_counter() - t0
    _, truth = faiss.knn(queries, base, 100, metric=faiss.METRIC_INNER_PRODUCT)
    results = []
    milvus_info: dict = {}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        uri = args.milvus_uri or os.environ.get("MILVUS_URI") or str(Path(tmp) / "milvus.db")
        runs = [(kind, None) for kind in kinds] + [("milvus", milvus_store.Target(uri, k)) for k in milvus_kinds]
        for kind, target in runs:
            folder = Path(tmp) / ("index-" + (kind if target is None else f"milvus-{target.index_type}"))
            row = run_one(kind, base, queries, truth, added, args, folder, target)
            milvus_store.drop_all(folder)  # the bench's collections do not outlive it
            shutil.rmtree(folder, ignore_errors=True)
            row["auto"] = kind == auto and target is None
            if target is not None:
                row["index"] = f"milvus {target.index_type}"
            results.append(row)
            add = f"  add {args.add}: {row['add_s']:.2f} s" if "add_s" in row else ""
            memory = f"{row['memory_mb']:>7.1f} MB" if row["memory_mb"] is not None else "in Milvus "
            print(f"{row['index'] + (' (auto)' if row['auto'] else ''):>14}: build {row['build_s']:>6.1f} s "
                  f"(tune {row['tune_s']:.1f})  memory {memory} "
                  f"(+{row['rerank_store_mb']:.0f} MB float16 on disk)  p50 {row['p50_ms']:>6.2f}  "
                  f"p95 {row['p95_ms']:>6.2f}  p99 {row['p99_ms']:>6.2f} ms  {row['qps_batch']:>7.1f} QPS  "
                  f"R@10 {row['recall_at_10']:.4f}  R@100 {row['recall_at_100']:.4f} "
                  f"(tuning sample {row['tuned_recall_at_100']}){add}  {row['params']}", flush=True)
        if milvus_kinds:
            milvus_info = {"uri": milvus_store.public_uri(uri), "index_types": probe_types(uri, Path(tmp), args.dim)}
            try:
                milvus_info["version"] = milvus_store.client(uri).get_server_version()
            except Exception:  # noqa: BLE001 - the version is a courtesy
                pass
            print(f"Milvus at {milvus_info['uri']} ({milvus_info.get('version', '?')}) index types: "
                  + ", ".join(f"{k} {v}" for k, v in milvus_info["index_types"].items()), flush=True)
            milvus_store.reset()
    print(json.dumps({"bench": "search", "n": args.n, "dim": args.dim, "auto": auto,
                      "threads": faiss.omp_get_max_threads(), "gpus": vectors.gpu_count(), "data_s": round(gen_s, 1),
                      "results": results, **({"milvus": milvus_info} if milvus_info else {})}))


if __name__ == "__main__":
    main()
