"""FAISS index files: build, change, save as an immutable generation, load, search.

Each generation is its own folder `feature/index/<generation>/` (index.faiss, ids.npy, tags.npy, meta.json and,
for IVF-PQ, float16 re-rank segments) and becomes current only when the pointer file `CURRENT` is atomically
replaced, so a reader never sees a half-written index and a crash keeps the previous one.
ids.npy row i = (kind, database id) for FAISS id i; kind 0 is a keyframe, 1 an image, -1 a removed row (gone from
IVF lists; a tombstone that searches skip in flat and HNSW indexes, which cannot remove in place).
With `--vectors milvus` a generation has no index.faiss: its meta.json names a Milvus collection whose primary key is
the row (app.milvus_store), and `search` goes there; everything else here is the same.
Re-rank segments are never written twice: a generation made from another hard-links the segments it keeps, so
adding 1,000 vectors to a million writes 1,000 float16 rows, not the whole gigabyte.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from app import atomic

KIND_KEYFRAME = 0
KIND_IMAGE = 1
KIND_REMOVED = -1
INDEX_TYPES = ("auto", "flat", "ivf", "ivfpq", "hnsw")
EXACT_BELOW = 40_000  # exact search stays under ~10 ms per query up to here (FAISS scans with one core, 512-d)
MEMORY_BUDGET = 1 << 30  # auto keeps the in-memory index under this many bytes
log = logging.getLogger(__name__)
RERANK_FILE = "vectors.f16.npy"  # the single re-rank file of generations written before segments
TAGS_FILE = "tags.npy"


class Segments:
    """Immutable row files (memory-mapped) read as one (N, D) array: `store[row]` and `store[rows]`."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), int(parts[0].shape[1]))
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def __getitem__(self, rows):
        if isinstance(rows, (int, np.integer)):
            row = int(rows) + (len(self) if rows < 0 else 0)
            seg = int(np.searchsorted(self.starts, row, side="right")) - 1
            return self.parts[seg][row - self.starts[seg]]
        rows = np.asarray(rows, dtype=np.int64)
        seg = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        for s in np.unique(seg):
            hit = seg == s
            out[hit] = self.parts[s][rows[hit] - self.starts[s]]
        return out


@dataclass(frozen=True)
class Filter:
    """A search filter in the two forms a backend may want. `rows`: every row it keeps, what FAISS takes and what
    np.asarray gives (so code written for row arrays keeps working). The same filter as a vector database applies it
    itself: conditions on fields stored with each vector (`video`, `folders`: the exact folder values a folder filter
    covers) and the rows of the conditions only the catalogue answers (`listed`: labels, people, objects, which change
    without a re-index; None when there are none)."""

    rows: np.ndarray
    video: str | None = None
    folders: tuple[str, ...] | None = None
    listed: np.ndarray | None = None

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.rows if dtype is None else self.rows.astype(dtype)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class IndexBundle:
    index: faiss.Index | None  # None: the vectors are in Milvus (`remote`)
    ids: np.ndarray  # (N, 2) int64: kind, database id
    meta: dict
    generation: str
    rerank: np.ndarray | Segments | None = None  # (N, D) float16, memory-mapped: exact re-ranking for IVF-PQ
    gpu_index: faiss.Index | None = None  # a GPU copy for unfiltered searches, when faiss-gpu has a GPU
    tags: np.ndarray | None = None  # (N,) int64: what each row's vector was made from (index_build's diff)
    folder: Path | None = None
    live: faiss.IDSelector | None = field(default=None, repr=False)  # skips tombstones still in the index
    remote: object | None = None  # app.milvus_store.Remote: the Milvus collection holding the vectors (index is None)

    def __post_init__(self) -> None:
        if self.live is None and self.index is not None:
            self.live = _live_selector(self.index, self.ids)

    @property
    def size(self) -> int:
        """Rows a search may return: the index's vectors; for Milvus every row (tombstones are not in Milvus)."""
        return int(self.index.ntotal) if self.index is not None else len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.index.d) if self.index is not None else int(self.meta["dim"])

    @property
    def backend(self) -> str:
        return "faiss" if self.remote is None else "milvus"

    @property
    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.ids[:, 0] >= 0)


