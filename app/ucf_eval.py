"""Evaluating categories on a labelled video folder in the UCF101 layout (`<Class>/<clip>.avi`), already indexed.

Two numbers, both from the collection's own CLIP vectors (row n-1 of feature/<video_id>.npy is keyframe n):

- video-to-video retrieval mAP: a clip is the mean of its keyframe vectors, normalised; each clip ranks every other
  clip of the set by cosine similarity (equal scores keep folder order, `app.metrics.stable_order`), the clips of
  its class are relevant, and AP is the project's (`app.metrics.oxford_ap`, as the other evaluations use). A
  ranking is cut after its last relevant clip, which changes no AP. mAP is the mean over clips whose class has
  another clip (`metrics.mean_excluding_empty`); per class, the mean over its clips.
- zero-shot classification: the folder names are the classes, as prompts like the action labels' ("a video of a
  person playing guitar" for PlayingGuitar, app.concepts); a clip's class scores are the mean over its keyframes of
  softmax(100 * keyframe @ prompts.T); top-1 and top-5 accuracy (equal scores keep class order).

Clips are found in the catalogue by their absolute path: a clip that was not indexed is an error that names it.
Runs are stored as EvaluationRun rows (gt_format "ucf101", protocol "video") beside the other evaluations.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.concepts import action_prompt, best, probabilities, text_vectors
from app.groundtruth import GroundTruth, GroundTruthError
from app.models import EvaluationRun, Keyframe, Setting, Video
from app.paths import DataLayout

GT_FORMAT = "ucf101"
PROTOCOL = "video"
COLUMNS = ["mAP", "top-1", "top-5"]
CHUNK = 256  # query clips per matrix product
TOP_K = 5
Progress = Callable[[int, int], None]


class ClipsNotIndexed(GroundTruthError):
    """Clips of the set that the catalogue does not hold."""


@dataclass
class Clip:
    name: str  # '<Class>/<file name>'
    label: str  # the class (folder name)
    path: str  # absolute path, as the catalogue stores it


def clips_of(gt: GroundTruth) -> list[Clip]:
    root = gt.root
    return [Clip(q.qid, q.qid.split("/", 1)[0], str((root / q.qid).resolve())) for q in gt.queries]


def catalogued(session: Session, clips: list[Clip]) -> dict[str, tuple[int, str]]:
    """Clip path -> (video row id, video id); ClipsNotIndexed names the clips the catalogue does not hold."""
    paths = [c.path for c in clips]
    videos: dict[str, tuple[int, str]] = {}
    for at in range(0, len(paths), 500):
        for pk, video_id, path in session.execute(select(Video.id, Video.video_id, Video.path)
                                                  .where(Video.path.in_(paths[at:at + 500]))):
            videos[path] = (pk, video_id)
    missing = [c.name for c in clips if c.path not in videos]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ClipsNotIndexed(f"{len(missing)} of the {len(clips)} clips are not in the collection ({shown}); index "
                              f"the folder first: python offline.py index {_root_of(clips)}")
    return videos


def check_indexed(session: Session, gt: GroundTruth) -> None:
    catalogued(session, clips_of(gt))


def keyframe_vectors(session: Session, layout: DataLayout, clips: list[Clip]) -> list[np.ndarray]:
    """Each clip's keyframe vectors (k, dim), from the feature files the catalogue names."""
    videos = catalogued(session, clips)
    numbers: dict[int, list[int]] = {}
    for video_pk, n in session.execute(select(Keyframe.video_pk, Keyframe.n)
                                       .where(Keyframe.video_pk.in_([pk for pk, _ in videos.values()]))
                                       .order_by(Keyframe.video_pk, Keyframe.n)):
        numbers.setdefault(video_pk, []).append(n)
    out = []
    for clip in clips:
        pk, video_id = videos[clip.path]
        ns = numbers.get(pk, [])
        if not ns:
            raise GroundTruthError(f"{clip.name}: indexed as {video_id}, but it has no keyframes")
        try:
            features = np.load(layout.video_feature_path(video_id))
        except (OSError, ValueError) as exc:
            raise GroundTruthError(f"{clip.name}: the feature file of {video_id} cannot be read ({exc})") from None
        if max(ns) > len(features):
            raise GroundTruthError(f"{clip.name}: {video_id}'s feature file has {len(features)} rows for "
                                   f"{max(ns)} keyframes; index the folder again")
        out.append(np.asarray(features[[n - 1 for n in ns]], np.float64))
    return out


