"""Scoring retrieval against a ground-truth set: one code path for the page and for the CLI.

For each query: build its vector (the box region of the query image, or its text),
rank the collection with the configuration under test (the served CLIP index, or a
torchvision baseline over the same items), label the ranking per protocol, and
compute the metrics of app.metrics. Equal scores keep collection order (FAISS row),
so a run is repeatable. Rankings go `depth` deep (the whole collection up to 10,000
items, else 1,000); positives below it count as not retrieved, as in a top-K list.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from app import atomic, metrics, vectors
from app.collection import Entry, Snapshot
from app.groundtruth import GroundTruth, GroundTruthError, GtQuery
from app.media import IMAGE_EXTENSIONS
from app.paths import DataLayout

FULL_RANKING_UP_TO = 10_000
DEFAULT_DEPTH = 1000
SHOWN = 100  # ranked results kept per query for the page
Progress = Callable[[int, int], None]


@dataclass
class Config:
    """What is being evaluated: 'clip' (the served index) or a baseline such as 'tv:vgg16'."""

    model: str = "clip"
    pretrained: str = ""
    index_type: str = "flat"
    depth: int | None = None


@dataclass
class EvalResult:
    gt_name: str
    gt_format: str
    gt_source: str
    protocol: str
    config: Config
    summary: dict[str, dict]  # protocol -> metrics
    queries: list[dict]
    seconds: float = 0.0
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def headline(self) -> dict:
        return self.summary[self.protocol]

    def per_query_ap(self, protocol: str | None = None) -> dict[str, float | None]:
        protocol = protocol or self.protocol
        return {q["qid"]: q["ap"].get(protocol) for q in self.queries}

    def json_line(self) -> str:
        """The CLI's last line: headline mAP, per-query APs, and every protocol's numbers."""
        return json.dumps({"mAP": json_safe(self.headline["mAP"]), "protocol": self.protocol,
                           "ground_truth": self.gt_name, "model": self.config.model,
                           "pretrained": self.config.pretrained, "index": self.config.index_type,
                           "per_query": self.per_query_ap(), "summary": json_safe(self.summary)}, sort_keys=True)


def json_safe(value):
    """NaN (no positives anywhere) becomes null in JSON, at any depth of dicts and lists."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


# -- naming collection items the way the ground truth does ----------------------------------------------
def item_names(gt: GroundTruth, entries: list[Entry]) -> list[str | None]:
    """Per FAISS row: the name the ground truth would use for that item (None: not an item)."""
    names: list[str | None] = []
    for e in entries:
        if e.kind < 0:
            names.append(None)
        elif gt.format == "moments" or e.video_id is not None:
            names.append(e.item)
        elif gt.format == "annotations":
            names.append(e.source_path)  # boxes on images name the image by its path
        elif gt.format == "labelled" and gt.root is not None:
            p = Path(e.source_path).resolve()
            names.append(p.relative_to(gt.root).with_suffix("").as_posix() if p.is_relative_to(gt.root) else e.item)
        else:
            names.append(Path(e.source_path).stem)
    return names


def _oxford_alias(name: str, known: set[str]) -> str:
    """Oxford query files say 'oxc1_all_souls_000013' for the image all_souls_000013."""
    if name not in known and "_" in name and name.split("_", 1)[1] in known:
        return name.split("_", 1)[1]
    return name


def _find_query_file(name: str, queries_dir: Path | None) -> Path | None:
    if queries_dir is None:
        return None
    for ext in sorted(IMAGE_EXTENSIONS):
        for candidate in (queries_dir / f"{name}{ext}", queries_dir / f"{name}{ext.upper()}"):
            if candidate.resolve().is_relative_to(queries_dir.resolve()) and candidate.is_file():
                return candidate
    return None


@dataclass
class _Prepared:
    names: list[str | None]
    row_of_name: dict[str, int]
    query_files: dict[str, Path]  # qid -> query image file