def _live_selector(index: faiss.Index, ids: np.ndarray) -> faiss.IDSelector | None:
    """A bitmap of the rows still live, when the index holds removed ones (IVF drops them from its lists)."""
    if isinstance(index, faiss.IndexIVF) or len(ids) == 0:
        return None
    alive = ids[:index.ntotal, 0] >= 0
    return None if alive.all() else faiss.IDSelectorBitmap(np.packbits(alive, bitorder="little"))


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
    """Inner product on unit vectors (cosine); row i gets FAISS id i. Returns the index and the parameters used,
    which are stored with it (and can be overridden per query: nprobe, efSearch, rerank)."""
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
        index.hnsw.efSearch = params.setdefault("efSearch", 256)  # until index_build measures what reaches recall
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
        add_rows(index, vectors, 0)
    params["type"] = kind
    return index, params


def _pq_m(dim: int) -> int:
    """Sub-quantizers (bytes per vector): at most 64 and at least 8 dimensions each, dividing dim
    (64 at 512-d: 64 MB per million vectors)."""
    for m in (64, 48, 32, 16, 8, 4, 2, 1):
        if dim % m == 0 and dim // m >= 8:
            return m
    return 1


# -- changing an index in place (index_build decides when) ---------------------------------------
def add_rows(index: faiss.Index, vectors: np.ndarray, first_row: int) -> None:
    """Append vectors as FAISS ids first_row, first_row+1, ...: explicit ids in IVF lists (so later removals
    leave the others' ids alone); flat and HNSW number their rows themselves, from ntotal."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if isinstance(index, faiss.IndexIVF):
        index.add_with_ids(x, np.arange(first_row, first_row + len(x), dtype=np.int64))
    elif index.ntotal != first_row:
        raise ValueError(f"rows of this index are numbered from {index.ntotal}, not {first_row}")
    else:
        index.add(x)


def remove_from_lists(index: faiss.IndexIVF, rows: np.ndarray) -> int:
    """Drop rows from the inverted lists; the other rows keep their ids. Returns how many went."""
    index.set_direct_map_type(faiss.DirectMap.NoMap)  # remove_ids cannot update an array direct map
    return int(index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))))


def compact_flat(index: faiss.IndexFlat, keep: np.ndarray) -> faiss.IndexFlat:
    """A flat index of the kept rows only, renumbered 0..len(keep)-1 (a memory copy, no training to redo)."""
    out = faiss.IndexFlatIP(index.d)
    if len(keep):
        out.add(np.ascontiguousarray(_flat_rows(index)[keep]))
    return out


def _flat_rows(index: faiss.IndexFlat) -> np.ndarray:
    """The flat index's float32 storage as an array, without a copy (valid while the index lives)."""
    if index.ntotal == 0:
        return np.zeros((0, index.d), np.float32)
    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def stored_vectors(bundle: IndexBundle, rows: np.ndarray) -> np.ndarray:
    """float32 vectors of these rows from the generation itself (no feature files): the float16 store for IVF-PQ,
    the index's own storage otherwise."""
    rows = np.asarray(rows, dtype=np.int64)
    if bundle.rerank is not None:
        return np.asarray(bundle.rerank[rows], dtype=np.float32)
    index = bundle.index
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexFlat):
        return _flat_rows(index)[rows].copy()
    if isinstance(index, faiss.IndexIVFFlat):
        from faiss.contrib.inspect_tools import get_invlist

        lists = [get_invlist(index.invlists, lst) for lst in range(index.nlist)]
        all_ids = np.concatenate([ids for ids, _ in lists])
        order = np.argsort(all_ids)
        at = order[np.searchsorted(all_ids, rows, sorter=order)]
        return np.concatenate([codes.view(np.float32).reshape(-1, index.d) for _, codes in lists])[at]
    return np.stack([index.reconstruct(int(r)) for r in rows]) if len(rows) else np.zeros((0, index.d), np.float32)


