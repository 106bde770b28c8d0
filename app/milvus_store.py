"""Keyframe and image vectors in a Milvus collection instead of local FAISS files (`--vectors milvus`).

The generation machinery of app.vectors stays the source of truth for rows: a Milvus generation folder holds ids.npy,
tags.npy, meta.json (backend, the URI without credentials, the collection, the model) and the float16 copy of its
vectors, but no index.faiss. The Milvus primary key `row` IS the generation's row number, so a Milvus hit is a snapshot
row with no mapping: an incremental update appends rows after the last one and deletes removed rows (they stay
tombstones in ids.npy), and only a rebuild renumbers, into a NEW collection whose name carries a build id.

Why the local float16 copy (1 KB per 512-d vector, memory-mapped, shared between generations by hard link as IVF-PQ's
re-rank segments are): `vectors.vector_of` is called row by row ("more like this", and app.fusion ranking every
word-matched row by picture), where a Milvus round trip per row would cost milliseconds each, and the generation stays
one self-contained revision while a re-index rewrites the feature files.

Consistency: everything is written (upsert, so a rerun after a crash rewrites the same rows), flushed and counted
(strong consistency) before the CURRENT pointer moves; a reader of an older generation never gets rows past its own
(an answer that reaches past them is asked again with `row < its rows`), so rows appended for the next generation
never reach it; a collection is dropped only when no kept generation names
it (one generation after it stopped being current, so a server still serving it has switched). Scalar fields `video`,
`folder` and `kind` let the video and folder filters run inside Milvus; filters that change without a re-index
(labels, people, objects) go as `row in [...]`. Every collection this data dir created is listed in
feature/index/milvus.json before it is created, so one left by a killed run is dropped by a later one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from app import atomic
from app.vectors import KIND_REMOVED, Filter, IndexBundle, IndexDamaged

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)

BACKENDS = ("faiss", "milvus")
INDEX_TYPES = ("AUTOINDEX", "FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "IVF_RABITQ", "HNSW", "HNSW_SQ", "HNSW_PQ",
               "HNSW_PRQ", "DISKANN", "SCANN", "GPU_CAGRA", "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_BRUTE_FORCE")
URI_SCHEMES = ("http", "https", "tcp", "unix", "grpc")
DEFAULT_INDEX = "HNSW"
LEDGER = "milvus.json"  # in the index folder: the collections this data dir created and has not dropped yet
IDENTITY_KEY = "framefinder.identity"  # collection property: the model (and dimension) its vectors come from
OWNER_KEY = "framefinder.owner"  # collection property: the index folder that made it (and alone may drop it)
IDENTITY_FIELDS = ("model", "pretrained", "weights_fingerprint", "dim")
CALL_TIMEOUT_S = 60.0  # each Milvus call, retries included (pymilvus otherwise retries for minutes)
BUILD_TIMEOUT_S = 3600.0  # flushing (index builds) and loading a collection: minutes for millions of vectors
BATCH_ROWS = 2000  # rows per upsert (about 4 MB of 512-d float32)
MAX_TOPK = 16384  # Milvus's limit on k and on queries per call
EF_KNOBS = ("HNSW", "HNSW_SQ", "HNSW_PQ", "HNSW_PRQ")  # index types searched with ef (efSearch)
NPROBE_KNOBS = ("IVF_FLAT", "IVF_SQ8", "IVF_PQ", "IVF_RABITQ", "GPU_IVF_FLAT", "GPU_IVF_PQ", "SCANN")
FLOOR = -np.finfo(np.float32).max  # the score FAISS gives an empty slot
SETTING = "MILVUS_URI / --milvus-uri"
# keepalive pings every 2 minutes during a call, not pymilvus's 10 s: a gRPC server in Python (Milvus Lite) answers
# frequent pings on a long silent call (an index build) with GOAWAY "too_many_pings"; a dead server is found by timeouts
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 120_000, "grpc.keepalive_permit_without_calls": False}
INDEX_HINT = ("; choose an index type this Milvus offers with milvus_index / --milvus-index / FRAMEFINDER_MILVUS_INDEX "
              "(Milvus Lite builds FLAT, HNSW, HNSW_SQ, IVF_FLAT, IVF_SQ8 and AUTOINDEX)")


class MilvusUnavailable(IndexDamaged):
    """Milvus cannot be reached (or a Milvus Lite file cannot be opened): one sentence naming the URI setting."""


class MilvusMismatch(IndexDamaged):
    """The Milvus collection a generation names holds vectors of another model or dimension, or is not ours."""


class MilvusRefused(IndexDamaged):
    """Milvus answered but refused what was asked (an index type it lacks, a write that did not land)."""


# -- what the settings ask for ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where a build writes: the Milvus URI (credentials allowed) and the index type Milvus builds."""

    uri: str
    index_type: str = DEFAULT_INDEX

    @property
    def public_uri(self) -> str:
        return public_uri(self.uri)


