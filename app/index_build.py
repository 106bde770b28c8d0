"""The served FAISS index from the catalogue: when it must change, how, and which query knobs reach the recall target.

The catalogue (database rows plus per-video and per-image feature files) is the truth; an index generation is derived
from it and can always be made again from it. Between rebuilds a generation is made from the previous one: only the
new rows' feature files are read and their vectors added to the trained index; rows the catalogue no longer has leave
IVF lists, become tombstones in HNSW graphs, and flat indexes close up over them. A rebuild (with training and a
fresh recall measurement) happens when the type changes, when the index is missing or empty, when it has grown past
RETRAIN_GROWTH times the size it was trained on, when tombstones pass TOMBSTONE_LIMIT, or when asked.

With `--vectors milvus` (a `milvus_store.Target`) the same plans are carried out in a Milvus collection: a rebuild
writes a new collection, an update appends rows and deletes removed ones in the current one, and the generation is
published only once Milvus holds exactly its live rows (app.milvus_store).
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import milvus_store, vectors
from app.models import Image, Keyframe, Video
from app.paths import DataLayout

RETRAIN_GROWTH = 2.0  # IVF lists trained on n vectors serve up to this many times n before a retrain
TOMBSTONE_LIMIT = 0.2  # rebuild once this share of the rows is removed (dead weight in HNSW graphs, IVF-PQ stores)
RETUNE_DRIFT = 1.25  # measure recall again when the size moved this factor since the last measurement
TYPE_MARGIN = 1.1  # auto changes a served type only once the size is this factor past the threshold (no flapping)
RECALL_TARGET = 0.95  # recall@100 the query knobs must reach (params["recall_target"] changes it)
TUNE_QUERIES = 300
TUNE_K = 100
NPROBE_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512,
               640, 768, 1024, 1280, 1536, 2048, 2560, 3072, 4096)  # steps of about 1.25x
EF_GRID = (128, 160, 192, 256, 320, 384, 512, 640, 768, 1024, 1536, 2048, 3072, 4096)
RERANK_GRID = (200, 300, 500, 750, 1000, 1500, 2000, 3000)
log = logging.getLogger(__name__)


@dataclass
class Catalogue:
    """What the index must hold: one row per vector, and how to read the vectors of some rows."""

    ids: np.ndarray  # (M, 2) int64: kind, database id
    tags: np.ndarray  # (M,) int64: changes when a row's vector may have (an image file edited in place)
    load: Callable[[np.ndarray], np.ndarray]  # positions into ids -> (len, dim) float32 vectors
    signature: str = ""
    fields: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None  # positions -> (video ids, folders)


@dataclass
class Plan:
    rebuild: str | None  # why the index is built afresh; None: the current generation is changed
    kind: str  # the index type of the new generation
    add: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # catalogue positions to add
    remove: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # current rows to remove


@dataclass
class Outcome:
    size: int  # live vectors in the served generation
    written: bool  # a new generation was published
    rebuilt: bool = False
    added: int = 0
    removed: int = 0
    reason: str = ""
    generation: str | None = None


# -- from the catalogue ---------------------------------------------------------------------------
def refresh_index(session: Session, layout: DataLayout, identity: tuple[str, str], dim: int, wanted: str = "auto",
                  fingerprint: str | None = None, retrain: bool = False,
                  params: dict | None = None) -> tuple[int, bool]:
    """Make the served index match the catalogue; returns (vectors in it, whether a new generation was written).
    Where the vectors go (FAISS files or Milvus) follows the settings offline.py gave milvus_store.configure, else
    the current generation."""
    signature = catalogue_signature(session)
    try:
        current = load_for_update(layout.index_dir, retrain)
    except milvus_store.MilvusUnavailable:
        meta = milvus_store.current_meta(layout.index_dir)
        if meta is None or _same_place(meta, milvus_store.target_for(meta)):
            raise
        # moving to another Milvus (or to FAISS): the old one is not needed, the catalogue rebuilds it all
        log.warning("the served index's Milvus cannot be reached; the index is built afresh where the settings say")
        current = None
    # where the vectors go: the settings, else where the served generation keeps them, read from CURRENT's meta.json
    # even when that generation cannot be loaded (a lost collection is rebuilt in Milvus, never moved to FAISS)
    served_meta = current.meta if current is not None else milvus_store.current_meta(layout.index_dir)
    target = milvus_store.target_for(served_meta)
    if target is not None:
        wanted = "auto"  # --index is FAISS's; Milvus builds --milvus-index
    served = current is not None and current.generation == vectors.pointer(layout.index_dir)  # else CURRENT's broke
    if served and not retrain and current.meta.get("signature") == signature and (
            wanted == "auto" or current.meta.get("params", {}).get("type") == wanted) and \
            _same_place(current.meta, target):
        return int(current.meta.get("count", current.size)), False
    catalogue = read_catalogue(session, layout, dim, signature)
    try:
        outcome = sync_index(layout.index_dir, current, catalogue, dim, wanted,
                             _identity(identity, dim, fingerprint), retrain=retrain, params=params, target=target)
    except (milvus_store.MilvusUnavailable, milvus_store.MilvusRefused) as exc:
        raise type(exc)(f"{exc}. The served index was left as it was (the catalogue keeps what this run read): run "
                        f"the same command again once Milvus answers") from None
    log.info("index: %s", outcome)
    return outcome.size, outcome.written


def rebuild_index(session: Session, layout: DataLayout, identity: tuple[str, str], dim: int,
                  index_type: str = "auto", params: dict | None = None, fingerprint: str | None = None,
                  target: milvus_store.Target | None = None) -> int:
    """Build a generation afresh from the per-video and per-image feature files (into Milvus with a target)."""
    catalogue = read_catalogue(session, layout, dim, catalogue_signature(session))
    return build_generation(layout.index_dir, catalogue, dim, index_type, _identity(identity, dim, fingerprint),
                            params, "rebuild asked for", target).size


def _same_place(meta: dict, target: milvus_store.Target | None) -> bool:
    """Whether a generation's vectors are where the settings want them: FAISS, or this Milvus with this index type."""
    if target is None:
        return meta.get("backend", "faiss") == "faiss"
    held = meta.get("milvus", {})
    return meta.get("backend") == "milvus" and held.get("uri") == target.public_uri and \
        held.get("index") == target.index_type