# -- re-rank segments --------------------------------------------------------------------------
def segment_paths(bundle: IndexBundle) -> list[Path]:
    """The re-rank files of a loaded generation, in row order (what a generation made from it links)."""
    if bundle.folder is None:
        return []
    listed = bundle.meta.get("rerank_segments")
    if listed:
        return [bundle.folder / s["file"] for s in listed]
    return [bundle.folder / RERANK_FILE] if (bundle.folder / RERANK_FILE).is_file() else []


def appended_segments(paths: list[Path], new_rows: np.ndarray) -> list:
    """Existing segments plus new rows, the last two merged into one while the older holds at most twice the
    newer's rows: many small adds leave O(log n) files, and each row is rewritten O(log n) times, not per add."""
    groups = [([p], _rows_in(p)) for p in paths]
    if len(new_rows):
        groups.append(([new_rows], len(new_rows)))
    while len(groups) >= 2 and groups[-2][1] <= 2 * groups[-1][1]:
        (b, nb), (a, na) = groups.pop(), groups.pop()
        groups.append((a + b, na + nb))
    return [parts[0] if len(parts) == 1 else parts for parts, _ in groups]


def _link(source: Path, path: Path) -> None:
    """The same immutable file under a second name (a copy where hard links are refused)."""
    try:
        os.link(source, path)
    except OSError:
        shutil.copyfile(source, path)


def _rows_in(path: Path) -> int:
    return len(np.load(path, mmap_mode="r"))


def _write_segment(path: Path, pieces: list) -> int:
    """One segment file: a hard link to an existing one (a copy across file systems), or the pieces (files and
    arrays) written as one new float16 file. Never opens an existing segment for writing."""
    if len(pieces) == 1 and isinstance(pieces[0], Path):
        _link(pieces[0], path)
        return _rows_in(path)
    arrays = [np.load(p, mmap_mode="r") if isinstance(p, Path) else p for p in pieces]
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                    shape=(sum(len(a) for a in arrays), arrays[0].shape[1]))
    at = 0
    for a in arrays:
        for start in range(0, len(a), 65536):
            chunk = a[start:start + 65536]
            out[at:at + len(chunk)] = chunk
            at += len(chunk)
    out.flush()
    del out
    return at


# -- generations ---------------------------------------------------------------------------------
def save_generation(index_dir: Path, index: faiss.Index | None, ids: np.ndarray, meta: dict,
                    rerank: np.ndarray | list | None = None, tags: np.ndarray | None = None) -> str:
    """Write a new generation and switch CURRENT to it; older generations but one are removed.
    `rerank` (for IVF-PQ): the vectors (kept as float16), or a list of segments from appended_segments.
    `index` None: the vectors are in Milvus (meta names the collection), none is written here."""
    generation, tmp = _new_folder(index_dir)
    if index is not None:
        faiss.write_index(index, str(tmp / "index.faiss"))
    np.save(tmp / "ids.npy", np.asarray(ids, dtype=np.int64).reshape(-1, 2))
    if tags is not None:
        np.save(tmp / TAGS_FILE, np.asarray(tags, dtype=np.int64))
    meta = dict(meta)
    meta.pop("rerank_segments", None)
    if rerank is not None:
        parts, start, listed = (rerank if isinstance(rerank, list) else [rerank]), 0, []
        for part in parts:
            pieces = part if isinstance(part, list) else [part]
            end = start + sum(_rows_in(p) if isinstance(p, Path) else len(p) for p in pieces)
            name = f"vectors.f16.{start:012d}-{end:012d}.npy"  # a row range: one name, one content per lineage
            listed.append({"file": name, "rows": _write_segment(tmp / name, pieces)})
            start = end
        meta["rerank_segments"] = listed
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return _publish(index_dir, tmp, generation)


def relink_generation(index_dir: Path, source: Path, meta: dict) -> str:
    """A generation with the same vectors as `source` (every file hard-linked) and new metadata: what a
    catalogue change that moves no vector (a renamed file) needs so that the server reloads its entries."""
    generation, tmp = _new_folder(index_dir)
    for f in source.iterdir():
        if f.name != "meta.json":
            _link(f, tmp / f.name)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return _publish(index_dir, tmp, generation)