@dataclass(frozen=True)
class Choice:
    """The vector settings of this process; None where not given (then the collection's own index decides)."""

    backend: str | None = None
    uri: str | None = None
    index_type: str | None = None


_choice = Choice()


def configure(settings: object | None) -> None:
    """Remember the vector settings of this run (offline.py calls it once; None forgets them). A setting left unset
    follows the collection: a collection in Milvus stays there, a new one starts in FAISS."""
    global _choice
    if settings is None:
        _choice = Choice()
        return
    backend = getattr(settings, "vectors", None)
    if backend not in (None, *BACKENDS):
        raise ValueError(f"vectors must be faiss or milvus, not {backend!r}")
    index_type = getattr(settings, "milvus_index", None)
    index_type = check_index_type(index_type) if index_type else None
    uri = getattr(settings, "milvus_uri", None) or None
    if uri is not None:
        check_uri(uri)
    _choice = Choice(backend, uri, index_type)


def check_index_type(index_type: str) -> str:
    """The index type in Milvus's spelling, or a sentence naming the setting and the types Milvus has."""
    found = index_type.strip().upper()
    if found not in INDEX_TYPES:
        raise ValueError(f"milvus_index (--milvus-index, FRAMEFINDER_MILVUS_INDEX) names no Milvus index type: "
                         f"{found[:60]!r}; Milvus has {', '.join(INDEX_TYPES)} (each Milvus builds some of them)")
    return found


def check_uri(uri: str) -> None:
    """A Milvus URL or a Milvus Lite file, else a sentence (pymilvus would call a typo 'unreachable')."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ("unix" if uri.startswith("unix:") else None)
    bad_port = False
    if scheme in ("http", "https", "tcp", "grpc"):
        try:
            parts = urlsplit(uri)
            bad_port = not parts.hostname or parts.port == 0
        except ValueError:  # a port out of range or not a number, a broken IPv6 address
            bad_port = True
    if len(uri) > 2000 or bad_port or (
            scheme not in URI_SCHEMES and not (scheme is None and uri.endswith(".db"))):
        raise ValueError(f"MILVUS_URI / --milvus-uri takes a Milvus URL (http://host:19530, https://..., tcp://..., "
                         f"unix:...) or a Milvus Lite file ending in .db, not {uri.rsplit('@', 1)[-1][:200]!r}")


def choice() -> Choice:
    """The vector settings configure() was given (all None when none were)."""
    return _choice


def target_for(current_meta: dict | None, chosen: Choice | None = None) -> Target | None:
    """The Milvus a build should write to, or None for FAISS: the settings where given, else the current index's.
    A URI is needed only for Milvus: asking for milvus without one is refused with the setting's name."""
    chosen = chosen or _choice
    in_milvus = (current_meta or {}).get("backend") == "milvus"
    backend = chosen.backend or ("milvus" if in_milvus else "faiss")
    if backend != "milvus":
        return None
    held = (current_meta or {}).get("milvus", {}) if in_milvus else {}
    uri = chosen.uri or os.environ.get("MILVUS_URI") or held.get("uri")
    if not uri:
        raise ValueError("vectors=milvus needs the Milvus to use: set MILVUS_URI or pass --milvus-uri "
                         "(http://host:19530, or a Milvus Lite file such as /data/milvus.db)")
    return Target(uri, chosen.index_type or held.get("index") or DEFAULT_INDEX)


