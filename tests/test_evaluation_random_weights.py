"""/evaluation and `offline.py evaluate` on an Oxford-style fixture built from the test collection.

Random tiny-CLIP weights: the numbers say nothing about retrieval quality; they check that the
page and the CLI compute the same, hand-computed values over a real ranking.
"""
from __future__ import annotations

import json
import re
import time

import pytest

import offline
from tests.conftest import TINY_CONFIG, add_users, db_url, login
from tests.eval_fixtures import EXPECTED, build_oxford_fixture, collection_rows, oxford_compute_ap, ranking

GT_NAME = "oxford_fixture"


@pytest.fixture(scope="module")
def oxford_gt(eval_collection, tiny_encoder):
    dest = eval_collection / "groundtruth" / GT_NAME
    rankings = build_oxford_fixture(eval_collection, tiny_encoder, dest)
    return dest, rankings


@pytest.fixture(scope="module")
def eval_app(eval_collection, oxford_gt, tiny_checkpoint):
    from app import create_app

    application = create_app({"DATA_DIR": str(eval_collection), "TESTING": True, "MODEL_CONFIG": str(TINY_CONFIG),
                              "DEVICE": "cpu", "BASELINE_WEIGHTS": "none", "WTF_CSRF_ENABLED": False,
                              "LOGIN_RATE_LIMIT": "1000 per minute"})
    add_users(application.extensions["sessions"])
    return application