def _new_folder(index_dir: Path) -> tuple[str, Path]:
    index_dir.mkdir(parents=True, exist_ok=True)
    # seconds and nanoseconds from one reading of the clock: read apart, a generation made just after a second's
    # boundary could take the earlier second and sort before the one made just before it (newest-first order is
    # how a damaged generation falls back and which old ones are removed)
    now = time.time_ns()
    generation = f"{time.strftime('%Y%m%dT%H%M%S', time.localtime(now // 1_000_000_000))}-{now % 1_000_000_000:09d}"
    tmp = index_dir / f".{generation}.tmp"
    tmp.mkdir()
    return generation, tmp


def _publish(index_dir: Path, tmp: Path, generation: str) -> str:
    """Everything on disk first, then the folder appears under its name, then CURRENT names it."""
    for f in [*tmp.iterdir(), tmp]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, index_dir / generation)
    atomic.write_text(index_dir / "CURRENT", generation + "\n")
    _remove_old(index_dir, keep={generation, _previous(index_dir, generation)})
    return generation


def _previous(index_dir: Path, current: str) -> str | None:
    older = sorted(p.name for p in index_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and p.name < current)
    return older[-1] if older else None


def _remove_old(index_dir: Path, keep: set[str | None]) -> None:
    """Older generations and unfinished folders of killed writers; shared segments live on in the kept ones."""
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


def _load_rerank(folder: Path, meta: dict) -> np.ndarray | Segments | None:
    listed = meta.get("rerank_segments")
    if not listed:
        path = folder / RERANK_FILE
        return _read(path, lambda p: np.load(p, mmap_mode="r")) if path.is_file() else None
    parts = []
    for s in listed:
        part = _read(folder / s["file"], lambda p: np.load(p, mmap_mode="r"))
        if len(part) != s["rows"]:
            raise ValueError(f"{s['file']} holds {len(part)} rows, meta.json says {s['rows']}")
        parts.append(part)
    return parts[0] if len(parts) == 1 else Segments(parts)


def _load_generation(folder: Path, use_gpu: bool | None, direct_map: bool = True) -> IndexBundle:
    if not (folder / "index.faiss").exists() and (folder / "meta.json").is_file():
        meta = _read(folder / "meta.json", lambda p: json.loads(p.read_text()))
        if meta.get("backend") == "milvus":
            return _load_remote(folder, meta)
    index = _read(folder / "index.faiss", lambda p: faiss.read_index(str(p)))
    ids = _read(folder / "ids.npy", lambda p: np.load(p, allow_pickle=False))
    meta = _read(folder / "meta.json", lambda p: json.loads(p.read_text()))
    if ids.ndim != 2 or ids.shape[1] != 2:
        raise ValueError(f"ids.npy holds {ids.shape}, not (rows, 2)")
    removed = ids[:, 0] < 0
    in_index = int((~removed).sum()) if isinstance(index, faiss.IndexIVF) else len(ids)
    if index.ntotal != in_index:
        raise ValueError(f"ids.npy holds {len(ids)} rows ({int(removed.sum())} removed) for an index of "
                         f"{index.ntotal} vectors")
    tags = _read(folder / TAGS_FILE, lambda p: np.load(p, allow_pickle=False)) \
        if (folder / TAGS_FILE).is_file() else None
    if tags is not None and tags.shape != (len(ids),):
        raise ValueError(f"{TAGS_FILE} holds {tags.shape} for {len(ids)} rows")
    apply_search_params(index, meta.get("params", {}))
    rerank = _load_rerank(folder, meta)
    if rerank is not None and len(rerank) != len(ids):
        raise ValueError(f"the re-rank store holds {len(rerank)} rows for {len(ids)} rows of ids.npy")
    if direct_map and rerank is None and isinstance(index, faiss.IndexIVF):
        # reconstruct() for "more like this": an array (8 bytes a vector) while ids are 0..n-1, else a hash table
        if removed.any():
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
        else:
            index.make_direct_map()
    gpu = to_gpu(index) if use_gpu is not False else None
    return IndexBundle(index, ids, meta, folder.name, rerank, gpu, tags, folder)


