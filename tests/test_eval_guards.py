"""Evaluation inputs that used to pass silently or crash: the ranking depth, a non-finite query box, and
runs left 'running' by a server that stopped."""
from __future__ import annotations

import pytest

import offline
from app import eval_runs, evaluation
from app.db import open_database
from app.groundtruth import GroundTruth, GroundTruthError
from app.models import EvaluationRun
from app.paths import DataLayout
from app.sample import make_image
from tests.conftest import TINY_CONFIG, db_url


def _runs(data_dir) -> int:
    return len(eval_runs.listing(open_database(db_url(data_dir))))


@pytest.mark.parametrize("depth", ["-5", "0", "1000001"])
def test_a_depth_out_of_range_is_an_error_and_no_run(capsys, eval_collection, tmp_path, depth):
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "q_query.txt").write_text("still_0 0 0 100 100\n")
    (gt / "q_good.txt").write_text("still_1\n")
    (gt / "q_ok.txt").write_text("")
    (gt / "q_junk.txt").write_text("")
    before = _runs(eval_collection)
    code = offline.main(["evaluate", str(gt), "--data-dir", str(eval_collection), "--model-config",
                         str(TINY_CONFIG), "--device", "cpu", "--depth", depth])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: the ranking depth must be a whole number from 1 to 1,000,000, not {depth}" in err
    assert "Traceback" not in err and _runs(eval_collection) == before


def test_evaluate_itself_refuses_a_bad_depth():
    for bad in (-5, 0, 10**7, True, 2.5, "10"):
        with pytest.raises(GroundTruthError, match="the ranking depth must be a whole number"):
            evaluation.checked_depth(bad)
    assert evaluation.checked_depth(None) is None and evaluation.checked_depth(1) == 1


@pytest.mark.parametrize("box", [(0, 0, float("inf"), 10), (float("nan"), 0, 10, 10), (0, 0, float("-inf"), 5)])
def test_a_non_finite_query_box_is_an_error_not_a_traceback(tmp_path, box):
    make_image(tmp_path / "q.jpg", 1)
    with pytest.raises(GroundTruthError, match=r"q.jpg: the query box .* must be four finite numbers"):
        evaluation.query_image(tmp_path / "q.jpg", box)


def test_runs_left_running_are_marked_interrupted_at_start_up(tmp_path):
    layout = DataLayout.from_data_dir(tmp_path)
    layout.ensure()
    sessions = open_database(db_url(tmp_path))
    gt = GroundTruth("g", "oxford", "g", [])
    ids = [eval_runs.start(sessions, gt, evaluation.Config(), "standard") for _ in range(4)]
    eval_runs.fail(sessions, ids[2], "boom")
    eval_runs.cancel(sessions, ids[3])
    with sessions.begin() as session:
        assert eval_runs.mark_interrupted(session) == 2
    with sessions() as session:
        runs = {r.id: (r.status, r.message) for r in session.query(EvaluationRun)}
    assert runs[ids[0]] == runs[ids[1]] == ("failed", "interrupted: the server stopped during the run")
    assert runs[ids[2]] == ("failed", "boom") and runs[ids[3]] == ("cancelled", "cancelled by a user")
    with sessions.begin() as session:
        assert eval_runs.mark_interrupted(session) == 0  # nothing left running
