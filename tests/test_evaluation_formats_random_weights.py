"""Labelled folders, Revisited pickles and saved boxes (@annotations) evaluated end to end on a small
image collection.

Random tiny-CLIP weights: the checks are about which items count and how (self excluded, protocols,
left-out queries). Expected values come from a ranking computed here (numpy over the index's vectors)
and the reference rules in tests/eval_fixtures.py, never from the run's own ranking or app.metrics.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import eval_runs, groundtruth
from app.collection import Collection
from app.db import open_database
from app.indexer import IndexOptions, run_index
from app.paths import DataLayout
from app.sample import make_image
from tests.conftest import TINY_MODEL, db_url
from tests.eval_fixtures import collection_rows, oxford_compute_ap, ranking, revisitop_compute_map

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
    sessions = open_database(db_url(layout.data_dir))
    run_index(layout, [root / "photos"], IndexOptions(model=TINY_MODEL, pretrained="none", device="cpu",
                                                      progress=False), sessions, encoder=tiny_encoder)
    return root / "photos", layout, sessions


def _evaluate(gt, layout, sessions, encoder, protocol=None):
    snap = Collection(layout, sessions).snapshot()
    config = eval_runs.configuration(snap, "clip", None)
    return eval_runs.execute(layout, sessions, snap, gt, config, lambda: encoder, protocol=protocol)[1]


def _rows(layout, root):
    """(vectors, entries, labelled name per row) of the collection."""
    feats, entries = collection_rows(layout.data_dir)
    return feats, entries, [groundtruth.labelled_name(root, Path(e.source_path)) for e in entries]


def _query_vector(encoder, path: Path, box=None):
    with Image.open(path) as im:
        image = im.convert("RGB")
    return encoder.encode_images([image if box is None else image.crop(box)])


def test_labelled_folders_rank_the_others_of_the_label(labelled, tiny_encoder):
    root, layout, sessions = labelled
    result = _evaluate(groundtruth.load(root), layout, sessions, tiny_encoder)
    feats, _, names = _rows(layout, root)
    by_id = {q["qid"]: q for q in result.queries}
    assert len(by_id) == 6
    for qid, q in by_id.items():
        ranked = [names[r] for r in ranking(feats, _query_vector(tiny_encoder, root / f"{qid}.jpg"))]
        ranked.remove(qid)  # the query itself is excluded
        assert [name for _, name, _, _ in q["top"]] == ranked
        label = qid.split("/")[0]
        pos = {n for n in ranked if n.split("/")[0] == label}
        expected = oxford_compute_ap(ranked, pos, set()) if pos else None
        assert q["ap"]["standard"] == (None if expected is None else pytest.approx(expected, abs=1e-12))
    assert result.summary["standard"]["n_empty"] == 1  # the lone owl has nothing to find


def test_revisited_protocols_end_to_end(labelled, tiny_encoder, tmp_path):
    root, layout, sessions = labelled
    imlist = [f"{label}/{label}_{i}" for label, n in LABELS.items() for i in range(n)]
    stems = [n.split("/")[1] for n in imlist]
    cfg = {"imlist": stems, "qimlist": ["cat_0"],
           "gnd": [{"bbx": [0, 0, 160, 120], "easy": [1], "hard": [2], "junk": [3]}]}
    path = tmp_path / "gnd_rtest.pkl"
    path.write_bytes(pickle.dumps(cfg))
    result = _evaluate(groundtruth.load(path), layout, sessions, tiny_encoder, protocol="hard")
    q = result.queries[0]
    feats, _, names = _rows(layout, root)
    order = ranking(feats, _query_vector(tiny_encoder, root / "cat" / "cat_0.jpg", (0, 0, 160, 120)))
    ranked = [names[r].split("/")[1] for r in order]
    assert [name for _, name, _, _ in q["top"]] == ranked  # cat_0 is in imlist here, so it is ranked too
    ranks = np.array([[stems.index(n) for n in ranked]]).T
    for protocol, ok, junk in (("easy", [1], [3, 2]), ("medium", [1, 2], [3]), ("hard", [2], [3, 1])):
        aps, prs = revisitop_compute_map(ranks, [{"ok": ok, "junk": junk}])
        assert q["ap"][protocol] == pytest.approx(aps[0], abs=1e-12), protocol
        assert [q["p_revisitop"][protocol][str(k)] for k in (1, 5, 10, 100)] == pytest.approx(prs[0], abs=1e-12)
    assert result.protocol == "hard" and result.headline["mAP"] == pytest.approx(q["ap"]["hard"])
    labels = {name: label for _, name, label, _ in q["top"]}
    assert labels["cat_1"] == "easy" and labels["cat_2"] == "hard" and labels["dog_0"] == "junk"


def test_saved_boxes_serve_as_ground_truth(labelled, tiny_encoder):
    """@annotations: each box queries with its region; the other items boxed with its label are relevant,
    its own item is left out; a label on one item only has nothing to find."""
    root, layout, sessions = labelled
    feats, entries, names = _rows(layout, root)
    row_of = {n: r for r, n in enumerate(names)}
    boxed = {"cat/cat_0": ("pair", (30, 20, 120, 90)), "cat/cat_2": ("pair", (0, 0, 200, 150)),
             "dog/dog_1": ("pair", (100, 60, 150, 120)), "owl/owl_0": ("solo", (10, 10, 50, 50))}
    items = {n: str(entries[row_of[n]].item) for n in boxed}  # how boxes name items: opaque text
    boxes = [(i, items[n], box, label) for i, (n, (label, box)) in enumerate(boxed.items(), start=1)]
    result = _evaluate(groundtruth.from_annotations(boxes), layout, sessions, tiny_encoder)
    by_query = {q["query"]: q for q in result.queries}
    for name, (label, (x, y, w, h)) in boxed.items():
        q = by_query[items[name]]
        order = ranking(feats, _query_vector(tiny_encoder, root / f"{name}.jpg", (x, y, x + w, y + h)))
        ranked = [str(entries[r].item) for r in order if r != row_of[name]]
        assert [n for _, n, _, _ in q["top"]] == ranked
        pos = {items[n] for n, (other, _) in boxed.items() if other == label and n != name}
        assert q["npos"]["standard"] == len(pos)
        expected = oxford_compute_ap(ranked, pos, set()) if pos else None
        assert q["ap"]["standard"] == (None if expected is None else pytest.approx(expected, abs=1e-12))
    assert result.summary["standard"]["n_empty"] == 1


def test_a_protocol_of_another_format_is_refused_and_the_run_marked_failed(labelled, tiny_encoder):
    root, layout, sessions = labelled
    with pytest.raises(groundtruth.GroundTruthError, match="protocol 'hard' does not apply to a labelled set"):
        _evaluate(groundtruth.load(root), layout, sessions, tiny_encoder, protocol="hard")
    newest = eval_runs.listing(sessions)[0]
    assert newest.status == "failed" and "does not apply" in newest.message