def current_meta(index_dir: Path) -> dict | None:
    """meta.json of the generation CURRENT names, without loading it (None when there is none or it is unreadable)."""
    try:
        name = (index_dir / "CURRENT").read_text().strip()
        return json.loads((index_dir / name / "meta.json").read_text()) if name else None
    except (OSError, ValueError):
        return None


def check_place(index_dir: Path, target: Target) -> None:
    """A Milvus Lite file inside the index folder would be deleted with the old generations: refused."""
    if "://" in target.uri:
        return
    lite, folder = Path(public_uri(target.uri)), index_dir.resolve()
    if lite == folder or folder in lite.parents:
        raise ValueError(f"the Milvus Lite file {lite} ({SETTING}) lies inside the index folder {folder}, whose old "
                         f"generations are deleted: put it elsewhere, e.g. {folder.parent.parent / 'milvus.db'}")


def preflight(index_dir: Path) -> None:
    """Before an index run does any work: the Milvus its vectors go to answers (else MilvusUnavailable naming the
    setting), and milvus without a URI is refused (ValueError). Nothing at all for FAISS."""
    target = target_for(current_meta(index_dir))
    if target is None:
        return
    check_place(index_dir, target)
    made = client(target.uri)
    if not _reachable(made):
        raise MilvusUnavailable(f"Milvus at {target.public_uri} ({SETTING}) does not answer; nothing was indexed: "
                                f"start it, or point {SETTING} at one that runs, and run the same command again")


def public_uri(uri: str) -> str:
    """The URI as meta.json and messages show it: no user, password or query (a token); a Lite file as an absolute
    path."""
    if "://" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _connect_uri(public: str) -> str:
    """The URI to connect to for a collection recorded under `public`: the configured (or environment's) one when
    it names the same Milvus, since it may carry the credentials meta.json leaves out; else the recorded one. A
    generation's vectors are where it says; a new MILVUS_URI takes effect with the next `offline.py index`, which
    rebuilds there."""
    for uri in (_choice.uri, os.environ.get("MILVUS_URI")):
        if uri and public_uri(uri) == public:
            return uri
    return public


# -- connections and errors ------------------------------------------------------------------------------------
_clients: dict[str, MilvusClient] = {}


def _lite_hint(uri: str) -> str:
    return (" (a Milvus Lite file serves one process at a time: stop the other process that has it open, or serve it "
            "with `python -m milvus_lite server --data-dir DIR` and point MILVUS_URI at that)"
            if uri.endswith(".db") else "")


def _reason(exc: BaseException) -> str:
    """pymilvus's own words, without the user, password or token of any URI they repeat."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = re.sub(r"(?<=://)[^/\s@]*@", "", str(text))
    text = re.sub(r"([?&](?:token|password|secret)=)[^&\s]*", r"\1***", text, flags=re.IGNORECASE)
    return " ".join(text.split())[:300]


def client(uri: str) -> MilvusClient:
    """One MilvusClient per URI for the process (a Milvus Lite file starts its embedded server once); one that lost
    its server is dropped by _guard, so the next call connects afresh once Milvus is back."""
    found = _clients.get(uri)
    if found is not None:
        return found
    if uri.endswith(".db") and not Path(uri).expanduser().parent.is_dir():
        raise MilvusUnavailable(f"the Milvus Lite file {public_uri(uri)} ({SETTING}) cannot be made: its folder "
                                f"does not exist")
    try:
        MilvusClient = _import_client()
        made = MilvusClient(uri=os.path.expanduser(uri) if uri.endswith(".db") else uri, timeout=CALL_TIMEOUT_S,
                            dedicated=True,  # its own channel: closing it lets a fresh one connect at once
                            grpc_options=GRPC_OPTIONS)
    except ImportError as exc:
        raise MilvusUnavailable(f"vectors=milvus needs pymilvus (and milvus-lite for a .db file): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pymilvus raises its own and gRPC errors: all mean "not reachable"
        raise MilvusUnavailable(f"Milvus at {public_uri(uri)} ({SETTING}) cannot be reached: {_reason(exc)}"
                                f"{_lite_hint(uri)}") from None
    _clients[uri] = made
    return made


def _import_client():
    """pymilvus reads MILVUS_URI itself when imported and refuses a Milvus Lite path there; ours is read by the
    settings, so pymilvus is imported without it."""
    saved = os.environ.pop("MILVUS_URI", None)
    try:
        from pymilvus import MilvusClient
    finally:
        if saved is not None:
            os.environ["MILVUS_URI"] = saved
    quiet_logs()
    return MilvusClient


def quiet_logs() -> None:
    """pymilvus logs each failed call with its traceback (and configures its loggers when imported, so this comes
    after the import), and Milvus Lite's embedded gRPC server logs a traceback for a call it does not implement on
    every first write: the failures become one sentence here (_guard), their logs only repeat or confuse it."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("pymilvus", "milvus_lite")]
    for name in ("pymilvus", "milvus_lite", "grpc._server", *names):  # children set their own levels
        logging.getLogger(name).setLevel(logging.CRITICAL)