def _identity(identity: tuple[str, str], dim: int, fingerprint: str | None) -> dict:
    return {"model": identity[0], "pretrained": identity[1], "weights_fingerprint": fingerprint, "dim": dim}


def catalogue_signature(session: Session) -> str:
    """Changes whenever the set of indexed vectors changes: keyframe ids are never reused, so a video indexed
    again (--force, other keyframe settings, same content) changes it too."""
    h = hashlib.blake2b(digest_size=16)
    for vid, chash in session.execute(select(Video.video_id, Video.content_hash).order_by(Video.id)):
        h.update(f"v:{vid}:{chash}\n".encode())
    for first, last, count in session.execute(select(func.min(Keyframe.id), func.max(Keyframe.id),
                                                     func.count(Keyframe.id)).group_by(Keyframe.video_pk)
                                              .order_by(Keyframe.video_pk)):
        h.update(f"k:{first}:{last}:{count}\n".encode())
    for path, chash in session.execute(select(Image.path, Image.content_hash).order_by(Image.id)):
        h.update(f"i:{path}:{chash}\n".encode())
    return h.hexdigest()


def read_catalogue(session: Session, layout: DataLayout, dim: int, signature: str = "") -> Catalogue:
    """Every keyframe (videos in id order, keyframes by n) then every image, with tags from the content hashes; the
    vectors are read only when asked for (row n-1 of feature/<video_id>.npy, feature/images/<hash>.npy)."""
    kf = np.array(session.execute(select(Keyframe.id, Keyframe.video_pk, Keyframe.n, Keyframe.frame_idx)
                                  .order_by(Keyframe.video_pk, Keyframe.n)).all(), dtype=np.int64).reshape(-1, 4)
    videos = {pk: (vid, chash) for pk, vid, chash in session.execute(select(Video.id, Video.video_id,
                                                                             Video.content_hash))}
    images = session.execute(select(Image.id, Image.content_hash).order_by(Image.id)).all()
    kf_count = len(kf)
    pks, which, per_video = np.unique(kf[:, 1], return_inverse=True, return_counts=True)
    video_tags = np.array([_hash64(f"{videos[pk][0]}:{videos[pk][1]}") for pk in pks.tolist()], np.int64)
    tags = np.concatenate([_mix(video_tags[which], kf[:, 2], kf[:, 3]),
                           np.array([_hash64(h) for _, h in images], np.int64)])
    ids = np.concatenate([np.stack([np.full(len(kf), vectors.KIND_KEYFRAME), kf[:, 0]], axis=1),
                          np.array([(vectors.KIND_IMAGE, i) for i, _ in images], np.int64).reshape(-1, 2)])

    def load(positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), dim), np.float32)
        at_kf = np.flatnonzero(positions < len(kf))
        by_video = at_kf[np.argsort(which[positions[at_kf]], kind="stable")]
        starts = np.flatnonzero(np.diff(which[positions[by_video]], prepend=-1))
        for mine in np.split(by_video, starts[1:]) if len(by_video) else []:
            v = which[positions[mine[0]]]
            video_id = videos[int(pks[v])][0]
            feats = np.load(layout.video_feature_path(video_id), mmap_mode="r", allow_pickle=False)
            if len(feats) != per_video[v]:
                raise RuntimeError(f"{video_id}: {len(feats)} feature rows for {per_video[v]} keyframes")
            out[mine] = _fit(feats[kf[positions[mine], 2] - 1], dim, video_id)
        for i in np.flatnonzero(positions >= len(kf)).tolist():
            content_hash = images[positions[i] - len(kf)][1]
            out[i] = _fit(np.load(layout.image_feature_dir / f"{content_hash}.npy").reshape(1, -1), dim,
                          content_hash)[0]
        return out

    def fields(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Video id and source folder per position, as app.collection computes them (Milvus's scalar fields)."""
        positions = np.asarray(positions, dtype=np.int64)
        video_rows = {pk: (vid, str(Path(path).parent)) for pk, vid, path in
                      session.execute(select(Video.id, Video.video_id, Video.path))}
        image_rows = dict(session.execute(select(Image.id, Image.path)).all())
        video_of, folder_of = np.full(len(positions), "", object), np.full(len(positions), "", object)
        for i, pos in enumerate(positions.tolist()):
            if pos < kf_count:
                video_of[i], folder_of[i] = video_rows[int(kf[pos, 1])]
            else:
                folder_of[i] = str(Path(image_rows[int(ids[pos, 1])]).parent)
        return video_of, folder_of

    return Catalogue(ids, tags, load, signature, fields)


def _fields(catalogue: Catalogue, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if catalogue.fields is None:
        return np.full(len(positions), "", object), np.full(len(positions), "", object)
    return catalogue.fields(positions)


def _fit(rows: np.ndarray, dim: int, name: str) -> np.ndarray:
    if rows.shape[1] != dim:
        raise RuntimeError(f"{name}: feature vectors of {rows.shape[1]} dimensions for an index of {dim}")
    return rows


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def _mix(base: np.ndarray, *columns: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of a base tag and integer columns (splitmix64 rounds; wraps, never overflows)."""
    h = base.astype(np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            h = (h ^ c.astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(31)
    return h.view(np.int64)


# -- deciding and applying --------------------------------------------------------------------------
def load_for_update(index_dir: Path, retrain: bool = False) -> vectors.IndexBundle | None:
    """The served generation, ready to be changed; None when there is none or none can be read (then it is
    rebuilt from the catalogue). Milvus unreachable stops the run (nothing is changed); a Milvus collection of
    another model is refused unless `retrain` asks for a new one."""
    try:
        return vectors.load_current(index_dir, for_update=True)
    except milvus_store.MilvusMismatch as exc:
        if not retrain:
            raise
        log.warning("%s", exc)
        return None
    except (milvus_store.MilvusUnavailable, milvus_store.MilvusRefused):
        raise
    except vectors.IndexDamaged as exc:
        log.warning("%s", exc)
        return None


def sync_index(index_dir: Path, current: vectors.IndexBundle | None, catalogue: Catalogue, dim: int,
               wanted: str = "auto", identity: dict | None = None, retrain: bool = False,
               params: dict | None = None, target: milvus_store.Target | None = None) -> Outcome:
    """Publish a generation holding exactly the catalogue's vectors: the current one changed, or a rebuild.
    `target`: the Milvus to hold them (None: FAISS files)."""
    identity = identity or {"dim": dim}
    plan = plan_update(current, catalogue, dim, wanted, identity, retrain, target)
    if plan.rebuild is None and current is not None and current.remote is not None:
        live = len(current.live_rows)
        if not current.remote.holds(len(current.ids), live):  # a run stopped between Milvus writes and publishing
            plan = Plan(f"Milvus collection {current.remote.name} does not hold the {live} vectors of generation "
                        f"{current.generation}", "milvus", np.arange(len(catalogue.ids), dtype=np.int64))
    if plan.rebuild is not None:
        kept = current.meta.get("params", {}).get("recall_target") if current is not None else None
        params = {**({"recall_target": kept} if kept else {}), **(params or {})}  # a setting outlives rebuilds
        return build_generation(index_dir, catalogue, dim, plan.kind, identity, params, plan.rebuild, target)
    assert current is not None
    if not len(plan.add) and not len(plan.remove):
        if current.meta.get("signature") == catalogue.signature:
            return Outcome(len(current.live_rows), False)
        meta = {**current.meta, "signature": catalogue.signature, "created": _now()}
        generation = vectors.relink_generation(index_dir, current.folder, meta)
        _published(index_dir)
        return Outcome(len(current.live_rows), True, reason="catalogue changed, vectors did not",
                       generation=generation)
    return update_generation(index_dir, current, catalogue, plan, identity)


def _published(index_dir: Path) -> None:
    """After a generation became current: Milvus collections no kept generation names are dropped (nothing to do,
    not even a connection, for an index that never used Milvus)."""
    milvus_store.retire(index_dir)


def plan_update(current: vectors.IndexBundle | None, catalogue: Catalogue, dim: int, wanted: str = "auto",
                identity: dict | None = None, retrain: bool = False,
                target: milvus_store.Target | None = None) -> Plan:
    """What the next generation is: which rows come and go, or why it must be built afresh (and as which type;
    "milvus" with a target: Milvus builds the index type the target names)."""
    everything = np.arange(len(catalogue.ids), dtype=np.int64)
    fresh = "milvus" if target is not None else \
        vectors.choose_type(len(catalogue.ids), dim) if wanted == "auto" else wanted
    if current is None:
        return Plan("no index yet", fresh, everything)
    params = current.meta.get("params", {})
    kind = params.get("type", "flat")
    add, remove = diff(current, catalogue) if current.tags is not None else (everything, np.zeros(0, np.int64))
    live = len(current.live_rows)
    after = live - len(remove) + len(add)
    wanted_kind = "milvus" if target is not None else \
        (kind if _auto_keeps(kind, after, dim) else fresh) if wanted == "auto" else wanted
    rows_after = len(current.ids) + len(add)
    dead_after = 0 if kind == "flat" else int((current.ids[:, 0] < 0).sum()) + len(remove)
    trained = int(current.meta.get("trained_size", current.meta.get("count", live)))
    reasons = [
        current.tags is None and "the index predates incremental updates",
        *[f"{key} changed" for key in ("model", "pretrained", "weights_fingerprint", "dim")
          if key in (identity or {}) and current.meta.get(key) != identity[key]],
        retrain and "retraining asked for",
        wanted_kind != kind and f"type {kind} -> {wanted_kind}",
        *_milvus_moves(current.meta, target),
        live == 0 and after > 0 and "the index is empty",
        kind in ("ivf", "ivfpq") and after > RETRAIN_GROWTH * trained
        and f"{after} vectors, over {RETRAIN_GROWTH:g}x the {trained} it was trained on",
        dead_after > TOMBSTONE_LIMIT * rows_after and f"{dead_after} of {rows_after} rows removed",
    ]
    reason = next((r for r in reasons if r), None)
    if reason:
        return Plan(reason, fresh, everything)
    return Plan(None, kind, add, remove)


def _milvus_moves(meta: dict, target: milvus_store.Target | None) -> list[str]:
    """Why a Milvus generation must be written afresh elsewhere: another Milvus, or another index type."""
    held = meta.get("milvus", {})
    if target is None or meta.get("backend") != "milvus":
        return []
    return [held.get("uri") != target.public_uri and f"Milvus {held.get('uri')} -> {target.public_uri}",
            held.get("index") != target.index_type and f"Milvus index {held.get('index')} -> {target.index_type}"]


def _auto_keeps(kind: str, n: int, dim: int) -> bool:
    """Whether auto would pick `kind` for a size within TYPE_MARGIN of n (so a size near a threshold keeps its type)."""
    return kind in {vectors.choose_type(int(n * TYPE_MARGIN), dim), vectors.choose_type(int(n / TYPE_MARGIN), dim)}


def diff(current: vectors.IndexBundle, catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """(catalogue positions not in the generation, live generation rows not in the catalogue), matching rows by
    kind, database id and tag."""
    live = current.live_rows
    have = _keys(current.ids[live])
    order = np.argsort(have, kind="stable")
    wanted = _keys(catalogue.ids)
    at = np.minimum(np.searchsorted(have, wanted, sorter=order), max(len(have) - 1, 0))
    found = np.zeros(len(wanted), bool) if not len(have) else have[order[at]] == wanted
    rows = live[order[at]] if len(have) else np.zeros(len(wanted), np.int64)
    same = found & (current.tags[rows] == catalogue.tags) if len(have) else found
    return np.flatnonzero(~same), np.setdiff1d(live, rows[same])


def _keys(ids: np.ndarray) -> np.ndarray:
    return (ids[:, 0].astype(np.int64) << 40) | ids[:, 1].astype(np.int64)


def build_generation(index_dir: Path, catalogue: Catalogue, dim: int, kind: str = "auto", identity: dict | None = None,
                     params: dict | None = None, reason: str = "",
                     target: milvus_store.Target | None = None) -> Outcome:
    """Train, fill and tune a new index from every vector of the catalogue, and publish it. The tuning queries are
    a random sample of the collection held out of the index until the knobs are chosen (then added as its last
    rows), so they are measured as unseen queries are, HNSW included. With a target: a new Milvus collection."""
    if target is not None:
        return _build_milvus(index_dir, catalogue, dim, identity or {"dim": dim}, params or {}, reason, target)
    n = len(catalogue.ids)
    kind = "flat" if n == 0 else vectors.choose_type(n, dim) if kind == "auto" else kind
    held = np.zeros(0, np.int64) if kind == "flat" or n < 40 else \
        np.random.default_rng(0).choice(n, min(TUNE_QUERIES, n // 4), replace=False)
    order = np.concatenate([np.setdiff1d(np.arange(n), held), np.sort(held)])
    indexed = n - len(held)
    matrix = catalogue.load(order) if n else np.zeros((0, dim), np.float32)
    ids, tags = catalogue.ids[order], catalogue.tags[order]
    index, used = vectors.build_index(matrix[:indexed], kind, params)
    used.setdefault("recall_target", RECALL_TARGET)
    rerank = matrix.astype(np.float16) if used["type"] == "ivfpq" else None
    tuning = {"target": used["recall_target"], "size": n,
              **({"recall": 1.0, "exact": True} if kind == "flat" else {"skipped": "under 40 vectors"})}
    if len(held):
        k = min(TUNE_K, indexed - 1)
        _, truth = faiss.knn(matrix[indexed:], matrix[:indexed], k, metric=faiss.METRIC_INNER_PRODUCT)
        bundle = vectors.IndexBundle(index, ids, {"params": used}, "new", rerank)
        fixed = {key: v for key, v in (params or {}).items() if key in ("nprobe", "efSearch", "rerank")}
        tuning = {**tune(bundle, matrix[indexed:], truth, used["recall_target"], fixed), "size": n}
    vectors.add_rows(index, matrix[indexed:], indexed)
    now = _now()
    meta = {**(identity or {"dim": dim}), "count": n, "rows": n, "tombstones": 0, "trained_size": n, "params": used,
            "tuning": tuning, "signature": catalogue.signature, "created": now, "built": now, "updates": 0,
            "reason": reason}
    del matrix
    generation = vectors.save_generation(index_dir, index, ids, meta, rerank=rerank, tags=tags)
    _published(index_dir)
    return Outcome(n, True, True, n, 0, reason, generation)


def update_generation(index_dir: Path, current: vectors.IndexBundle, catalogue: Catalogue, plan: Plan,
                      identity: dict | None = None) -> Outcome:
    """The current generation with plan.remove gone and plan.add added, published as a new generation (the re-rank
    store's existing segments are linked, not copied)."""
    assert current.tags is not None and current.folder is not None
    if current.remote is not None:
        return _update_milvus(index_dir, current, catalogue, plan, identity)
    index, ids, tags = current.index, current.ids.copy(), current.tags.copy()
    kind = current.meta["params"]["type"]
    new = catalogue.load(plan.add) if len(plan.add) else np.zeros((0, index.d), np.float32)
    if len(plan.remove):
        if kind == "flat":
            keep = np.setdiff1d(np.arange(len(ids)), plan.remove)
            index, ids, tags = vectors.compact_flat(index, keep), ids[keep], tags[keep]
        else:  # IVF lists drop them; HNSW cannot, its rows stay as tombstones that searches skip
            if isinstance(index, faiss.IndexIVF):
                vectors.remove_from_lists(index, plan.remove)
            ids[plan.remove, 0] = vectors.KIND_REMOVED
    if len(new):
        vectors.add_rows(index, new, len(ids))
    ids = np.concatenate([ids, catalogue.ids[plan.add]])
    tags = np.concatenate([tags, catalogue.tags[plan.add]])
    new16 = new.astype(np.float16)
    rerank = vectors.appended_segments(vectors.segment_paths(current), new16) if current.rerank is not None else None
    live = int((ids[:, 0] >= 0).sum())
    params = dict(current.meta["params"])
    meta = _updated_meta(current, catalogue, plan, identity, ids, live, params)
    measured = int(current.meta.get("tuning", {}).get("size", live) or 1)
    if kind != "flat" and live > 1 and not 1 / RETUNE_DRIFT <= live / measured <= RETUNE_DRIFT:
        store = None if current.rerank is None else vectors.Segments([current.rerank, new16])
        meta["tuning"] = _retune(vectors.IndexBundle(index, ids, {"params": params}, "new", store))
    generation = vectors.save_generation(index_dir, index, ids, meta, rerank=rerank, tags=tags)
    _published(index_dir)
    return Outcome(live, True, False, len(plan.add), len(plan.remove), meta["reason"], generation)


# -- the same in Milvus ---------------------------------------------------------------------------------------------
def _milvus_knob(index_type: str) -> str | None:
    """The query knob tuned for a Milvus index type (efSearch is sent as ef), None where there is none to tune."""
    if index_type in milvus_store.EF_KNOBS:
        return "efSearch"
    return "nprobe" if index_type in milvus_store.NPROBE_KNOBS else None


def _build_milvus(index_dir: Path, catalogue: Catalogue, dim: int, identity: dict, params: dict, reason: str,
                  target: milvus_store.Target) -> Outcome:
    """A new Milvus collection holding every vector of the catalogue as rows 0..n-1, its query knob tuned as FAISS's
    are (held-out rows written last), published once Milvus holds all of them; the one it replaces is dropped a
    generation later (milvus_store.retire)."""
    n = len(catalogue.ids)
    knob = _milvus_knob(target.index_type)
    held = np.zeros(0, np.int64) if knob is None or n < 40 else \
        np.random.default_rng(0).choice(n, min(TUNE_QUERIES, n // 4), replace=False)
    order = np.concatenate([np.setdiff1d(np.arange(n), held), np.sort(held)]).astype(np.int64)
    indexed = n - len(held)
    matrix = catalogue.load(order) if n else np.zeros((0, dim), np.float32)
    ids, tags = catalogue.ids[order], catalogue.tags[order]
    videos, folders = _fields(catalogue, order)
    built = milvus_store.build_params(target.index_type, n, params)
    used = {"type": "milvus", "index": target.index_type, **built,
            "recall_target": params.get("recall_target", RECALL_TARGET)}
    remote = milvus_store.create(index_dir, target, identity, dim, built)
    rows = np.arange(n, dtype=np.int64)
    remote.upsert(rows[:indexed], matrix[:indexed], ids[:indexed, 0], videos[:indexed], folders[:indexed])
    remote.settle(indexed, indexed, reload=True)
    exact = target.index_type in ("FLAT", "BRUTE_FORCE")
    tuning = {"target": used["recall_target"], "size": n,
              **({"recall": 1.0, "exact": True} if exact else
                 {"skipped": "under 40 vectors" if knob else f"no knob of Milvus {target.index_type} is tuned here"})}
    if len(held):
        k = min(TUNE_K, indexed - 1)
        _, truth = faiss.knn(matrix[indexed:], matrix[:indexed], k, metric=faiss.METRIC_INNER_PRODUCT)
        bundle = vectors.IndexBundle(None, ids, {"params": used, "dim": dim}, "new", remote=remote)
        fixed = {key: v for key, v in params.items() if key == knob}
        tuning = {**tune(bundle, matrix[indexed:], truth, used["recall_target"], fixed), "size": n}
        remote.upsert(rows[indexed:], matrix[indexed:], ids[indexed:, 0], videos[indexed:], folders[indexed:])
        remote.settle(n, n)
    now = _now()
    meta = {**identity, "count": n, "rows": n, "tombstones": 0, "trained_size": n, "params": used, "tuning": tuning,
            "signature": catalogue.signature, "created": now, "built": now, "updates": 0, "reason": reason,
            **milvus_store.meta_of(remote, built)}
    rerank = matrix.astype(np.float16)
    del matrix
    generation = vectors.save_generation(index_dir, None, ids, meta, rerank=rerank, tags=tags)
    _published(index_dir)
    return Outcome(n, True, True, n, 0, reason, generation)


def _update_milvus(index_dir: Path, current: vectors.IndexBundle, catalogue: Catalogue, plan: Plan,
                   identity: dict | None) -> Outcome:
    """The current Milvus generation changed in its own collection: rows an unfinished earlier update left are
    trimmed, removed rows deleted (tombstones in ids.npy: rows are never renumbered), new rows upserted after the
    last one; published once Milvus holds exactly the new generation's live rows."""
    assert current.tags is not None and current.remote is not None
    remote = current.remote
    ids, tags = current.ids.copy(), current.tags.copy()
    first = len(ids)
    new = catalogue.load(plan.add) if len(plan.add) else np.zeros((0, current.dim), np.float32)
    videos, folders = _fields(catalogue, plan.add)
    remote.trim(first)
    if len(plan.remove):
        remote.delete(plan.remove)
        ids[plan.remove, 0] = vectors.KIND_REMOVED
    remote.upsert(np.arange(first, first + len(plan.add), dtype=np.int64), new, catalogue.ids[plan.add, 0], videos,
                  folders)
    ids = np.concatenate([ids, catalogue.ids[plan.add]])
    tags = np.concatenate([tags, catalogue.tags[plan.add]])
    live = int((ids[:, 0] >= 0).sum())
    remote.settle(len(ids), live)
    new16 = new.astype(np.float16)
    rerank = vectors.appended_segments(vectors.segment_paths(current), new16)
    params = dict(current.meta["params"])
    meta = _updated_meta(current, catalogue, plan, identity, ids, live, params)
    measured = int(current.meta.get("tuning", {}).get("size", live) or 1)
    if _milvus_knob(params.get("index", "")) and live > 1 and not 1 / RETUNE_DRIFT <= live / measured <= RETUNE_DRIFT:
        store = vectors.Segments([current.rerank, new16])
        meta["tuning"] = _retune(vectors.IndexBundle(None, ids, {"params": params, "dim": current.dim}, "new", store,
                                                     remote=remote))
    generation = vectors.save_generation(index_dir, None, ids, meta, rerank=rerank, tags=tags)
    _published(index_dir)
    return Outcome(live, True, False, len(plan.add), len(plan.remove), meta["reason"], generation)


def _retune(bundle: vectors.IndexBundle) -> dict:
    """Measure again after the size moved: the queries are a sample of the index's own rows (dropped from their
    answers), the vectors come from the generation itself. Cheaper than a rebuild, a little optimistic for HNSW."""
    rows = bundle.live_rows
    data = vectors.stored_vectors(bundle, rows)
    pick = np.sort(np.random.default_rng(len(bundle.ids)).choice(len(rows), min(TUNE_QUERIES, len(rows)),
                                                                 replace=False))
    k = min(TUNE_K, len(rows) - 1)
    _, nn = faiss.knn(data[pick], data, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    truth = np.stack([r[r != o][:k] for r, o in zip(rows[nn], rows[pick], strict=True)])
    queries = data[pick]
    del data
    params = bundle.meta["params"]
    return {**tune(bundle, queries, truth, params.get("recall_target", RECALL_TARGET), own=rows[pick]),
            "size": len(rows)}


def _updated_meta(current: vectors.IndexBundle, catalogue: Catalogue, plan: Plan, identity: dict | None,
                  ids: np.ndarray, live: int, params: dict) -> dict:
    """meta.json of a generation made from `current` by adding and removing rows (FAISS and Milvus alike)."""
    return {**current.meta, **(identity or {}), "count": live, "rows": len(ids),
            "tombstones": int((ids[:, 0] < 0).sum()), "signature": catalogue.signature, "created": _now(),
            "updates": int(current.meta.get("updates", 0)) + 1, "params": params,
            "reason": f"{len(plan.add)} added, {len(plan.remove)} removed"}


def _now() -> str:
    return datetime.now(UTC).isoformat()


# -- recall as a setting ------------------------------------------------------------------------------
def tune(bundle: vectors.IndexBundle, queries: np.ndarray, truth: np.ndarray, target: float = RECALL_TARGET,
         fixed: dict | None = None, own: np.ndarray | None = None) -> dict:
    """Choose the cheapest query knobs (nprobe; nprobe and re-rank depth for IVF-PQ; efSearch) whose recall@k
    (k = truth's width) reaches `target`, and write them into bundle.meta["params"] and the index; returns what was
    measured. `truth`: each query's exact top k rows. `own`: when the queries are rows of the index themselves
    (a re-measurement after growth), their rows, dropped from both the answers (searched k+1 deep) and the truth.
    A setting reaches the target when the sample's mean minus two standard errors does."""
    params = bundle.meta["params"]
    kind, k = params["type"], truth.shape[1]
    if kind == "milvus":  # Milvus HNSW is tuned as HNSW (ef), its IVF types as IVF (nprobe)
        kind = {"efSearch": "hnsw", "nprobe": "ivf"}[_milvus_knob(params["index"])]
    start = time.perf_counter()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    own = np.full(len(q), -2, np.int64) if own is None else np.asarray(own, dtype=np.int64)
    fixed = fixed or {}
    if kind == "ivfpq":
        chosen, tried = _tune_ivfpq(bundle, q, own, truth, k, target, fixed)
    else:
        knob = "nprobe" if kind == "ivf" else "efSearch"
        grid = [v for v in NPROBE_GRID if v < params.get("nlist", 1)] + [params.get("nlist", 1)] if kind == "ivf" \
            else [v for v in EF_GRID if v >= k] or [k]
        tried = []
        for value in [fixed[knob]] if knob in fixed else grid:
            r = _recalls(vectors.search(bundle, q, k + 1, params={knob: value})[1], own, truth, k)
            tried.append({knob: value, "recall": round(float(r.mean()), 4)})
            if _meets(r, target):
                break
        chosen = {knob: value}
    params.update(chosen)
    vectors.apply_search_params(bundle.index, params)
    final = _recalls(vectors.search(bundle, q, k + 1)[1], own, truth, k)
    if not _meets(final, target):
        log.warning("%s: no setting tried reaches recall@%d %.3f (best %.4f with %s)", kind, k, target,
                    final.mean(), chosen)
    return {"target": target, "recall": round(float(final.mean()), 4), "recall_low": round(_low(final), 4),
            "reached": bool(_meets(final, target)), "k": k, "queries": len(q), "held_out": bool((own < 0).all()),
            "chosen": chosen, "tried": tried, "seconds": round(time.perf_counter() - start, 2)}


def _tune_ivfpq(bundle: vectors.IndexBundle, q: np.ndarray, own: np.ndarray, truth: np.ndarray, k: int,
                target: float, fixed: dict) -> tuple[dict, list]:
    """For each re-rank depth R the least nprobe reaching the target, then the pair with the lowest measured
    single-query latency. Exact re-ranking keeps a true neighbour exactly when it is among the first R PQ candidates,
    so one PQ search per nprobe measures every R without re-scoring. The nprobe sweep stops at 4x the first nprobe
    that reached the target with any R."""
    nlist, n = bundle.meta["params"]["nlist"], bundle.size
    nprobes = [fixed["nprobe"]] if "nprobe" in fixed else [v for v in NPROBE_GRID if v < nlist] + [nlist]
    depths = [fixed["rerank"]] if "rerank" in fixed else sorted({min(r, n) for r in RERANK_GRID if r > k}) or [n]
    reached: dict[int, int] = {}
    tried: list[dict] = []
    for nprobe in nprobes:
        if reached and nprobe > 4 * min(reached.values()):
            break
        sp = faiss.SearchParametersIVF()
        sp.nprobe = nprobe
        _, cand = bundle.index.search(q, max(depths), params=sp)
        cand = np.where(cand == own[:, None], -1, cand)  # the query's own row takes no place among the k
        rank = np.full(truth.shape, np.iinfo(np.int64).max)  # where each true neighbour comes among the candidates
        for i in range(len(q)):
            at = np.flatnonzero(np.isin(cand[i], truth[i]))
            rank[i, :len(at)] = at
        for depth in [d for d in depths if d not in reached]:
            r = (rank < depth).sum(axis=1) / k
            tried.append({"nprobe": nprobe, "rerank": depth, "recall": round(float(r.mean()), 4)})
            if _meets(r, target):
                reached[depth] = nprobe
        if len(reached) == len(depths):
            break
    if not reached:
        best = max(tried, key=lambda t: t["recall"])
        return {"nprobe": best["nprobe"], "rerank": best["rerank"]}, tried
    timed = sorted((_latency_ms(bundle, q, {"nprobe": p, "rerank": d}), d, p) for d, p in reached.items())
    tried += [{"nprobe": p, "rerank": d, "latency_ms": round(ms, 3)} for ms, d, p in timed]
    # the served path re-ranks from float16: a pair on the edge may miss by a hair there; confirm the fastest pairs in
    # turn (each with up to two more nprobe steps) and keep the first that holds
    checked = []
    for _, depth, nprobe in timed:
        for more in [nprobe] + [v for v in nprobes if v > nprobe][:2]:
            choice = {"nprobe": more, "rerank": depth}
            r = _recalls(vectors.search(bundle, q, k + 1, params=choice)[1], own, truth, k)
            tried.append({**choice, "served_recall": round(float(r.mean()), 4)})
            checked.append((_low(r), choice))
            if _meets(r, target):
                return choice, tried
    return max(checked, key=lambda c: c[0])[1], tried


def _latency_ms(bundle: vectors.IndexBundle, q: np.ndarray, params: dict, count: int = 60) -> float:
    """Median single-query time through vectors.search (the server's code), k = TUNE_K."""
    for x in q[:5]:
        vectors.search(bundle, x[None, :], TUNE_K, params=params)
    times = []
    for x in q[:count]:
        t = time.perf_counter()
        vectors.search(bundle, x[None, :], TUNE_K, params=params)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def _recalls(found: np.ndarray, own: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Per query: the share of its exact top k (own row excluded) among the first k results other than itself."""
    counted = (found != own[:, None]) & (found >= 0)
    counted &= np.cumsum(counted, axis=1) <= k
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2)
    return (hits & counted).sum(axis=1) / k


def _low(r: np.ndarray) -> float:
    return float(r.mean() - (2 * r.std(ddof=1) / math.sqrt(len(r)) if len(r) > 1 else 0.0))


def _meets(r: np.ndarray, target: float) -> bool:
    return _low(r) >= target