def prepare(gt: GroundTruth, snap: Snapshot, layout: DataLayout, queries_dir: Path | None) -> _Prepared:
    """Map names to collection rows and find every query image; unknown names are an error that
    names the file and line where they appear."""
    names = item_names(gt, snap.entries)
    row_of_name: dict[str, int] = {}
    for row, name in enumerate(names):
        if name is not None:
            row_of_name.setdefault(name, row)
    known = set(row_of_name)
    if gt.format != "moments":
        unknown = sorted(n for q in gt.queries for s in q.sets.values() for n in s if n not in known)
        if unknown:
            first = unknown[0]
            raise GroundTruthError(f"{gt.where.get(first, gt.source)}: unknown image '{first}' (not in the indexed "
                                   f"collection){f', and {len(unknown) - 1} more' if len(unknown) > 1 else ''}")
    query_files: dict[str, Path] = {}
    for q in gt.queries:
        if q.image is None:
            continue
        name = _oxford_alias(q.image, known)
        found = _find_query_file(q.image, queries_dir) or _find_query_file(name, queries_dir)
        if found is None and gt.root is not None:
            found = next((p for p in (gt.root / f"{q.image}{ext}" for ext in IMAGE_EXTENSIONS) if p.is_file()), None)
        if found is None and name in row_of_name:
            entry = snap.entries[row_of_name[name]]
            found = layout.data_dir / entry.rel_path if entry.rel_path else Path(entry.source_path)
        if found is None:
            raise GroundTruthError(f"{q.where}: query image '{q.image}' is neither in the indexed collection "
                                   f"nor in --queries-dir")
        query_files[q.qid] = found
    return _Prepared(names, row_of_name, query_files)


# -- query vectors and rankings ---------------------------------------------------------------------------
def query_image(path: Path, box: tuple[float, float, float, float] | None) -> PILImage.Image:
    try:
        with PILImage.open(path) as im:
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise GroundTruthError(f"{path.name}: the query image cannot be read ({exc})") from None
    if box is None:
        return image
    x1, y1, x2, y2 = box
    left, top = max(0, int(round(x1))), max(0, int(round(y1)))
    right, bottom = min(image.width, int(round(x2))), min(image.height, int(round(y2)))
    if right <= left or bottom <= top:
        raise GroundTruthError(f"{path.name}: the query box {box} lies outside the {image.width}x{image.height} image")
    return image.crop((left, top, right, bottom))