def _root_of(clips: list[Clip]) -> str:
    return str(Path(clips[0].path).parent.parent) if clips else "FOLDER"


def clip_means(vectors: list[np.ndarray]) -> np.ndarray:
    means = np.stack([v.mean(axis=0) for v in vectors])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def retrieval_aps(means: np.ndarray, labels: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """Each clip's AP when it ranks all other clips (NaN where its class has no other clip)."""
    aps = np.full(len(means), np.nan)
    for at in range(0, len(means), CHUNK):
        rows = range(at, min(at + CHUNK, len(means)))
        sims = means[at:at + CHUNK] @ means.T
        for row, scores in zip(rows, sims, strict=True):
            order = metrics.stable_order(scores)
            order = order[order != row]  # a clip does not query itself
            relevant = labels[order] == labels[row]
            npos = int(relevant.sum())
            if npos:
                last = int(np.flatnonzero(relevant)[-1])
                ranking = np.where(relevant[:last + 1], metrics.POSITIVE, metrics.WRONG).tolist()
                aps[row] = metrics.oxford_ap(ranking, npos)
        if progress is not None:
            progress(rows.stop, len(means))
    return aps


def zero_shot(vectors: list[np.ndarray], classes: list[str], encoder) -> np.ndarray:
    """Per clip, the class indices by mean keyframe probability, best first (TOP_K of them)."""
    text = text_vectors(encoder, [action_prompt(c) for c in classes])
    return np.array([best(probabilities(v, text).mean(axis=0), TOP_K) + [-1] * max(0, TOP_K - len(classes))
                     for v in vectors])


def evaluate(session: Session, layout: DataLayout, gt: GroundTruth, encoder,
             progress: Progress | None = None) -> dict:
    """mAP, top-1 and top-5 over the set, and per class (see the module docstring)."""
    start = time.monotonic()
    clips = clips_of(gt)
    classes = sorted({c.label for c in clips})
    vectors = keyframe_vectors(session, layout, clips)
    labels = np.array([classes.index(c.label) for c in clips])
    aps = retrieval_aps(clip_means(vectors), labels, progress)
    ranked = zero_shot(vectors, classes, encoder)
    top1 = (ranked[:, 0] == labels).astype(float)
    top5 = (ranked == labels[:, None]).any(axis=1).astype(float)
    mean_ap, empty = metrics.mean_excluding_empty(aps.tolist())
    per_class = []
    for i, name in enumerate(classes):
        mine = labels == i
        class_ap, _ = metrics.mean_excluding_empty(aps[mine].tolist())
        per_class.append({"class": name, "clips": int(mine.sum()), "AP": class_ap,
                          "top1": float(top1[mine].mean()), "top5": float(top5[mine].mean())})
    return {"mAP": mean_ap, "top1": float(top1.mean()), "top5": float(top5.mean()), "n_clips": len(clips),
            "n_classes": len(classes), "n_empty": empty, "per_class": per_class,
            "keyframes": int(sum(len(v) for v in vectors)), "model": getattr(encoder, "model_name", ""),
            "pretrained": getattr(encoder, "pretrained", ""), "seconds": time.monotonic() - start,
            "per_clip": [{"clip": c.name, "AP": None if math.isnan(a) else float(a), "top1": int(t1),
                          "predicted": classes[r[0]]} for c, a, t1, r in zip(clips, aps, top1, ranked, strict=True)]}


# -- stored runs ---------------------------------------------------------------------------------------------------
def start(sessions: sessionmaker, gt: GroundTruth) -> int:
    """Store a running run under the collection's model and weights; its id."""
    with sessions.begin() as session:
        known = dict(session.execute(select(Setting.key, Setting.value)
                                     .where(Setting.key.in_(("model", "pretrained")))).all())
        run = EvaluationRun(gt_name=gt.name, gt_format=GT_FORMAT, gt_source=gt.source, protocol=PROTOCOL,
                            model=known.get("model", "clip"), pretrained=known.get("pretrained", ""),
                            index_type="exact (cosine of clip means)")
        session.add(run)
        session.flush()
        return run.id


def _nan_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def summary(result: dict) -> dict:
    return {PROTOCOL: {"mAP": _nan_none(result["mAP"]), "top-1": result["top1"], "top-5": result["top5"],
                       "n_queries": result["n_clips"], "n_empty": result["n_empty"],
                       "n_classes": result["n_classes"], "keyframes": result["keyframes"]}}


def records(result: dict) -> list[dict]:
    """Per-class rows in the form the run pages and the comparison read (qid, query, ap per protocol), worst
    first."""
    rows = [{"qid": c["class"], "query": f"{c['clips']} clips", "clips": c["clips"],
             "ap": {PROTOCOL: _nan_none(c["AP"])}, "top1": c["top1"], "top5": c["top5"],
             "npos": {PROTOCOL: c["clips"] - 1}} for c in result["per_class"]]
    rows.sort(key=lambda r: (r["ap"][PROTOCOL] is None, r["ap"][PROTOCOL] or 0.0, r["top1"], r["qid"]))
    return rows


def execute(sessions: sessionmaker, layout: DataLayout, gt: GroundTruth, encoder_factory: Callable[[], object],
            progress: Progress | None = None, run_id: int | None = None) -> tuple[int, dict]:
    """Evaluate and store; a failure marks the stored run failed (with its message), a cancel cancelled, and
    propagates."""
    from app.eval_runs import recorded

    if run_id is None:
        with sessions() as session:
            check_indexed(session, gt)  # clips not indexed: an error before any run is stored
        run_id = start(sessions, gt)
    with recorded(sessions, run_id):
        encoder = encoder_factory()
        with sessions() as session:
            result = evaluate(session, layout, gt, encoder, progress)
    with sessions.begin() as session:
        run = session.get(EvaluationRun, run_id)
        run.status, run.seconds, run.n_queries = "done", result["seconds"], result["n_clips"]
        run.model, run.pretrained = result["model"] or run.model, result["pretrained"] or run.pretrained
        run.map_value = _nan_none(result["mAP"])
        run.summary_json = json.dumps(summary(result))
        run.queries_json = json.dumps(records(result))
    return run_id, result


def _cell(value) -> str:
    return "     -" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def format_lines(result: dict, gt: GroundTruth) -> list[str]:
    """What `offline.py evaluate FOLDER` prints before its JSON line."""
    lines = [f"{gt.name} (UCF101 layout: {result['n_classes']} classes, {result['n_clips']} clips, "
             f"{result['keyframes']} keyframes) · model {result['model']} [{result['pretrained']}] · "
             f"{result['seconds']:.1f} s",
             f"video-to-video retrieval mAP {_cell(result['mAP'])}"
             + (f" ({result['n_empty']} clips alone in their class left out)" if result["n_empty"] else ""),
             f"zero-shot classification top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}",
             f"{'class':<30} {'clips':>6} {'AP':>7} {'top-1':>7} {'top-5':>7}"]
    lines += [f"{c['class'][:30]:<30} {c['clips']:>6} {_cell(c['AP']):>7} {c['top1']:>7.4f} {c['top5']:>7.4f}"
              for c in result["per_class"]]
    return lines


def json_line(result: dict, gt: GroundTruth, run_id: int) -> str:
    return json.dumps({"mAP": _nan_none(result["mAP"]), "top1": result["top1"], "top5": result["top5"],
                       "protocol": PROTOCOL, "ground_truth": gt.name, "format": GT_FORMAT, "run": run_id,
                       "model": result["model"], "pretrained": result["pretrained"], "n_clips": result["n_clips"],
                       "n_classes": result["n_classes"], "n_empty": result["n_empty"],
                       "per_class": {c["class"]: {"AP": _nan_none(c["AP"]), "top1": c["top1"], "top5": c["top5"],
                                                  "clips": c["clips"]} for c in result["per_class"]}},
                      sort_keys=True)