@pytest.fixture()
def admin_client(eval_app):
    client = eval_app.test_client()
    login(client, "boss")
    return client


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = offline.main(["evaluate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def check_expected(summary: dict, per_query: dict) -> None:
    for qid, ap in EXPECTED["per_query"].items():
        assert per_query[qid] == (None if ap is None else pytest.approx(ap, abs=1e-9)), qid
    for protocol, numbers in EXPECTED.items():
        if protocol == "per_query":
            continue
        for key, value in numbers.items():
            assert summary[protocol][key] == pytest.approx(value, abs=1e-9), (protocol, key)


def test_cli_prints_hand_computed_numbers_and_a_json_last_line(capsys, eval_collection, oxford_gt):
    code, out, err = run_cli(capsys, str(oxford_gt[0]), "--data-dir", str(eval_collection),
                             "--model-config", str(TINY_CONFIG), "--device", "cpu")
    assert code == 0, err
    result = cli_json(out)
    assert result["mAP"] == pytest.approx(EXPECTED["standard"]["mAP"], abs=1e-9)
    check_expected(result["summary"], result["per_query"])
    assert "standard" in out and f"{EXPECTED['standard']['mAP']:.4f}" in out
    print(out)  # the table for the closing note (pytest -s)


def wait_for(client, run_id: int, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        progress = client.get(f"/evaluation/runs/{run_id}/progress").get_json()
        if progress["status"] != "running":
            return progress
        time.sleep(0.2)
    raise AssertionError("evaluation did not finish")


def start_run(client, **form) -> int:
    r = client.post("/evaluation", data=form)
    assert r.status_code == 303, r.get_data(as_text=True)[:500]
    return int(re.search(r"/evaluation/runs/(\d+)", r.headers["Location"]).group(1))


def test_page_shows_the_same_numbers_as_the_cli(capsys, admin_client, eval_collection, oxford_gt):
    client = admin_client
    assert GT_NAME in client.get("/evaluation").get_data(as_text=True)
    run_id = start_run(client, gt=GT_NAME, model="clip")
    assert wait_for(client, run_id)["status"] == "done"
    run = client.get(f"/evaluation/runs/{run_id}.json").get_json()
    per_query = {q["qid"]: q["ap"]["standard"] for q in run["queries"]}
    check_expected(run["summary"], per_query)
    code, out, _ = run_cli(capsys, str(oxford_gt[0]), "--data-dir", str(eval_collection),
                           "--model-config", str(TINY_CONFIG), "--device", "cpu")
    assert cli_json(out)["summary"] == run["summary"]
    html = client.get(f"/evaluation/runs/{run_id}").get_data(as_text=True)
    assert f"{EXPECTED['standard']['mAP']:.4f}" in html and "<svg" in html and "polyline" in html
    # worst first: q3 (59/240) before q1 (128/180); q2 has no positives and comes last
    order = re.findall(r'data-qid="([^"]+)"', html)
    assert order == ["q3_late", "q1_mixed", "q2_no_positives"]


def test_query_page_outlines_results_by_label(admin_client, oxford_gt):
    client = admin_client
    run_id = start_run(client, gt=GT_NAME, model="clip")
    wait_for(client, run_id)
    run = client.get(f"/evaluation/runs/{run_id}.json").get_json()
    i = next(i for i, q in enumerate(run["queries"]) if q["qid"] == "q1_mixed")
    html = client.get(f"/evaluation/runs/{run_id}/queries/{i}").get_data(as_text=True)
    labels = re.findall(r'class="card judged (\w+)" data-label="(\w+)"', html)
    ranking = oxford_gt[1]["q1_mixed"]
    assert [lbl for _, lbl in labels[:6]] == ["good", "junk", "wrong", "good", "wrong", "ok"]
    assert len(labels) == len(ranking)
    assert "Every positive is in the first" in html


def test_two_runs_compare_per_query(admin_client):
    client = admin_client
    a = start_run(client, gt=GT_NAME, model="clip")
    wait_for(client, a)
    b = start_run(client, gt=GT_NAME, model="tv:resnet50")  # random-weight ResNet-50 baseline
    assert wait_for(client, b, timeout=300)["status"] == "done"
    run_b = client.get(f"/evaluation/runs/{b}.json").get_json()
    assert run_b["model"] == "tv:resnet50" and run_b["pretrained"] == "none"
    html = client.get(f"/evaluation/compare?a={a}&b={b}").get_data(as_text=True)
    assert "q1_mixed" in html and "B − A" in html
    listing = client.get("/evaluation").get_data(as_text=True)
    assert f"#{a}" in listing and f"#{b}" in listing and "tv:resnet50" in listing


def test_running_an_evaluation_needs_an_admin(eval_app):
    client = eval_app.test_client()
    assert client.post("/evaluation", data={"gt": GT_NAME}).status_code == 302  # to the login page
    login(client, "ann")
    r = client.post("/evaluation", data={"gt": GT_NAME})
    assert r.status_code == 403 and "needs the admin role" in r.get_data(as_text=True)


def test_bad_ground_truth_gets_a_4xx_with_the_file_and_line(admin_client, eval_collection):
    client = admin_client
    bad = eval_collection / "groundtruth" / "bad_names"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "q_query.txt").write_text("still_0 0 0 10 10\n")
    (bad / "q_good.txt").write_text("still_1\nno_such_image\n")
    (bad / "q_ok.txt").write_text("")
    (bad / "q_junk.txt").write_text("")
    r = client.post("/evaluation", data={"gt": "bad_names", "model": "clip"})
    assert r.status_code == 303  # the name check runs with the evaluation; its page shows the failure
    run_id = int(r.headers["Location"].rsplit("/", 1)[1])
    progress = wait_for(client, run_id)
    assert progress["status"] == "failed"
    assert "q_good.txt:2: unknown image 'no_such_image'" in progress["message"]
    page = client.get(f"/evaluation/runs/{run_id}").get_data(as_text=True)
    assert "q_good.txt:2" in page
    from io import BytesIO

    r = client.post("/evaluation", data={"gt_file": (BytesIO(b"query_id,query\n1,x\n"), "m.csv"), "model": "clip"},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and "missing column(s) video_id, start_frame, end_frame" in r.get_data(as_text=True)
    r = client.post("/evaluation", data={"gt_file": (BytesIO(b"\x80\x03}q\x00."), "gnd.pkl"), "model": "clip"},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and "never from an upload" in r.get_data(as_text=True)
    r = client.post("/evaluation", data={"gt": "../../etc", "model": "clip"})
    assert r.status_code == 400 and "no ground-truth set named" in r.get_data(as_text=True)
    assert client.get("/evaluation/runs/99999").status_code == 404


def test_cli_reports_malformed_sets_without_a_traceback(capsys, eval_collection, tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("query_id,query,video_id,start_frame,end_frame\n1,a car,x,5,1\n")
    code, out, err = run_cli(capsys, str(bad), "--data-dir", str(eval_collection), "--model-config",
                             str(TINY_CONFIG))
    assert code == 2 and "m.csv:2: the frame range 5-1 is empty" in err and "Traceback" not in err


def test_video_moments_score_mrr_and_hit_at_k(capsys, eval_collection, tiny_encoder, tmp_path):
    """Frame ranges against keyframes: m1 covers every keyframe of one video, m3 two keyframes of another, m2
    none. Expected numbers come from a ranking computed here (numpy over the index's vectors) and the
    reference rules in tests/eval_fixtures.py, not from the run's own ranking."""
    feats, entries = collection_rows(eval_collection)
    long_frames = sorted(e.frame_idx for e in entries if e.video_id == "long_shot")
    lo, hi = long_frames[1], long_frames[2]
    queries = {"m1": ("a moving pattern", "cuts_and_dissolve", 0, 100000),
               "m2": ("nothing there", "no_such_video", 0, 10), "m3": ("a long shot", "long_shot", lo, hi)}
    csv_path = tmp_path / "moments.csv"
    csv_path.write_text("query_id,query,video_id,start_frame,end_frame\n"
                        + "".join(f"{qid},{text},{video},{start},{end}\n" for qid, (text, video, start, end)
                                  in queries.items()))
    code, out, err = run_cli(capsys, str(csv_path), "--data-dir", str(eval_collection),
                             "--model-config", str(TINY_CONFIG), "--device", "cpu")
    assert code == 0, err
    result = cli_json(out)
    summary = result["summary"]["standard"]
    from app.db import open_database
    from app.eval_runs import listing, load

    sessions = open_database(db_url(eval_collection))
    run = {q["qid"]: q for q in load(sessions, listing(sessions)[0].id)["queries"]}
    names = [str(e.item) for e in entries]  # how the run names items: opaque text, only compared
    expected = {}
    for qid, (text, video, start, end) in queries.items():
        ranked = [names[r] for r in ranking(feats, tiny_encoder.encode_text([text]))]
        pos = {names[r] for r, e in enumerate(entries) if e.video_id == video and start <= e.frame_idx <= end}
        assert [name for _, name, _, _ in run[qid]["top"]] == ranked
        assert [label == "good" for _, _, label, _ in run[qid]["top"]] == [n in pos for n in ranked]
        if pos:
            first = next(i for i, n in enumerate(ranked, start=1) if n in pos)
            expected[qid] = (oxford_compute_ap(ranked, pos, set()), first)
    assert sorted(expected) == ["m1", "m3"] and summary["n_empty"] == 1  # m2 has no keyframe in its range
    assert sum(label == "good" for _, _, label, _ in run["m3"]["top"]) == 2
    assert result["per_query"]["m1"] == pytest.approx(expected["m1"][0], abs=1e-12)
    assert summary["mAP"] == pytest.approx((expected["m1"][0] + expected["m3"][0]) / 2, abs=1e-12)
    assert summary["MRR"] == pytest.approx((1 / expected["m1"][1] + 1 / expected["m3"][1]) / 2, abs=1e-12)
    for k in (1, 5):
        assert summary[f"hit@{k}"] == pytest.approx(sum(first <= k for _, first in expected.values()) / 2)
