"""The UCF101-layout evaluation (`<Class>/<clip>.avi`) on a small made-up set, with the tiny random-weight CLIP:
offline.py indexes and evaluates in processes of their own, /evaluation runs it from the ground-truth folder, and
the test computes mAP, top-1 and top-5 itself from the feature files and the encoder's text vectors.

Random weights: the numbers say nothing about recognising actions; they check that both paths compute exactly
what the issue specifies.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.sample import ShotPlan, make_video
from tests.conftest import TINY_CONFIG, add_users, db_url, index_args, login
from tests.eval_fixtures import oxford_compute_ap
from tests.processes import cli

CLASSES = {"PlayingGuitar": "playing guitar", "WalkingWithDog": "walking with dog", "YoYo": "yo yo"}
CLIPS = 3
SET = "ucfmini"
FAST = ["--no-faces", "--no-detector"]


def make_set(root: Path, classes, clips: int, seed0: int = 0) -> None:
    for c, name in enumerate(classes):
        for k in range(clips):
            plan = [ShotPlan(20 + 5 * k), ShotPlan(25)]
            make_video(root / name / f"v_{name}_g{k + 1:02d}_c01.avi", plan, fps=25, size=(160, 120),
                       seed=seed0 + 10 * c + k)


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    data = tmp_path_factory.mktemp("ucf")
    folder = data / "groundtruth" / SET
    make_set(folder, CLASSES, CLIPS)
    done = cli("index", str(folder), *index_args(data), *FAST)
    assert done.returncode == 0, done.stderr
    return data, folder


def independent(data: Path, folder: Path, encoder) -> dict:
    """mAP (Oxford AP, each clip ranking the others by the cosine of the clips' mean keyframe vectors), top-1 and
    top-5 (mean over keyframes of softmax(100 * kf @ prompts.T)), overall and per class."""
    from app.models import Keyframe, Video

    engine = create_engine(db_url(data))
    clips, vecs = [], []
    with Session(engine) as s:
        for path in sorted(folder.glob("*/*.avi")):
            video = s.scalar(select(Video).where(Video.path == str(path.resolve())))
            ns = s.scalars(select(Keyframe.n).where(Keyframe.video_pk == video.id).order_by(Keyframe.n)).all()
            clips.append((path.parent.name, path.name))
            vecs.append(np.load(data / "feature" / f"{video.video_id}.npy")[[n - 1 for n in ns]].astype(np.float64))
    engine.dispose()
    names = sorted(CLASSES)
    text = encoder.encode_text([f"a video of a person {CLASSES[n]}" for n in names]).astype(np.float64)
    means = np.stack([v.mean(axis=0) / np.linalg.norm(v.mean(axis=0)) for v in vecs])
    aps, top1, top5 = [], [], []
    for i, (cls, _) in enumerate(clips):
        sims = means @ means[i]
        others = sorted((j for j in range(len(clips)) if j != i), key=lambda j: (-sims[j], j))
        positives = {j for j in others if clips[j][0] == cls}
        aps.append(oxford_compute_ap(others, positives, set()))
        z = 100 * vecs[i] @ text.T
        p = np.exp(z - z.max(axis=1, keepdims=True))
        scores = (p / p.sum(axis=1, keepdims=True)).mean(axis=0)
        order = sorted(range(len(names)), key=lambda c: (-scores[c], c))
        top1.append(float(names[order[0]] == cls))
        top5.append(float(cls in [names[c] for c in order[:5]]))
    per_class = {}
    for name in names:
        mine = [i for i, (cls, _) in enumerate(clips) if cls == name]
        per_class[name] = {"AP": np.mean([aps[i] for i in mine]), "top1": np.mean([top1[i] for i in mine]),
                           "top5": np.mean([top5[i] for i in mine]), "clips": len(mine)}
    return {"mAP": float(np.mean(aps)), "top1": float(np.mean(top1)), "top5": float(np.mean(top5)),
            "per_class": per_class}


def check(got: dict, want: dict) -> None:
    for key in ("mAP", "top1", "top5"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert set(got["per_class"]) == set(want["per_class"])
    for name, row in want["per_class"].items():
        for key, value in row.items():
            assert got["per_class"][name][key] == pytest.approx(value, abs=1e-9), (name, key)


def test_offline_evaluate_prints_independently_computed_map_and_accuracy_random_weights(ucf, tiny_encoder):
    data, folder = ucf
    done = cli("evaluate", str(folder), "--data-dir", str(data), "--model-config", str(TINY_CONFIG), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"mAP", "top1", "top5", "per_class"} <= set(last)
    want = independent(data, folder, tiny_encoder)
    check(last, want)
    assert last["n_clips"] == 9 and last["n_classes"] == 3 and last["ground_truth"] == SET
    assert f"mAP {want['mAP']:.4f}" in done.stdout and f"top-1 {want['top1']:.4f}" in done.stdout
    print(done.stdout)  # the table for the closing note (pytest -s)


def test_clips_not_indexed_are_named_random_weights(ucf, tmp_path):
    data, _ = ucf
    partial = tmp_path / "partial"
    make_set(partial, ["Archery", "Bowling"], 2, seed0=100)
    done = cli("index", str(partial / "Archery"), *index_args(data), *FAST)
    assert done.returncode == 0, done.stderr
    done = cli("evaluate", str(partial), "--data-dir", str(data), "--model-config", str(TINY_CONFIG), "--device", "cpu")
    assert done.returncode == 2
    assert "2 of the 4 clips are not in the collection (Bowling/v_Bowling_g01_c01.avi, " \
           "Bowling/v_Bowling_g02_c01.avi)" in done.stderr, done.stderr
    assert f"offline.py index {partial.resolve()}" in done.stderr and "Traceback" not in done.stderr


def test_evaluation_page_runs_stores_and_shows_the_set_random_weights(ucf, tiny_encoder):
    from app import create_app

    data, folder = ucf
    app = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True, "WTF_CSRF_ENABLED": False,
                      "LOGIN_RATE_LIMIT": "1000 per minute"})
    add_users(app.extensions["sessions"])
    client = app.test_client()
    login(client, "boss")
    page = client.get("/evaluation").get_data(as_text=True)
    assert f'<option value="{SET}">{SET} (UCF101 video folder)</option>' in page
    r = client.post("/evaluation", data={"gt": SET, "model": "clip"})
    assert r.status_code == 303, r.get_data(as_text=True)[:500]
    run_id = int(re.search(r"/evaluation/runs/(\d+)", r.headers["Location"]).group(1))
    deadline = time.time() + 120
    while client.get(f"/evaluation/runs/{run_id}/progress").get_json()["status"] == "running":
        assert time.time() < deadline
        time.sleep(0.2)
    run = client.get(f"/evaluation/runs/{run_id}.json").get_json()
    assert run["status"] == "done" and run["gt_format"] == "ucf101", run["message"]
    want = independent(data, folder, tiny_encoder)
    row = run["summary"]["video"]
    check({"mAP": row["mAP"], "top1": row["top-1"], "top5": row["top-5"],
           "per_class": {q["qid"]: {"AP": q["ap"]["video"], "top1": q["top1"], "top5": q["top5"], "clips": q["clips"]}
                         for q in run["queries"]}}, want)
    html = client.get(f"/evaluation/runs/{run_id}").get_data(as_text=True)
    for metric, key in (("mAP", "mAP"), ("top-1", "top1"), ("top-5", "top5")):
        assert f'data-metric="{metric}">{want[key]:.4f}</td>' in html
    assert sorted(re.findall(r'data-class="([^"]+)"', html)) == sorted(CLASSES)
    assert client.get(f"/evaluation/runs/{run_id}/queries/0").status_code == 404
    listing = client.get("/evaluation").get_data(as_text=True)
    assert f"#{run_id}" in listing and f"{want['mAP']:.4f}" in listing
