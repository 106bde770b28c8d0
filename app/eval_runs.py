"""Running an evaluation end to end and keeping it: the one path both the page and the CLI take.

`execute` resolves the configuration (the served CLIP index, or a torchvision baseline
computed over the same items), evaluates, and stores the run with every number, so runs
can be listed and compared later. `format_table` is the text the CLI prints.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.baselines import TorchvisionEncoder, is_baseline
from app.collection import Snapshot
from app.evaluation import Config, EvalResult, Progress, baseline_features, evaluate, json_safe
from app.fusion import has_words, pinned_ranking
from app.groundtruth import PROTOCOL_HELP, GroundTruth
from app.models import EvaluationRun
from app.paths import DataLayout


def configuration(snap: Snapshot, model: str, baseline_weights: str | None) -> Config:
    """'clip' (or the index's own model name) means the served index; 'tv:...' a baseline."""
    meta = snap.bundle.meta
    if is_baseline(model):
        return Config(model=model, pretrained=baseline_weights or "torchvision default", index_type="flat (exact)")
    if model not in ("clip", meta.get("model")):
        raise ValueError(f"the collection is indexed with {meta.get('model')}; evaluate it with --model clip, "
                         f"or a baseline (tv:vgg16, tv:resnet50)")
    return Config(model=meta.get("model", "clip"), pretrained=meta.get("pretrained", ""),
                  index_type=meta.get("params", {}).get("type", "flat"))


def start(sessions: sessionmaker, gt: GroundTruth, config: Config, protocol: str) -> int:
    with sessions.begin() as session:
        run = EvaluationRun(gt_name=gt.name, gt_format=gt.format, gt_source=gt.source, protocol=protocol,
                            model=config.model, pretrained=config.pretrained, index_type=config.index_type)
        session.add(run)
        session.flush()
        return run.id


def finish(sessions: sessionmaker, run_id: int, result: EvalResult) -> None:
    with sessions.begin() as session:
        run = session.get(EvaluationRun, run_id)
        run.status, run.seconds, run.n_queries = "done", result.seconds, len(result.queries)
        head = result.headline["mAP"]
        run.map_value = None if math.isnan(head) else head
        run.pretrained, run.index_type = result.config.pretrained, result.config.index_type
        run.summary_json = json.dumps(json_safe(result.summary))
        run.queries_json = json.dumps(result.queries)


INTERRUPTED = "interrupted: the server stopped during the run"


def mark_interrupted(session: Session) -> int:
    """For the app factory, once at start-up: no run of this process exists yet, so a run still marked
    running was cut off when an earlier server stopped. Marks those failed and returns how many; the
    caller commits (`with sessions.begin() as session`)."""
    runs = session.scalars(select(EvaluationRun).where(EvaluationRun.status == "running")).all()
    for run in runs:
        run.status, run.message = "failed", INTERRUPTED
    return len(runs)


def fail(sessions: sessionmaker, run_id: int, message: str) -> None:
    with sessions.begin() as session:
        run = session.get(EvaluationRun, run_id)
        run.status, run.message = "failed", message


class Cancelled(Exception):
    """The run was stopped by a user; it is stored as cancelled."""


def cancel(sessions: sessionmaker, run_id: int) -> None:
    with sessions.begin() as session:
        run = session.get(EvaluationRun, run_id)
        run.status, run.message = "cancelled", "cancelled by a user"


@contextmanager
def recorded(sessions: sessionmaker, run_id: int):
    """The frame of every stored run (CLIP, identity, UCF101): a cancel inside marks the run cancelled, any other
    error failed with its message; both propagate."""
    try:
        yield
    except Cancelled:
        cancel(sessions, run_id)
        raise
    except Exception as exc:
        fail(sessions, run_id, str(exc))
        raise


def execute(layout: DataLayout, sessions: sessionmaker, snap: Snapshot, gt: GroundTruth, config: Config,
            clip_encoder_factory: Callable[[], object], protocol: str | None = None,
            queries_dir: Path | None = None, baseline_weights: str | None = None, device: str = "auto",
            progress: Progress | None = None, run_id: int | None = None) -> tuple[int, EvalResult]:
    """Evaluate and store. Errors mark the stored run failed (with the message) and propagate."""
    protocol = protocol or gt.protocols[0]
    run_id = run_id or start(sessions, gt, config, protocol)
    with recorded(sessions, run_id):
        features = None
        if is_baseline(config.model):
            encoder = TorchvisionEncoder(config.model, baseline_weights, device)
            config.pretrained = encoder.pretrained
            features = baseline_features(encoder, snap, layout)
        else:
            encoder = clip_encoder_factory()
        words = None
        if features is None and gt.format == "moments" and has_words(sessions):  # text queries as the search box
            words = pinned_ranking(snap, sessions, encoder)
            config.index_type = f"{config.index_type} + words"
        result = evaluate(gt, snap, layout, encoder, config, protocol, queries_dir, features, progress, words)
    finish(sessions, run_id, result)
    return run_id, result


def load(sessions: sessionmaker, run_id: int) -> dict | None:
    """A stored run as plain data for the pages: its fields, summary and per-query records."""
    with sessions() as session:
        run = session.get(EvaluationRun, run_id)
        if run is None:
            return None
        data = {c.name: getattr(run, c.name) for c in EvaluationRun.__table__.columns}
    data["summary"] = json.loads(data.pop("summary_json") or "{}")
    data["queries"] = json.loads(data.pop("queries_json") or "[]")
    return data


def listing(sessions: sessionmaker, limit: int = 200) -> list[EvaluationRun]:
    with sessions() as session:
        rows = session.scalars(select(EvaluationRun).order_by(EvaluationRun.id.desc()).limit(limit)).all()
        session.expunge_all()
        return list(rows)


def compare(a: dict, b: dict) -> list[dict]:
    """Per-query AP of two runs on the same ground truth (headline protocol of the first),
    largest change first."""
    protocol = a["protocol"]
    ap_b = {q["qid"]: q["ap"].get(protocol) for q in b["queries"]}
    rows = []
    for q in a["queries"]:
        x, y = q["ap"].get(protocol), ap_b.get(q["qid"])
        rows.append({"qid": q["qid"], "query": q["query"], "a": x, "b": y,
                     "diff": None if x is None or y is None else y - x})
    rows.sort(key=lambda r: (r["diff"] is None, -abs(r["diff"] or 0.0), r["qid"]))
    return rows


def _cell(v) -> str:
    return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def summary_columns(gt_format: str) -> list[str]:
    """The summary's columns (also its keys). Revisited sets show mP@k as revisitop computes it, which
    published tables report, and the plain P@k beside it, each labelled."""
    if gt_format == "revisited":
        precision = [f"mP@{k} (revisitop)" for k in metrics.KS] + [f"mP@{k} (plain)" for k in metrics.KS]
    else:
        precision = [f"P@{k}" for k in metrics.KS]
    cols = ["mAP", *precision] + [f"R@{k}" for k in metrics.KS]
    if gt_format == "moments":
        cols += ["MRR"] + [f"hit@{k}" for k in metrics.KS]
    return cols


def format_table(summary: dict[str, dict], gt_format: str) -> str:
    """The summary as aligned text: one row per protocol, as the page shows it."""
    cols = summary_columns(gt_format)
    widths = {c: max(7, len(c)) for c in cols}
    lines = ["protocol  " + " ".join(f"{c:>{widths[c]}}" for c in cols) + "  queries  left out  meaning"]
    for protocol, row in summary.items():
        lines.append(f"{protocol:<9} " + " ".join(f"{_cell(row.get(c)):>{widths[c]}}" for c in cols)
                     + f"  {row['n_queries']:>7}  {row['n_empty']:>8}  {PROTOCOL_HELP.get(protocol, '')}")
    return "\n".join(lines)


def describe(result: EvalResult) -> str:
    c = result.config
    return (f"{result.gt_name} ({result.gt_format}, {len(result.queries)} queries) · model {c.model} "
            f"[{c.pretrained}] · index {c.index_type} · depth {c.depth} · "
            f"{result.seconds:.1f} s · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")