def _load_remote(folder: Path, meta: dict) -> IndexBundle:
    """A generation whose vectors are in Milvus: rows, tags and the float16 copy from the folder, the collection
    checked (app.milvus_store.open_remote; Milvus unreachable or holding another model's vectors raise)."""
    from app import milvus_store

    ids = _read(folder / "ids.npy", lambda p: np.load(p, allow_pickle=False))
    if ids.ndim != 2 or ids.shape[1] != 2:
        raise ValueError(f"ids.npy holds {ids.shape}, not (rows, 2)")
    tags = _read(folder / TAGS_FILE, lambda p: np.load(p, allow_pickle=False))
    if tags.shape != (len(ids),):
        raise ValueError(f"{TAGS_FILE} holds {tags.shape} for {len(ids)} rows")
    rerank = _load_rerank(folder, meta)
    if rerank is None or len(rerank) != len(ids):
        raise ValueError(f"the float16 store holds {0 if rerank is None else len(rerank)} rows for {len(ids)} rows "
                         f"of ids.npy")
    return IndexBundle(None, ids, meta, folder.name, rerank, None, tags, folder,
                       remote=milvus_store.open_remote(meta))


def load_current(index_dir: Path, use_gpu: bool | None = None, for_update: bool = False) -> IndexBundle | None:
    """The generation CURRENT names or, if it is missing or damaged, the newest intact one (a warning says
    which). None when there is no generation at all; IndexDamaged when none can be read.
    `for_update`: no GPU copy and no direct map, so the index can take add_rows / remove_from_lists."""
    problems = []
    current = pointer(index_dir)
    for name in _generations(index_dir, current):
        try:
            bundle = _load_generation(index_dir / name, False if for_update else use_gpu, not for_update)
        except IndexDamaged:  # Milvus unreachable or holding other vectors: every generation would fail alike
            raise
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
        return np.asarray(bundle.rerank[int(row)], dtype=np.float32)
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


def _search_parameters(index: faiss.Index, params: dict, selector: faiss.IDSelector | None):
    """Per-call parameters: the filter (an ID selector applied during the search, so filtered
    queries still get K results) and overrides of nprobe / efSearch."""
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
    return sp


def search(bundle: IndexBundle, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
           params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, FAISS ids) per query row; ids are -1 where fewer than k exist. Removed rows never appear.

    `allowed`: FAISS ids a filter keeps (applied inside the search). `params`: per-query
    overrides of nprobe, efSearch and rerank (IVF-PQ candidates re-scored exactly from float16).
    A Milvus generation is searched there (app.milvus_store.Remote.search), with the same answer shape.
    """
    if bundle.remote is not None:
        return bundle.remote.search(bundle, queries, k, allowed, params)
    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, bundle.index.d)
    if bundle.size == 0 or k <= 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    k = min(k, bundle.size)
    overrides = params or {}
    params = {**bundle.meta.get("params", {}), **overrides}
    fetch = k
    if bundle.rerank is not None:
        fetch = min(bundle.size, max(k, int(params.get("rerank", 0))))
    selector = bundle.live
    if allowed is not None:
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        if bundle.live is not None:
            allowed = allowed[(allowed >= 0) & (allowed < len(bundle.ids))]
            allowed = allowed[bundle.ids[allowed, 0] >= 0]
        selector = faiss.IDSelectorBatch(allowed)
    if selector is None and bundle.gpu_index is not None and not overrides:
        scores, rows = bundle.gpu_index.search(queries, fetch)
    else:
        sp = _search_parameters(bundle.index, params, selector)
        scores, rows = bundle.index.search(queries, fetch, params=sp)
    if bundle.rerank is not None and fetch > 0:
        scores, rows = _rerank(bundle.rerank, queries, rows, k)
    return scores[:, :k], rows[:, :k]


def _rerank(store: np.ndarray | Segments, queries: np.ndarray, rows: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
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