class Ranker:
    """Ranks collection rows for a query vector, best first, ties in row order."""

    def __init__(self, snap: Snapshot, features: np.ndarray | None = None) -> None:
        self.snap = snap
        self.features = features  # baseline: (N, D) aligned with FAISS rows; None: the served index

    def rank(self, query: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        if self.features is not None:
            scores = self.features @ query.reshape(-1)
            rows = metrics.stable_order(scores)[:depth]
            return rows, scores[rows]
        scores, rows = vectors.search(self.snap.bundle, query.reshape(1, -1), depth)
        scores, rows = scores[0], rows[0]
        keep = rows >= 0
        scores, rows = scores[keep], rows[keep]
        order = np.lexsort((rows, -scores.astype(np.float64)))
        return rows[order], scores[order]


def _label(name: str | None, positives: frozenset[str], junk: frozenset[str]) -> str:
    if name in positives:
        return metrics.POSITIVE
    if name in junk:
        return metrics.JUNK
    return metrics.WRONG


def _display_label(gt: GroundTruth, q: GtQuery, name: str | None, positives: frozenset[str]) -> str:
    """good / ok / junk / wrong, or easy / hard / junk / wrong for the revisited sets."""
    for label in ("good", "ok", "easy", "hard", "junk"):
        if name in q.sets.get(label, ()):
            return label
    return "good" if name in positives else "wrong"


def _moment_positives(q: GtQuery, snap: Snapshot, names: list[str | None]) -> frozenset[str]:
    found = set()
    for m in q.moments:
        for row in np.flatnonzero(snap.video_of_row == m.video_id):
            e = snap.entries[row]
            if e.kind >= 0 and e.frame_idx is not None and m.start_frame <= e.frame_idx <= m.end_frame:
                found.add(names[row])
    return frozenset(found)


def score_query(gt: GroundTruth, q: GtQuery, rows: np.ndarray, scores: np.ndarray, prep: _Prepared,
                snap: Snapshot) -> dict:
    """Every protocol's numbers for one ranked list, and what the page shows of it."""
    names = [prep.names[r] for r in rows]
    keep = [i for i, n in enumerate(names) if n is not None and not (q.exclude_self and n == q.image)]
    names = [names[i] for i in keep]
    rows, scores = rows[keep], scores[keep]
    ap_of = metrics.revisited_ap if gt.format == "revisited" else metrics.oxford_ap
    moment_pos = _moment_positives(q, snap, prep.names) if gt.format == "moments" else None
    record: dict = {"qid": q.qid, "query": q.text or q.image, "box": list(q.box) if q.box else None,
                    "ap": {}, "npos": {}, "p": {}, "r": {}, "pr": {}}
    for protocol in gt.protocols:
        positives, junk = (moment_pos, frozenset()) if moment_pos is not None else q.judged(protocol)
        labels = [_label(n, positives, junk) for n in names]
        npos = len(positives)
        record["ap"][protocol] = _none_if_nan(ap_of(labels, npos))
        record["npos"][protocol] = npos
        record["p"][protocol] = {str(k): metrics.precision_at(labels, k) if npos else None for k in metrics.KS}
        record["r"][protocol] = {str(k): _none_if_nan(metrics.recall_at(labels, k, npos)) for k in metrics.KS}
        record["pr"][protocol] = [_none_if_nan(v) for v in metrics.interpolated_pr(labels, npos).tolist()]
        if protocol == gt.protocols[0]:
            record["rr"] = metrics.reciprocal_rank(labels) if npos else None
            record["hit"] = {str(k): metrics.hit_at(labels, k) if npos else None for k in metrics.KS}
            head_positives = positives
    record["top"] = [[snap.entries[r].item, n, _display_label(gt, q, n, head_positives), round(float(s), 5)]
                     for r, n, s in zip(rows[:SHOWN], names[:SHOWN], scores[:SHOWN], strict=True)]
    rank_of = {n: i + 1 for i, n in enumerate(names)}
    record["missed"] = sorted(
        ([n, snap.entries[prep.row_of_name[n]].item if n in prep.row_of_name else None, rank_of.get(n)]
         for n in head_positives if rank_of.get(n, SHOWN + 1) > SHOWN),
        key=lambda m: (m[2] is None, m[2] or 0, m[0]))
    return record


def _none_if_nan(v: float) -> float | None:
    return None if v is None or np.isnan(v) else float(v)


def summarise(gt: GroundTruth, records: list[dict]) -> dict[str, dict]:
    """Means over queries with positives; those without are left out and counted (n_empty)."""
    summary = {}
    for protocol in gt.protocols:
        def col(key, sub=None, protocol=protocol):
            return [np.nan if (v := (r[key][protocol] if sub is None else r[key][protocol][sub])) is None else v
                    for r in records]
        m_ap, empty = metrics.mean_excluding_empty(col("ap"))
        row = {"mAP": m_ap, "n_queries": len(records), "n_empty": empty}
        for k in metrics.KS:
            row[f"P@{k}"] = metrics.mean_excluding_empty(col("p", str(k)))[0]
            row[f"R@{k}"] = metrics.mean_excluding_empty(col("r", str(k)))[0]
        curves = np.array([[np.nan if v is None else v for v in r["pr"][protocol]] for r in records], dtype=float)
        with np.errstate(all="ignore"):
            row["pr_curve"] = [None if np.isnan(v) else float(v) for v in np.nanmean(curves, axis=0)] \
                if (~np.isnan(curves)).any() else []
        if gt.format == "moments" and protocol == gt.protocols[0]:
            row["MRR"] = metrics.mean_excluding_empty([np.nan if r["rr"] is None else r["rr"] for r in records])[0]
            for k in metrics.KS:
                row[f"hit@{k}"] = metrics.mean_excluding_empty(
                    [np.nan if r["hit"][str(k)] is None else r["hit"][str(k)] for r in records])[0]
        summary[protocol] = row
    return summary


def evaluate(gt: GroundTruth, snap: Snapshot, layout: DataLayout, encoder, config: Config,
             protocol: str | None = None, queries_dir: Path | None = None, features: np.ndarray | None = None,
             progress: Progress | None = None) -> EvalResult:
    """Run every query of `gt` against the collection and score it."""
    protocol = protocol or gt.protocols[0]
    if protocol not in gt.protocols:
        raise GroundTruthError(f"protocol '{protocol}' does not apply to a {gt.format} set "
                               f"(one of {', '.join(gt.protocols)})")
    if gt.format == "moments" and config.model.startswith("tv:"):
        raise GroundTruthError(f"{config.model} answers image queries only; {gt.name} holds text queries")
    t0 = time.perf_counter()
    prep = prepare(gt, snap, layout, queries_dir)
    ranker = Ranker(snap, features)
    size = len(snap.entries)
    depth = config.depth or (size if size <= FULL_RANKING_UP_TO else DEFAULT_DEPTH)
    records = []
    for i, q in enumerate(gt.queries):
        if q.text is not None:
            vec = encoder.encode_text([q.text])
        else:
            vec = encoder.encode_images([query_image(prep.query_files[q.qid], q.box)])
        rows, scores = ranker.rank(vec, min(size, depth + (1 if q.exclude_self else 0)))
        records.append(score_query(gt, q, rows, scores, prep, snap))
        if progress:
            progress(i + 1, len(gt.queries))
    records.sort(key=lambda r: (r["ap"][protocol] is None, r["ap"][protocol] or 0.0, r["qid"]))  # worst first
    config.depth = depth
    return EvalResult(gt.name, gt.format, gt.source, protocol, config, summarise(gt, records), records,
                      time.perf_counter() - t0)


# -- baseline features over the same items ----------------------------------------------------------------
def _item_key(e: Entry) -> str:
    return f"kf:{e.feature_key}:{e.n}" if e.video_id is not None else f"img:{e.feature_key}"


def _pixels(e: Entry, layout: DataLayout) -> PILImage.Image:
    from app.safe_files import open_beneath, open_indexed, read_picture

    return read_picture(open_beneath(layout.data_dir, e.rel_path) if e.rel_path else open_indexed(e.source_path))


def baseline_features(encoder, snap: Snapshot, layout: DataLayout, progress: Progress | None = None,
                      batch: int = 32) -> np.ndarray:
    """(N, D) baseline features aligned with the served index's rows, cached per model and weights
    under feature/baselines/ so a second run only computes what is new."""
    tag = hashlib.blake2b("|".join(encoder.identity).encode(), digest_size=6).hexdigest()
    cache = layout.baseline_feature_dir / f"{encoder.model_name.replace(':', '-')}-{tag}.npz"
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            known = dict(zip(z["keys"].tolist(), z["feats"], strict=True))
    feats = np.zeros((len(snap.entries), encoder.dim), np.float32)
    todo = [i for i, e in enumerate(snap.entries) if e.kind >= 0 and _item_key(e) not in known]
    for i, e in enumerate(snap.entries):
        if e.kind >= 0 and _item_key(e) in known:
            feats[i] = known[_item_key(e)]
    for start in range(0, len(todo), batch):
        rows = todo[start:start + batch]
        feats[rows] = encoder.encode_images([_pixels(snap.entries[r], layout) for r in rows])
        if progress:
            progress(start + len(rows), len(todo))
    if todo:
        keys = [_item_key(e) for e in snap.entries if e.kind >= 0]
        valid = np.array([e.kind >= 0 for e in snap.entries])
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys), feats=feats[valid])
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(cache, buf.getvalue())
    return feats
