"""Labelled folders and Revisited pickles evaluated end to end on a small image collection.

Random tiny-CLIP weights: the checks are about which items count and how (self excluded,
protocols, left-out queries), computed from the ranking the run itself reports.
"""
from __future__ import annotations

import pickle

import pytest

from app import eval_runs, groundtruth, metrics
from app.collection import Collection
from app.db import open_database
from app.indexer import IndexOptions, run_index
from app.paths import DataLayout
from app.sample import make_image
from tests.conftest import TINY_MODEL

LABELS = {"cat": 3, "dog": 2, "owl": 1}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("labelled")
    seed = 0
    for label, count in LABELS.items():
        for i in range(count):
            make_image(root / "photos" / label / f"{label}_{i}.jpg", seed)
            seed += 1
    data = tmp_path_factory.mktemp("labelled-collection")
    layout = DataLayout.from_data_dir(data)
    layout.ensure()
    sessions = open_database(layout.database_url)
    run_index(layout, [root / "photos"], IndexOptions(model=TINY_MODEL, pretrained="none", device="cpu",
                                                      progress=False), sessions, encoder=tiny_encoder)
    return root / "photos", layout, sessions


def _evaluate(gt, layout, sessions, encoder, protocol=None):
    snap = Collection(layout, sessions).snapshot()
    config = eval_runs.configuration(snap, "clip", None)
    return eval_runs.execute(layout, sessions, snap, gt, config, lambda: encoder, protocol=protocol)[1]


def test_labelled_folders_rank_the_others_of_the_label(labelled, tiny_encoder):
    root, layout, sessions = labelled
    result = _evaluate(groundtruth.load(root), layout, sessions, tiny_encoder)
    by_id = {q["qid"]: q for q in result.queries}
    assert len(by_id) == 6
    for qid, q in by_id.items():
        names = [name for _, name, _, _ in q["top"]]
        assert qid not in names and len(names) == 5  # the query itself is excluded
        label = qid.split("/")[0]
        flags = [metrics.POSITIVE if n.split("/")[0] == label else metrics.WRONG for n in names]
        expected = metrics.oxford_ap(flags, LABELS[label] - 1) if LABELS[label] > 1 else None
        assert q["ap"]["standard"] == (None if expected is None else pytest.approx(expected))
    assert result.summary["standard"]["n_empty"] == 1  # the lone owl has nothing to find


def test_revisited_protocols_end_to_end(labelled, tiny_encoder, tmp_path):
    root, layout, sessions = labelled
    imlist = [f"{label}_{i}" for label, n in LABELS.items() for i in range(n)]
    cfg = {"imlist": imlist, "qimlist": ["cat_0"],
           "gnd": [{"bbx": [0, 0, 160, 120], "easy": [1], "hard": [2], "junk": [3]}]}
    path = tmp_path / "gnd_rtest.pkl"
    path.write_bytes(pickle.dumps(cfg))
    result = _evaluate(groundtruth.load(path), layout, sessions, tiny_encoder, protocol="hard")
    q = result.queries[0]
    names = [name for _, name, _, _ in q["top"]]

    def ap(pos, junk):
        flags = [metrics.POSITIVE if n in pos else metrics.JUNK if n in junk else metrics.WRONG for n in names]
        return metrics.revisited_ap(flags, len(pos))

    assert q["ap"]["easy"] == pytest.approx(ap({"cat_1"}, {"cat_2", "dog_0"}))
    assert q["ap"]["medium"] == pytest.approx(ap({"cat_1", "cat_2"}, {"dog_0"}))
    assert q["ap"]["hard"] == pytest.approx(ap({"cat_2"}, {"dog_0", "cat_1"}))
    assert result.protocol == "hard" and result.headline["mAP"] == pytest.approx(q["ap"]["hard"])
    labels = {name: label for _, name, label, _ in q["top"]}
    assert labels["cat_1"] == "easy" and labels["cat_2"] == "hard" and labels["dog_0"] == "junk"


def test_a_protocol_of_another_format_is_refused_and_the_run_marked_failed(labelled, tiny_encoder):
    root, layout, sessions = labelled
    with pytest.raises(groundtruth.GroundTruthError, match="protocol 'hard' does not apply to a labelled set"):
        _evaluate(groundtruth.load(root), layout, sessions, tiny_encoder, protocol="hard")
    newest = eval_runs.listing(sessions)[0]
    assert newest.status == "failed" and "does not apply" in newest.message
