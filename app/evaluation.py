"""Scoring retrieval against a ground-truth set: one code path for the page and for the CLI.

For each query: build its vector (the box region of the query image, or its text),
rank the collection with the configuration under test (the served CLIP index, or a
torchvision baseline over the same items), label the ranking per protocol, and
compute the metrics of app.metrics. Equal scores keep collection order (FAISS row),
so a run is repeatable. Rankings go `depth` deep (the whole collection up to 10,000
items, else 1,000); positives below it count as not retrieved, as in a top-K list.
A Revisited set ranks only its imlist (as revisitop does); a ground-truth name must
match exactly one collection item.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
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
MAX_DEPTH = 1_000_000  # the largest benchmark database (Revisited +1M distractors); a ranking never needs more
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
        elif gt.format in ("moments", "annotations") or e.video_id is not None:
            names.append(str(e.item))  # moments and boxes name items as pages do
        elif gt.format == "labelled" and gt.root is not None:
            p = Path(e.source_path).resolve()
            names.append(p.relative_to(gt.root).with_suffix("").as_posix() if p.is_relative_to(gt.root)
                         else str(e.item))
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


def _name_hint(name: str, known: set[str]) -> str:
    """A likely intended name for an unknown one: lists carry no extension and no 'oxc1_' prefix."""
    path = Path(name)
    stem = path.with_suffix("").as_posix() if path.suffix.lower() in IMAGE_EXTENSIONS else name
    alias = _oxford_alias(stem, known)
    if alias not in known or alias == name:
        return ""
    why = ["list names carry no extension"] if stem != name else []
    if alias != stem:
        why.append(f"the '{stem[: len(stem) - len(alias)]}' prefix is how a _query.txt names a query image, "
                   f"the lists name it without")
    return f"; did you mean '{alias}' ({' and '.join(why)})?"


def _check_known(gt: GroundTruth, known: set[str]) -> None:
    """Every name the set judges or ranks is a collection item; the error names the file and line."""
    unknown = sorted(gt.referenced_names() - known)
    if not unknown:
        return
    first = unknown[0]
    more = f"; {len(unknown) - 1} more names are unknown too" if len(unknown) > 1 else ""
    raise GroundTruthError(f"{gt.where.get(first, gt.source)}: unknown image '{first}' (not in the indexed "
                           f"collection{more}){_name_hint(first, known)}")


def _describe(e: Entry) -> str:
    """An item as a stored run may show it: never the server's full path (runs are shown on pages)."""
    return e.name if e.video_id is None else f"{e.item} of {Path(e.source_path).name}"