def reset() -> None:
    """Forget every connection (tests; a process that must see Milvus as a fresh one would)."""
    for uri in list(_clients):
        _forget(uri)


def _forget(uri: str) -> None:
    made = _clients.pop(uri, None)
    try:
        if made is not None:
            made.close()
    except Exception:  # noqa: BLE001, S110 - closing a dead connection has nothing left to do
        pass


def _reachable(made: MilvusClient) -> bool:
    try:
        made.get_server_version(timeout=5)
        return True
    except Exception:  # noqa: BLE001 - any failure of the cheapest call means the server is not answering
        return False


@contextlib.contextmanager
def _guard(uri: str, made: MilvusClient | None, what: str, hint: str = "") -> Iterator[None]:
    """Milvus errors as one sentence: unreachable (naming the URI setting) or refused (naming what was asked)."""
    try:
        yield
    except IndexDamaged:
        raise
    except Exception as exc:  # noqa: BLE001 - pymilvus, gRPC and milvus-lite raise unrelated types
        reason = _reason(exc)
        if made is None or not _reachable(made):
            _forget(uri)
            raise MilvusUnavailable(f"Milvus at {public_uri(uri)} ({SETTING}) cannot be reached while {what}: "
                                    f"{reason}{_lite_hint(uri)}") from None
        if "DEADLINE_EXCEEDED" in reason or "Retry timeout" in reason:
            raise MilvusUnavailable(f"Milvus at {public_uri(uri)} ({SETTING}) did not finish {what} in the time "
                                    f"allowed: {reason}") from None
        raise MilvusRefused(f"Milvus at {public_uri(uri)} refused {what}: {_reason(exc)}{hint}") from None


# -- one collection -----------------------------------------------------------------------------------------------
def _identity(meta: dict) -> dict:
    return {key: meta.get(key) for key in IDENTITY_FIELDS}


def _describe(identity: dict) -> str:
    weights = f"{identity.get('model')} {identity.get('pretrained')}"
    fingerprint = identity.get("weights_fingerprint")
    return f"{weights}{f' (weights {str(fingerprint)[:12]})' if fingerprint else ''}, {identity.get('dim')} dimensions"


