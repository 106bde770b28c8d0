"""Identity retrieval on the named people: how well the face vectors find a person's other faces.

Ground truth is what annotators named on the People page. Every face of a named person with at least two faces is
a query; it ranks every other face of the collection (named, unnamed or in no person) by cosine similarity, exactly
(a matrix product in chunks), and the other faces of its person are the relevant ones. AP is the project's own
(`app.metrics.oxford_ap`, the Oxford Buildings rule, as the other evaluations use); ties keep face id order
(`app.metrics.stable_order`). A ranking is cut after its last relevant face, which changes no AP (nothing after
it adds recall). Runs are stored as EvaluationRun rows (gt_format "faces", protocol "identity") beside the others.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.models import EvaluationRun, Face, Person, Setting
from app.people import face_vectors

GT_NAME = "@people"  # the ground-truth set's name on /evaluation and for `offline.py evaluate`
GT_LABEL = "Named people (faces)"
GT_FORMAT = "faces"
PROTOCOL = "identity"
COLUMNS = ["mAP", "P@1"]
CHUNK = 256  # queries per matrix product


class NoIdentityGroundTruth(ValueError):
    """Nothing to evaluate: no named person has two faces."""


Progress = Callable[[int, int], None]


def ground_truth(session: Session) -> dict[int, tuple[str, list[int]]]:
    """Named people with at least two faces: person id -> (name, face ids)."""
    rows = session.execute(select(Person.id, Person.name, Face.id).join(Face, Face.person_id == Person.id)
                           .where(Person.name.is_not(None)).order_by(Person.id, Face.id)).all()
    people: dict[int, tuple[str, list[int]]] = {}
    for person_id, name, face_id in rows:
        people.setdefault(person_id, (name, []))[1].append(face_id)
    return {pid: entry for pid, entry in people.items() if len(entry[1]) >= 2}


def check_ground_truth(session: Session) -> int:
    """How many queries an identity run would have; NoIdentityGroundTruth when none."""
    people = ground_truth(session)
    if not people:
        named = session.scalar(select(func.count(Person.id)).where(Person.name.is_not(None))) or 0
        raise NoIdentityGroundTruth(
            "no named person has two or more faces: name people on the People page first"
            + (f" ({named} named, each with fewer than two faces)" if named else ""))
    return sum(len(faces) for _, faces in people.values())


def identity_map(session: Session, layout=None, progress: Progress | None = None) -> dict:
    """Identity retrieval mAP over the named people (see the module docstring). `layout` is accepted for symmetry
    with the other evaluations; the vectors come from the catalogue."""
    start = time.monotonic()
    people = ground_truth(session)
    if not people:
        check_ground_truth(session)
    ids, vecs = face_vectors(session)
    row_of = {int(face_id): i for i, face_id in enumerate(ids.tolist())}
    owner = np.full(len(ids), -1, np.int64)
    for person_id, (_, faces) in people.items():
        owner[[row_of[f] for f in faces]] = person_id
    queries = [row_of[f] for _, faces in people.values() for f in faces]
    aps: dict[int, float] = {}
    top1: dict[int, float] = {}
    vecs64 = vecs.astype(np.float64)
    for at in range(0, len(queries), CHUNK):
        chunk = queries[at:at + CHUNK]
        sims = vecs64[chunk] @ vecs64.T
        for row, scores in zip(chunk, sims, strict=True):
            order = metrics.stable_order(scores)
            order = order[order != row]  # a face does not query itself
            relevant = owner[order] == owner[row]
            npos = int(relevant.sum())
            last = int(np.flatnonzero(relevant)[-1])
            ranking = np.where(relevant[:last + 1], metrics.POSITIVE, metrics.WRONG).tolist()
            aps[row] = metrics.oxford_ap(ranking, npos)
            top1[row] = metrics.precision_at(ranking, 1)
        if progress is not None:
            progress(min(at + CHUNK, len(queries)), len(queries))
    per_person = []
    for person_id, (name, faces) in people.items():
        rows = [row_of[f] for f in faces]
        per_person.append({"id": person_id, "name": name, "faces": len(faces), "queries": len(rows),
                           "AP": float(np.mean([aps[r] for r in rows])),
                           "P@1": float(np.mean([top1[r] for r in rows]))})
    per_person.sort(key=lambda p: (p["AP"], p["name"]))  # worst first
    model = session.get(Setting, "face_model")
    return {"mAP": float(np.mean(list(aps.values()))), "P@1": float(np.mean(list(top1.values()))),
            "n_queries": len(queries), "n_people": len(people), "n_faces": len(ids),
            "model": model.value if model else "", "people": per_person, "seconds": time.monotonic() - start}


def _spec(session: Session) -> str:
    spec = session.get(Setting, "face_model_spec")
    return spec.value if spec else "dlib"


def start(sessions: sessionmaker) -> int:
    """Store a running identity run (after checking there is something to evaluate); its id."""
    with sessions.begin() as session:
        n = check_ground_truth(session)
        model = session.get(Setting, "face_model")
        run = EvaluationRun(gt_name=GT_NAME, gt_format=GT_FORMAT,
                            gt_source=f"{len(ground_truth(session))} named people, {n} faces", protocol=PROTOCOL,
                            model=model.value if model else "faces", pretrained=_spec(session),
                            index_type="exact (cosine)")
        session.add(run)
        session.flush()
        return run.id


def _summary(result: dict) -> dict:
    return {PROTOCOL: {"mAP": result["mAP"], "P@1": result["P@1"], "n_queries": result["n_queries"], "n_empty": 0,
                       "n_people": result["n_people"], "n_faces": result["n_faces"]}}


def _records(result: dict) -> list[dict]:
    """Per-person rows in the form the run pages and the comparison read (qid, query, ap per protocol)."""
    return [{"qid": p["name"], "query": f"{p['faces']} faces", "person_id": p["id"], "faces": p["faces"],
             "queries": p["queries"], "ap": {PROTOCOL: p["AP"]}, "p1": p["P@1"], "npos": {PROTOCOL: p["faces"] - 1}}
            for p in result["people"]]


def execute(sessions: sessionmaker, layout=None, progress: Progress | None = None,
            run_id: int | None = None) -> tuple[int, dict]:
    """Evaluate and store (a cancel marks the stored run cancelled, a failure failed with its message; both
    propagate)."""
    from app.eval_runs import recorded

    run_id = run_id or start(sessions)
    with recorded(sessions, run_id), sessions() as session:
        result = identity_map(session, layout, progress)
    with sessions.begin() as session:
        run = session.get(EvaluationRun, run_id)
        run.status, run.seconds, run.n_queries = "done", result["seconds"], result["n_queries"]
        run.map_value = None if math.isnan(result["mAP"]) else result["mAP"]
        run.summary_json = json.dumps(_summary(result))
        run.queries_json = json.dumps(_records(result))
    return run_id, result


def format_lines(result: dict) -> list[str]:
    """What `offline.py evaluate @people` prints before its JSON line."""
    lines = [f"{GT_LABEL}: face model {result['model']} · exact cosine ranking of {result['n_faces']} faces · "
             f"{result['seconds']:.1f} s",
             f"mAP {result['mAP']:.4f}  P@1 {result['P@1']:.4f}  queries {result['n_queries']}  "
             f"people {result['n_people']}",
             f"{'person':<30} {'faces':>6} {'AP':>7} {'P@1':>7}"]
    lines += [f"{p['name'][:30]:<30} {p['faces']:>6} {p['AP']:>7.4f} {p['P@1']:>7.4f}" for p in result["people"]]
    return lines


def json_line(result: dict, run_id: int) -> str:
    return json.dumps({"mAP": result["mAP"], "P@1": result["P@1"], "protocol": PROTOCOL, "ground_truth": GT_NAME,
                       "model": result["model"], "run": run_id, "n_queries": result["n_queries"],
                       "n_people": result["n_people"], "n_faces": result["n_faces"],
                       "per_person": {p["name"]: p["AP"] for p in result["people"]}}, sort_keys=True)