def _check_unique(gt: GroundTruth, rows_of: dict[str, list[int]], entries: list[Entry], names: set[str]) -> None:
    """A name matching two items would count both as hits while the positives count it once (AP above 1)."""
    for name in sorted(names):
        rows = rows_of.get(name, [])
        if len(rows) > 1:
            shown = ", ".join(_describe(entries[r]) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise GroundTruthError(f"{gt.where.get(name, gt.source)}: '{name}' matches {len(rows)} collection "
                                   f"items ({shown}); a ground-truth name must match exactly one (remove or "
                                   f"rename the copies)")


@dataclass
class _Prepared:
    names: list[str | None]  # per FAISS row: the name it is ranked under; None: never ranked
    row_of_name: dict[str, int]
    query_files: dict[str, Path]  # qid -> query image file
    outside: int = 0  # rows never ranked (removed items, items outside a Revisited imlist)
    frames: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # moments: video -> (frame, name)


def _query_file(gt: GroundTruth, q: GtQuery, name: str, row_of_name: dict[str, int], snap: Snapshot,
                layout: DataLayout, queries_dir: Path | None) -> Path:
    """The query image: in --queries-dir, beside a labelled set, or the collection item of that name."""
    found = _find_query_file(q.image, queries_dir) or _find_query_file(name, queries_dir)
    if found is None and gt.root is not None:
        found = next((p for p in (gt.root / f"{q.image}{ext}" for ext in IMAGE_EXTENSIONS) if p.is_file()), None)
    if found is None and name in row_of_name:
        entry = snap.entries[row_of_name[name]]
        found = layout.data_dir / entry.rel_path if entry.rel_path else Path(entry.source_path)
    if found is None:
        raise GroundTruthError(f"{q.where}: query image '{q.image}' is neither in the indexed collection "
                               f"nor in --queries-dir")
    return found


def prepare(gt: GroundTruth, snap: Snapshot, layout: DataLayout, queries_dir: Path | None) -> _Prepared:
    """Map names to collection rows and find every query image. Unknown names, and names that match
    several items, are an error that names the file and line where they appear."""
    # rows of videos re-indexed since this generation was built are hidden from search, so from evaluation too
    all_names = [None if snap.hidden[row] else name for row, name in enumerate(item_names(gt, snap.entries))]
    rows_of: dict[str, list[int]] = {}
    for row, name in enumerate(all_names):
        if name is not None:
            rows_of.setdefault(name, []).append(row)
    known = set(rows_of)
    if gt.format != "moments":
        _check_known(gt, known)
    aliases = {q.qid: _oxford_alias(q.image, known) for q in gt.queries if q.image is not None}
    if gt.format == "annotations":  # boxes name an image by content: copies at several paths are one item
        for rows in rows_of.values():
            for extra in rows[1:]:
                all_names[extra] = None
            del rows[1:]
    _check_unique(gt, rows_of, snap.entries, gt.referenced_names() | set(aliases.values()))
    row_of_name = {name: rows[0] for name, rows in rows_of.items()}
    query_files = {q.qid: _query_file(gt, q, aliases[q.qid], row_of_name, snap, layout, queries_dir)
                   for q in gt.queries if q.image is not None}
    names = all_names if gt.database is None else [n if n in gt.database else None for n in all_names]
    return _Prepared(names, row_of_name, query_files, sum(n is None for n in names),
                     _frames(snap.entries, names) if gt.format == "moments" else {})


def _frames(entries, names: list[str | None]) -> dict[str, list[tuple[int, str]]]:
    """Per video, its keyframes' (frame_idx, name): what a moment's frame range is matched against."""
    frames: dict[str, list[tuple[int, str]]] = {}
    for e, name in zip(entries, names, strict=True):
        if name is not None and e.video_id is not None and e.frame_idx is not None:
            frames.setdefault(e.video_id, []).append((e.frame_idx, name))
    return frames


# -- query vectors and rankings ---------------------------------------------------------------------------
def query_image(path: Path, box: tuple[float, float, float, float] | None) -> PILImage.Image:
    """The query image, cropped to its box (a box that is not four finite numbers is an error, not a crash)."""
    if box is not None and not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
        raise GroundTruthError(f"{path.name}: the query box {list(box)} must be four finite numbers")
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


def _moment_positives(q: GtQuery, prep: _Prepared) -> frozenset[str]:
    """The keyframes whose frame lies in one of the query's ranges."""
    return frozenset(name for m in q.moments for frame, name in prep.frames.get(m.video_id, ())
                     if m.start_frame <= frame <= m.end_frame)


def _ranked(q: GtQuery, rows: np.ndarray, scores: np.ndarray, prep: _Prepared,
            depth: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The ranking as the reference code sees it: rows never ranked (and the query itself where the set
    says so) left out, then cut at `depth`."""
    names = [prep.names[r] for r in rows]
    keep = [i for i, n in enumerate(names) if n is not None and not (q.exclude_self and n == q.image)][:depth]
    return [names[i] for i in keep], rows[keep], scores[keep]  # type: ignore[misc]


def _protocol_numbers(record: dict, gt: GroundTruth, protocol: str, labels: list[str], npos: int) -> None:
    """AP, P@k, R@k and the PR curve of one protocol (and revisitop's mP@k for Revisited sets)."""
    ap_of = metrics.revisited_ap if gt.format == "revisited" else metrics.oxford_ap
    record["ap"][protocol] = _none_if_nan(ap_of(labels, npos))
    record["npos"][protocol] = npos
    record["p"][protocol] = {str(k): metrics.precision_at(labels, k) if npos else None for k in metrics.KS}
    record["r"][protocol] = {str(k): _none_if_nan(metrics.recall_at(labels, k, npos)) for k in metrics.KS}
    record["pr"][protocol] = [_none_if_nan(v) for v in metrics.interpolated_pr(labels, npos).tolist()]
    if gt.format == "revisited":
        record.setdefault("p_revisitop", {})[protocol] = {
            str(k): _none_if_nan(metrics.revisitop_precision_at(labels, k, npos)) for k in metrics.KS}


def score_query(gt: GroundTruth, q: GtQuery, rows: np.ndarray, scores: np.ndarray, prep: _Prepared,
                snap: Snapshot, depth: int) -> dict:
    """Every protocol's numbers for one ranked list, and what the page shows of it."""
    names, rows, scores = _ranked(q, rows, scores, prep, depth)
    moment_pos = _moment_positives(q, prep) if gt.format == "moments" else None
    record: dict = {"qid": q.qid, "query": q.text or q.image, "box": list(q.box) if q.box else None,
                    "ap": {}, "npos": {}, "p": {}, "r": {}, "pr": {}}
    for protocol in gt.protocols:
        positives, junk = (moment_pos, frozenset()) if moment_pos is not None else q.judged(protocol)
        labels = [_label(n, positives, junk) for n in names]
        _protocol_numbers(record, gt, protocol, labels, len(positives))
        if protocol == gt.protocols[0]:
            record["rr"] = metrics.reciprocal_rank(labels) if positives else None
            record["hit"] = {str(k): metrics.hit_at(labels, k) if positives else None for k in metrics.KS}
            head_positives = positives
    record["top"] = [[str(snap.entries[r].item), n, _display_label(gt, q, n, head_positives), round(float(s), 5)]
                     for r, n, s in zip(rows[:SHOWN], names[:SHOWN], scores[:SHOWN], strict=True)]
    rank_of = {n: i + 1 for i, n in enumerate(names)}
    record["missed"] = sorted(
        ([n, str(snap.entries[prep.row_of_name[n]].item) if n in prep.row_of_name else None, rank_of.get(n)]
         for n in head_positives if rank_of.get(n, SHOWN + 1) > SHOWN),
        key=lambda m: (m[2] is None, m[2] or 0, m[0]))
    return record


def _none_if_nan(v: float) -> float | None:
    return None if v is None or np.isnan(v) else float(v)


def _mean(records: list[dict], key: str, protocol: str, sub: str | None = None) -> float:
    """Mean of one per-query number over the queries that have it (None: no positives, left out)."""
    values = [(r[key][protocol] if sub is None else r[key][protocol][sub]) for r in records]
    return metrics.mean_excluding_empty([np.nan if v is None else v for v in values])[0]


def _precision_columns(gt: GroundTruth, records: list[dict], protocol: str) -> dict[str, float]:
    """P@k; for Revisited sets mP@k as revisitop computes it (published tables) and the plain one beside it."""
    if gt.format != "revisited":
        return {f"P@{k}": _mean(records, "p", protocol, str(k)) for k in metrics.KS}
    row = {f"mP@{k} (revisitop)": _mean(records, "p_revisitop", protocol, str(k)) for k in metrics.KS}
    row.update({f"mP@{k} (plain)": _mean(records, "p", protocol, str(k)) for k in metrics.KS})
    return row


def summarise(gt: GroundTruth, records: list[dict]) -> dict[str, dict]:
    """Means over queries with positives; those without are left out and counted (n_empty)."""
    summary = {}
    for protocol in gt.protocols:
        m_ap, empty = metrics.mean_excluding_empty([np.nan if r["ap"][protocol] is None else r["ap"][protocol]
                                                    for r in records])
        row = {"mAP": m_ap, "n_queries": len(records), "n_empty": empty}
        row.update(_precision_columns(gt, records, protocol))
        row.update({f"R@{k}": _mean(records, "r", protocol, str(k)) for k in metrics.KS})
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


def checked_depth(depth: object) -> int | None:
    """None (the default depth) or a whole number from 1 to MAX_DEPTH: a negative depth would slice every
    ranking to nothing and report 0 for every metric as if that were a result."""
    if depth is None:
        return None
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or not 1 <= depth <= MAX_DEPTH:
        raise GroundTruthError(f"the ranking depth must be a whole number from 1 to {MAX_DEPTH:,}, not {depth}")
    return int(depth)


def evaluate(gt: GroundTruth, snap: Snapshot, layout: DataLayout, encoder, config: Config,
             protocol: str | None = None, queries_dir: Path | None = None, features: np.ndarray | None = None,
             progress: Progress | None = None, words=None) -> EvalResult:
    """Run every query of `gt` against the collection and score it. `words(text, depth)`, when given, ranks a text
    query as the search box does (pictures and words fused, app.fusion)."""
    protocol = protocol or gt.protocols[0]
    if protocol not in gt.protocols:
        raise GroundTruthError(f"protocol '{protocol}' does not apply to a {gt.format} set "
                               f"(one of {', '.join(gt.protocols)})")
    if gt.format == "moments" and config.model.startswith("tv:"):
        raise GroundTruthError(f"{config.model} answers image queries only; {gt.name} holds text queries")
    t0 = time.perf_counter()
    depth = checked_depth(config.depth)
    prep = prepare(gt, snap, layout, queries_dir)
    ranker = Ranker(snap, features)
    size = len(snap.entries)
    depth = depth or (size if size <= FULL_RANKING_UP_TO else DEFAULT_DEPTH)
    records = []
    for i, q in enumerate(gt.queries):
        # deep enough that `depth` items remain once the never-ranked rows (and the query itself) are left out
        wanted = min(size, depth + prep.outside + (1 if q.exclude_self else 0))
        ranked = words(q.text, wanted) if q.text is not None and words is not None else None
        if ranked is not None:
            rows, scores = ranked
        else:
            vec = encoder.encode_text([q.text]) if q.text is not None else \
                encoder.encode_images([query_image(prep.query_files[q.qid], q.box)])
            rows, scores = ranker.rank(vec, wanted)
        records.append(score_query(gt, q, rows, scores, prep, snap, depth))
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