class Remote:
    """A Milvus collection as a generation uses it: searches, and (for the writer) row writes."""

    def __init__(self, uri: str, name: str, dim: int, index_type: str) -> None:
        self.uri, self.name, self.dim, self.index_type = uri, name, int(dim), index_type
        self._loaded_by: MilvusClient | None = client(uri)  # open_remote and create leave it loaded

    @property
    def client(self) -> MilvusClient:
        """The process's connection to this Milvus: a fresh one after the server went away, and then the collection
        is loaded again first (a restarted Milvus Lite comes back with its collections released)."""
        made = client(self.uri)
        if made is not self._loaded_by:
            with _guard(self.uri, made, f"loading collection {self.name}"):
                made.load_collection(self.name, timeout=BUILD_TIMEOUT_S)
            self._loaded_by = made
        return made

    def __repr__(self) -> str:
        return f"Remote({public_uri(self.uri)!r}, {self.name!r}, {self.index_type})"

    def guard(self, what: str, hint: str = "") -> contextlib.AbstractContextManager[None]:
        """Milvus errors of this collection's calls as one sentence (see _guard)."""
        return _guard(self.uri, self.client, f"{what} (collection {self.name})", hint)

    # searching
    def search(self, bundle: IndexBundle, queries: np.ndarray, k: int, allowed: np.ndarray | Filter | None = None,
               params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """vectors.search for a Milvus generation: (scores, rows) best first, -1 where fewer than k exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        n = len(bundle.ids)
        if n == 0 or k <= 0 or not len(queries):
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = min(k, n)
        if k > MAX_TOPK:  # deeper than Milvus answers (an evaluation's full ranking): exact, from the float16 copy
            return _exact(bundle, queries, k, allowed)
        scores = np.full((len(queries), k), FLOOR, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        expr = expression(n, allowed)
        if expr is None:  # the filter keeps nothing
            return scores, rows
        knobs = {**bundle.meta.get("params", {}), **(params or {})}
        search_params: dict = {"metric_type": "IP", "params": {}}
        if self.index_type in EF_KNOBS:
            search_params["params"]["ef"] = max(k, int(knobs.get("efSearch", 64)))
        elif self.index_type in NPROBE_KNOBS and "nprobe" in knobs:
            search_params["params"]["nprobe"] = int(knobs["nprobe"])
        # Unfiltered, the search goes without the `row < rows` bound (a scan of every row's key in Milvus Lite): a
        # query whose answer reaches past this generation's rows (the next generation being written or just
        # published) is asked again with it. Filtered searches carry the bound in their expression.
        unbounded = expr == f"row < {n}"
        ask = np.arange(len(queries))
        for bounded in ((False, True) if unbounded else (True,)):
            again = []
            for start in range(0, len(ask), MAX_TOPK):
                chunk = ask[start:start + MAX_TOPK]
                with self.guard("a search"):
                    found = self.client.search(self.name, data=queries[chunk], limit=k,
                                               filter=expr if bounded else "", output_fields=["row"],
                                               search_params=search_params, timeout=CALL_TIMEOUT_S)
                for i, hits in zip(chunk.tolist(), found, strict=True):
                    got = [(int(hit["row"]), hit["distance"]) for hit in hits]
                    if not bounded and any(row >= n for row, _ in got):
                        again.append(i)
                        continue
                    got = [(row, score) for row, score in got if row < n and bundle.ids[row, 0] != KIND_REMOVED]
                    rows[i, :len(got)] = [row for row, _ in got]
                    scores[i, :len(got)] = [score for _, score in got]
            ask = np.array(again, dtype=np.int64)
            if not len(ask):
                break
        return scores, rows

    # writing
    def upsert(self, rows: np.ndarray, vectors: np.ndarray, kinds: np.ndarray, videos: np.ndarray,
               folders: np.ndarray) -> None:
        """Write rows (an upsert: a rerun after a crash writes the same rows again, never twice)."""
        for start in range(0, len(rows), BATCH_ROWS):
            end = start + BATCH_ROWS
            batch = [{"row": int(r), "vector": v, "kind": int(kd), "video": str(vd), "folder": str(fd)}
                     for r, v, kd, vd, fd in zip(rows[start:end].tolist(), vectors[start:end],
                                                 kinds[start:end].tolist(), videos[start:end], folders[start:end],
                                                 strict=True)]
            with self.guard("writing vectors"):
                self.client.upsert(self.name, batch, timeout=CALL_TIMEOUT_S)

    def delete(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), 10_000):
            with self.guard("removing vectors"):
                self.client.delete(self.name, ids=rows[start:start + 10_000].tolist(), timeout=CALL_TIMEOUT_S)

    def trim(self, first: int) -> None:
        """Remove rows from `first` on: rows an unfinished earlier update appended (its generation never became
        current)."""
        with self.guard("removing the rows of an unfinished update"):
            self.client.delete(self.name, filter=f"row >= {int(first)}", timeout=CALL_TIMEOUT_S)

    def count(self, below: int | None = None) -> int:
        """Rows Milvus holds (under `below`), as of now (strong consistency: every write so far is counted). The
        unfiltered count comes from segment statistics; a filtered one scans every key (seconds per 100k rows in
        Milvus Lite)."""
        with self.guard("counting rows"):
            got = self.client.query(self.name, filter="" if below is None else f"row < {int(below)}",
                                    output_fields=["count(*)"], consistency_level="Strong", timeout=CALL_TIMEOUT_S)
        return int(got[0]["count(*)"])

    def settle(self, rows: int, live: int, reload: bool = False) -> None:
        """Make the writes durable and visible, then check Milvus holds exactly the generation's live rows: only then
        may CURRENT name it. `reload`: load the collection afresh as a new reader will (a Milvus that accepts an
        index type it cannot build refuses it here, before anything is published)."""
        with self.guard("flushing"):
            self.client.flush(self.name, timeout=BUILD_TIMEOUT_S)
        if reload:
            self._reload()
        held = self.count()  # every row of the collection: the writer trimmed what lay past `rows`
        if held != live:
            raise MilvusRefused(f"Milvus collection {self.name} at {public_uri(self.uri)} holds {held} of the {live} "
                                f"vectors just written; nothing was published: run the same command again")

    def _reload(self) -> None:
        """Release and load the collection. Milvus Lite builds a segment's index in a background thread after a
        flush, and a load that reads its file half-written fails: such a load is tried again (for up to
        BUILD_TIMEOUT_S); a refusal of the index type itself ("unknown index_type") is not."""
        deadline, pause = time.monotonic() + BUILD_TIMEOUT_S, 0.2
        while True:
            try:
                self.client.release_collection(self.name, timeout=CALL_TIMEOUT_S)
                self.client.load_collection(self.name, timeout=BUILD_TIMEOUT_S)
                return
            except Exception as exc:  # noqa: BLE001 - classified below, by _guard
                if "index_type" in _reason(exc) or time.monotonic() + pause > deadline or \
                        not _reachable(self.client):
                    with self.guard(f"building its {self.index_type} index", INDEX_HINT):
                        raise
                log.info("loading %s again: %s", self.name, _reason(exc))
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def holds(self, rows: int, live: int) -> bool:
        """Whether Milvus holds as many rows under `rows` as the generation has live ones (false after a run was
        killed between removing rows from Milvus and publishing the generation that drops them). The rows past
        `rows` an unfinished update may have left are counted apart only when there are more rows than live ones;
        an equal count that hides both is caught by the update's own final count (that run then stops, and the
        next one rebuilds)."""
        total = self.count()
        return total == live or total > live and self.count(rows) == live


def _exact(bundle: IndexBundle, queries: np.ndarray, k: int,
           allowed: np.ndarray | Filter | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by exact inner product with the generation's float16 vectors, live (and allowed) rows only."""
    keep = bundle.ids[:, 0] >= 0
    if allowed is not None:
        chosen = np.zeros(len(keep), bool)
        listed = np.asarray(allowed, dtype=np.int64)
        chosen[listed[(listed >= 0) & (listed < len(keep))]] = True
        keep &= chosen
    candidates = np.flatnonzero(keep)
    scores = np.full((len(queries), k), FLOOR, np.float32)
    rows = np.full((len(queries), k), -1, np.int64)
    for i, query in enumerate(queries):
        exact = np.concatenate([np.asarray(bundle.rerank[part], np.float32) @ query
                                for part in np.array_split(candidates, max(1, len(candidates) // 65536))])
        best = np.argsort(-exact, kind="stable")[:k]
        scores[i, :len(best)], rows[i, :len(best)] = exact[best], candidates[best]
    return scores, rows


def expression(rows: int, allowed: np.ndarray | Filter | None) -> str | None:
    """The Milvus filter for a search of a generation of `rows` rows; None when the filter keeps nothing."""
    parts = [f"row < {int(rows)}"]
    if isinstance(allowed, Filter):
        if allowed.video is not None:
            parts.append(f"video == {literal(allowed.video)}")
        if allowed.folders is not None:
            if not allowed.folders:
                return None
            parts.append(f"folder in [{', '.join(literal(f) for f in allowed.folders)}]")
        listed = allowed.listed
    else:
        listed = None if allowed is None else np.asarray(allowed, dtype=np.int64)
    if listed is not None:
        listed = np.unique(listed[(listed >= 0) & (listed < rows)])
        if not len(listed):
            return None
        parts.append(f"row in [{','.join(map(str, listed.tolist()))}]")
    return " and ".join(parts)


def literal(text: str) -> str:
    """A string literal of Milvus's filter language (double quotes, C escapes)."""
    escaped = (str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


# -- readers: a generation's collection -------------------------------------------------------------------------
def open_remote(meta: dict) -> Remote:
    """The collection a generation's meta.json names, checked: it exists (else ValueError: this generation cannot be
    loaded, an older one may), holds vectors of the generation's model and dimension (else MilvusMismatch), and is
    loaded for searching."""
    held = meta["milvus"]
    uri = _connect_uri(held["uri"])
    name = held["collection"]
    for attempt in (1, 2):  # a connection cached from before Milvus went away fails once, then a fresh one is made
        made = client(uri)
        try:
            with _guard(uri, made, f"opening collection {name}"):
                exists = made.has_collection(name, timeout=CALL_TIMEOUT_S)
                described = made.describe_collection(name, timeout=CALL_TIMEOUT_S) if exists else None
            break
        except MilvusUnavailable:
            if attempt == 2:
                raise
    if not exists:
        raise ValueError(f"Milvus collection {name} is not at {public_uri(uri)} ({SETTING})")
    check_identity(uri, name, described, _identity(meta))
    with _guard(uri, made, f"loading collection {name}"):
        made.load_collection(name, timeout=BUILD_TIMEOUT_S)
    return Remote(uri, name, int(meta["dim"]), held.get("index", DEFAULT_INDEX))


def check_identity(uri: str, name: str, described: dict, wanted: dict) -> None:
    """Refuse a collection made with another model or dimension (or not by Framefinder), naming the setting."""
    dims = [f.get("params", {}).get("dim") for f in described.get("fields", []) if f.get("name") == "vector"]
    try:
        theirs = json.loads((described.get("properties") or {}).get(IDENTITY_KEY) or described.get("description")
                            or "null")
    except ValueError:
        theirs = None
    if not isinstance(theirs, dict):
        raise MilvusMismatch(f"Milvus collection {name} at {public_uri(uri)} was not made by Framefinder (it has no "
                             f"{IDENTITY_KEY} property); point {SETTING} at the Milvus that holds this collection's "
                             f"vectors, or pass --retrain to write them into a new collection there")
    if dims and int(dims[0]) != int(wanted.get("dim") or 0):
        theirs = {**theirs, "dim": int(dims[0])}
    differs = [key for key in IDENTITY_FIELDS if theirs.get(key) != wanted.get(key)]
    if differs:
        raise MilvusMismatch(f"Milvus collection {name} at {public_uri(uri)} holds vectors of {_describe(theirs)}, "
                             f"but this collection's index is of {_describe(wanted)} ({', '.join(differs)} differ); "
                             f"point {SETTING} at the Milvus that holds this collection's vectors, or pass --retrain "
                             f"to write them into a new collection there")


# -- writers: new collections, and dropping the ones no generation needs ----------------------------------------
def build_params(index_type: str, n: int, params: dict | None) -> dict:
    """Index build parameters Milvus gets: HNSW's M and efConstruction as FAISS uses them, IVF's nlist for the
    size; other types take Milvus's defaults (a `milvus_build` dict in params overrides any of them)."""
    from app.vectors import default_nlist

    params = params or {}
    if index_type in EF_KNOBS:
        built = {"M": int(params.get("M", 32)), "efConstruction": int(params.get("efConstruction", 80))}
    elif index_type in NPROBE_KNOBS:
        built = {"nlist": int(params.get("nlist", default_nlist(n)))}
    else:
        built = {}
    return {**built, **params.get("milvus_build", {})}


def owner(index_dir: Path) -> str:
    """Who may drop a collection: the index folder that created it, by its absolute path. A copied data dir carries
    the same ledger, and without this its next run dropped the original's served collection (found by the attack)."""
    return str(index_dir.resolve())


def create(index_dir: Path, target: Target, identity: dict, dim: int, built: dict) -> Remote:
    """A new, empty collection named with a build id, listed in the ledger first (so a killed run's collection is
    found and dropped later), carrying the model identity as a property and in its description."""
    from pymilvus import DataType, MilvusClient

    check_place(index_dir, target)
    made = client(target.uri)
    name = f"framefinder_{time.strftime('%Y%m%dT%H%M%S')}_{secrets.token_hex(4)}"
    _ledger_add(index_dir, name, target.public_uri)
    stamp = json.dumps({key: identity.get(key) for key in IDENTITY_FIELDS}, sort_keys=True)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=stamp)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
    schema.add_field("kind", DataType.INT8)
    schema.add_field("video", DataType.VARCHAR, max_length=1024)
    schema.add_field("folder", DataType.VARCHAR, max_length=65535)
    index_params = made.prepare_index_params()
    index_params.add_index(field_name="vector", index_type=target.index_type, metric_type="IP", params=built)
    with _guard(target.uri, made, f"creating collection {name} with a {target.index_type} index", INDEX_HINT):
        made.create_collection(name, schema=schema, index_params=index_params, properties={IDENTITY_KEY: stamp,
                                                                                    OWNER_KEY: owner(index_dir)},
                               timeout=CALL_TIMEOUT_S)
    return Remote(target.uri, name, dim, target.index_type)


def _ledger_path(index_dir: Path) -> Path:
    return index_dir / LEDGER


def _ledger(index_dir: Path) -> dict[str, str]:
    try:
        return dict(json.loads(_ledger_path(index_dir).read_text()).get("collections", {}))
    except (FileNotFoundError, ValueError, AttributeError):
        return {}


def _ledger_write(index_dir: Path, collections: dict[str, str]) -> None:
    index_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(_ledger_path(index_dir), json.dumps({"collections": collections}, indent=2, sort_keys=True))


def _ledger_add(index_dir: Path, name: str, public: str) -> None:
    _ledger_write(index_dir, {**_ledger(index_dir), name: public})


def retire(index_dir: Path) -> list[str]:
    """Drop the collections this data dir created that no generation folder names any more (the index keeps the
    current generation and the one before it); returns the names dropped. A Milvus that cannot be reached keeps its
    entries for a later run, with a warning: the served index is not affected."""
    if not _ledger_path(index_dir).is_file():
        return []
    listed = _ledger(index_dir)
    named = set()
    for meta_file in index_dir.glob("*/meta.json"):
        if meta_file.parent.name.startswith("."):
            continue
        try:
            named.add(json.loads(meta_file.read_text()).get("milvus", {}).get("collection"))
        except (OSError, ValueError):
            return []  # a generation that cannot be read may still name one: drop nothing this time
    dropped, forgotten = [], False
    for name, public in sorted(listed.items()):
        if name in named:
            continue
        uri = _connect_uri(public)
        try:
            made = client(uri)
            with _guard(uri, made, f"dropping collection {name}"):
                if made.has_collection(name, timeout=CALL_TIMEOUT_S):
                    made_by = (made.describe_collection(name, timeout=CALL_TIMEOUT_S).get("properties") or {}
                               ).get(OWNER_KEY)
                    if made_by is not None and made_by != owner(index_dir):
                        log.warning("Milvus collection %s was made by %s, not this data dir: left to it", name,
                                    made_by)
                    else:
                        made.drop_collection(name, timeout=CALL_TIMEOUT_S)
                        dropped.append(name)
        except IndexDamaged as exc:
            log.warning("Milvus collection %s is no longer used but was not dropped: %s", name, exc)
            continue
        listed.pop(name)
        forgotten = True
    if forgotten:
        _ledger_write(index_dir, listed)
    return dropped


def drop_all(index_dir: Path) -> list[str]:
    """Drop every collection this index folder created (removing a collection for good; benches and tests)."""
    dropped = []
    for name, public in sorted(_ledger(index_dir).items()):
        uri = _connect_uri(public)
        made = client(uri)
        with _guard(uri, made, f"dropping collection {name}"):
            made.drop_collection(name, timeout=CALL_TIMEOUT_S)
        dropped.append(name)
    if dropped:
        _ledger_write(index_dir, {})
    return dropped


def meta_of(remote: Remote, built: dict) -> dict:
    """What meta.json records of the Milvus side (no credentials)."""
    return {"backend": "milvus", "milvus": {"uri": public_uri(remote.uri), "collection": remote.name,
                                            "index": remote.index_type, "metric": "IP", "build": built}}
