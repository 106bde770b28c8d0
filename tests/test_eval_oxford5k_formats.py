"""The real Oxford5k ground-truth formats on a stand-in collection, in the three usual setups.

1. Oxford gt_files_170407 (`<q>_good/ok/junk.txt`, `<q>_query.txt` naming `oxc1_<image>` and a box), the
   query images inside the collection (the whole image folder indexed).
2. A Revisited `gnd_*.pkl` (imlist, qimlist, gnd with bbx/easy/hard/junk indices) over a collection of
   exactly `imlist`, the query images in a separate folder.
3. The same pkl over the whole folder: imlist, the query images and distractors.

Random tiny-CLIP weights: the numbers say nothing about retrieval quality. Expected values come from the
reference rules written out here (Oxford's compute_ap, revisitop's compute_map), applied to the ranking the
run reports (tests/eval_fixtures.py), never from app.metrics.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from app import eval_runs, evaluation, groundtruth
from app.collection import Collection
from app.db import open_database
from app.indexer import IndexOptions, run_index
from app.paths import DataLayout
from app.sample import make_image
from tests.conftest import TINY_MODEL, db_url
from tests.eval_fixtures import oxford_compute_ap, revisitop_compute_map

BUILDINGS = {"all_souls": 6, "ashmolean": 5, "balliol": 5}
DISTRACTORS = ["christ_church_000101", "christ_church_000102", "magdalen_000201"]
# qid -> (query image, box); Revisited puts these images in qimlist, never in imlist
QUERIES = {
    "all_souls_1": ("all_souls_000001", (12.0, 8.0, 300.0, 230.0)),
    "all_souls_2": ("all_souls_000002", (40.5, 20.0, 250.0, 200.5)),
    "ashmolean_1": ("ashmolean_000001", (0.0, 0.0, 320.0, 240.0)),
    "balliol_1": ("balliol_000001", (60.0, 30.0, 280.0, 220.0)),
}
KAPPAS = (1, 5, 10, 100)
OXFORD_PROTOCOLS = ("standard", "good", "ok", "junk")
REVISITED_PROTOCOLS = ("easy", "medium", "hard")


def plain_precision(ranked: list[str], pos: set[str], junk: set[str], k: int) -> float:
    """Positives among the first k non-junk names, divided by k."""
    kept = [n for n in ranked if n not in junk][:k]
    return sum(n in pos for n in kept) / k


# -- the stand-in data -----------------------------------------------------------------------------------
def _images() -> list[str]:
    return [f"{b}_{i:06d}" for b, count in BUILDINGS.items() for i in range(1, count + 1)]


def _oxford_lists(rng: np.random.Generator) -> dict[str, dict[str, list[str]]]:
    """Per query: its image in good (as in Oxford), the rest of its building spread over good/ok/junk, one
    image of another building as junk."""
    lists = {}
    for qid, (image, _) in QUERIES.items():
        building = image.rsplit("_", 1)[0]
        own = [n for n in _images() if n.startswith(building) and n != image]
        rng.shuffle(own)
        other = next(n for n in _images() if not n.startswith(building))
        lists[qid] = {"good": [image, *own[:2]], "ok": own[2:3], "junk": [*own[3:4], other]}
    return lists


def _gnd(imlist: list[str], rng: np.random.Generator) -> list[dict]:
    """Per query: easy/hard/junk indices into imlist, its building's images spread over them."""
    gnd = []
    for image, box in QUERIES.values():
        building = image.rsplit("_", 1)[0]
        own = [i for i, n in enumerate(imlist) if n.startswith(building)]
        rng.shuffle(own)
        other = next(i for i, n in enumerate(imlist) if not n.startswith(building))
        gnd.append({"bbx": np.array(box), "easy": own[:2], "hard": own[2:4], "junk": [*own[4:], other]})
    return gnd


def _index(folder: Path, data: Path, encoder) -> tuple[DataLayout, object]:
    layout = DataLayout.from_data_dir(data)
    layout.ensure()
    sessions = open_database(db_url(layout.data_dir))
    summary = run_index(layout, [folder], IndexOptions(model=TINY_MODEL, pretrained="none", device="cpu",
                                                       progress=False), sessions, encoder=encoder)
    assert not summary.failed
    return layout, sessions


@pytest.fixture(scope="module")
def oxford5k(tmp_path_factory, tiny_encoder) -> dict:
    """oxbuild_images/ (buildings, query images, distractors), gt_files/ (Oxford), gnd_rstandin.pkl, a
    folder of exactly imlist and one of the query images; both folders indexed."""
    root = tmp_path_factory.mktemp("oxford5k")
    folder = root / "oxbuild_images"
    for seed, name in enumerate(_images() + DISTRACTORS):
        make_image(folder / f"{name}.jpg", 100 + seed)
    rng = np.random.default_rng(7)
    gt_dir = root / "gt_files_170407"
    gt_dir.mkdir()
    lists = _oxford_lists(rng)
    for qid, (image, box) in QUERIES.items():
        (gt_dir / f"{qid}_query.txt").write_text(f"oxc1_{image} {' '.join(f'{v:.1f}' for v in box)}\n")
        for label, names in lists[qid].items():
            (gt_dir / f"{qid}_{label}.txt").write_text("".join(f"{n}\n" for n in names))
    qimlist = [image for image, _ in QUERIES.values()]
    imlist = [n for n in _images() if n not in qimlist]
    cfg = {"imlist": imlist, "qimlist": qimlist, "gnd": _gnd(imlist, rng)}
    pkl = root / "gnd_rstandin.pkl"
    pkl.write_bytes(pickle.dumps(cfg))
    only_imlist, queries = root / "imlist_only", root / "queries"
    for names, dest in ((imlist, only_imlist), (qimlist, queries)):
        dest.mkdir()
        for n in names:
            shutil.copy(folder / f"{n}.jpg", dest / f"{n}.jpg")
    return {"folder": folder, "gt_dir": gt_dir, "lists": lists, "pkl": pkl, "cfg": cfg, "queries": queries,
            "whole": _index(folder, root / "data-whole", tiny_encoder),
            "imlist": _index(only_imlist, root / "data-imlist", tiny_encoder)}


def _evaluate(collection, gt, encoder, queries_dir=None, depth=None):
    layout, sessions = collection
    snap = Collection(layout, sessions).snapshot()
    config = eval_runs.configuration(snap, "clip", None)
    config.depth = depth
    return eval_runs.execute(layout, sessions, snap, gt, config, lambda: encoder, queries_dir=queries_dir)[1]


def _ranked(record: dict) -> list[str]:
    return [name for _, name, _, _ in record["top"]]


# -- setup 1: Oxford text files, the query images in the collection --------------------------------------
def test_oxford_files_over_the_whole_folder_match_compute_ap(oxford5k, tiny_encoder):
    gt = groundtruth.load(oxford5k["gt_dir"])
    result = _evaluate(oxford5k["whole"], gt, tiny_encoder)
    everything = {p.stem for p in oxford5k["folder"].iterdir()}
    for q in result.queries:
        ranked = _ranked(q)
        assert set(ranked) == everything and len(ranked) == len(everything)  # the query image ranks too
        lists = {k: set(v) for k, v in oxford5k["lists"][q["qid"]].items()}
        g, o, j = lists["good"], lists["ok"], lists["junk"]
        judged = {"standard": (g | o, j), "good": (g, o | j), "ok": (o, g | j), "junk": (j, set())}
        for protocol in OXFORD_PROTOCOLS:
            pos, junk = judged[protocol]
            assert q["ap"][protocol] == pytest.approx(oxford_compute_ap(ranked, pos, junk), abs=1e-12), \
                (q["qid"], protocol)
            for k in KAPPAS:
                assert q["p"][protocol][str(k)] == pytest.approx(plain_precision(ranked, pos, junk, k), abs=1e-12)
    aps = [q["ap"]["standard"] for q in result.queries]
    assert result.summary["standard"]["mAP"] == pytest.approx(float(np.mean(aps)), abs=1e-12)


# -- setups 2 and 3: the Revisited pkl -------------------------------------------------------------------
def _revisitop_expected(cfg: dict, result) -> dict[str, dict[str, tuple[float, list]]]:
    """protocol -> qid -> (AP, precision at KAPPAS), by revisitop's rules on the ranking the run reports."""
    imlist = cfg["imlist"]
    by_qid = {q["qid"]: q for q in result.queries}  # a Revisited query's id is its qimlist name
    ranks = np.array([[imlist.index(n) for n in _ranked(by_qid[name])] for name in cfg["qimlist"]]).T
    out = {}
    for protocol in REVISITED_PROTOCOLS:
        gnd_t = []
        for g in cfg["gnd"]:
            e, h, j = list(g["easy"]), list(g["hard"]), list(g["junk"])
            gnd_t.append({"easy": {"ok": e, "junk": j + h}, "medium": {"ok": e + h, "junk": j},
                          "hard": {"ok": h, "junk": j + e}}[protocol])
        aps, prs = revisitop_compute_map(ranks, gnd_t)
        out[protocol] = {q: (aps[i], prs[i]) for i, q in enumerate(cfg["qimlist"])}
    return out


def _check_revisited(result, cfg: dict) -> None:
    expected = _revisitop_expected(cfg, result)
    imlist = cfg["imlist"]
    for q in result.queries:
        ranked = _ranked(q)
        assert sorted(ranked) == sorted(imlist)  # the database is imlist: no query image, no distractor
        i = cfg["qimlist"].index(q["qid"])
        g = cfg["gnd"][i]
        e, h, j = ({imlist[x] for x in g[key]} for key in ("easy", "hard", "junk"))
        judged = {"easy": (e, j | h), "medium": (e | h, j), "hard": (h, j | e)}
        for protocol in REVISITED_PROTOCOLS:
            ap, prs = expected[protocol][q["qid"]]
            assert q["ap"][protocol] == pytest.approx(ap, abs=1e-12), (q["qid"], protocol)
            for k, pr in zip(KAPPAS, prs, strict=True):
                assert q["p_revisitop"][protocol][str(k)] == pytest.approx(pr, abs=1e-12), (q["qid"], protocol, k)
                pos, junk = judged[protocol]
                assert q["p"][protocol][str(k)] == pytest.approx(plain_precision(ranked, pos, junk, k), abs=1e-12)
    for protocol in REVISITED_PROTOCOLS:
        row = result.summary[protocol]
        values = list(expected[protocol].values())
        assert row["mAP"] == pytest.approx(float(np.mean([ap for ap, _ in values])), abs=1e-12)
        for n, k in enumerate(KAPPAS):
            assert row[f"mP@{k} (revisitop)"] == pytest.approx(float(np.mean([p[n] for _, p in values])), abs=1e-12)
            assert f"mP@{k} (plain)" in row and f"P@{k}" not in row


@pytest.fixture(scope="module")
def revisited_runs(oxford5k, tiny_encoder):
    gt = groundtruth.load(oxford5k["pkl"])
    exact = _evaluate(oxford5k["imlist"], gt, tiny_encoder, queries_dir=oxford5k["queries"])
    whole = _evaluate(oxford5k["whole"], gt, tiny_encoder)
    return gt, exact, whole


def test_revisited_pkl_over_exactly_imlist_matches_revisitop(oxford5k, revisited_runs):
    _, exact, _ = revisited_runs
    assert exact.protocol == "medium"
    _check_revisited(exact, oxford5k["cfg"])


def test_revisited_pkl_over_the_whole_folder_ranks_imlist_only(oxford5k, revisited_runs):
    """Query images and distractors are indexed but never ranked: the same ranking and numbers as over
    exactly imlist."""
    _, exact, whole = revisited_runs
    _check_revisited(whole, oxford5k["cfg"])
    exact_by_qid = {q["qid"]: q for q in exact.queries}
    for q in whole.queries:
        assert _ranked(q) == _ranked(exact_by_qid[q["qid"]])
        assert q["ap"] == pytest.approx(exact_by_qid[q["qid"]]["ap"], abs=1e-12)


def test_a_shallow_depth_still_ranks_that_many_imlist_images(oxford5k, revisited_runs, tiny_encoder):
    gt, _, whole = revisited_runs
    shallow = _evaluate(oxford5k["whole"], gt, tiny_encoder, depth=5)
    full = {q["qid"]: _ranked(q) for q in whole.queries}
    for q in shallow.queries:
        assert _ranked(q) == full[q["qid"]][:5]


def test_the_cli_table_labels_both_precisions(oxford5k, revisited_runs):
    _, exact, _ = revisited_runs
    table = eval_runs.format_table(exact.summary, exact.gt_format)
    header = table.splitlines()[0]
    assert "mP@5 (revisitop)" in header and "mP@5 (plain)" in header
    assert len(table.splitlines()) == 1 + len(REVISITED_PROTOCOLS)


# -- names that point at the wrong thing -----------------------------------------------------------------
def _prepare(collection, gt):
    layout, sessions = collection
    return evaluation.prepare(gt, Collection(layout, sessions).snapshot(), layout, None)


def _oxford_with_good(tmp_path: Path, good: str) -> groundtruth.GroundTruth:
    (tmp_path / "q_query.txt").write_text("oxc1_all_souls_000001 0 0 100 100\n")
    (tmp_path / "q_good.txt").write_text(f"all_souls_000002\n{good}\n")
    (tmp_path / "q_ok.txt").write_text("")
    (tmp_path / "q_junk.txt").write_text("")
    return groundtruth.load(tmp_path)


@pytest.mark.parametrize(("written", "hint"), [
    ("all_souls_000003.jpg", "did you mean 'all_souls_000003' (list names carry no extension)?"),
    ("oxc1_all_souls_000003", "did you mean 'all_souls_000003' (the 'oxc1_' prefix is how a _query.txt names "
                              "a query image, the lists name it without)?"),
    ("oxc1_all_souls_000003.JPG", "did you mean 'all_souls_000003' (list names carry no extension and the "
                                  "'oxc1_' prefix"),
])
def test_an_unknown_name_with_an_extension_or_prefix_gets_a_hint(oxford5k, tmp_path, written, hint):
    gt = _oxford_with_good(tmp_path, written)
    with pytest.raises(groundtruth.GroundTruthError) as err:
        _prepare(oxford5k["whole"], gt)
    assert f"q_good.txt:2: unknown image '{written}' (not in the indexed collection)" in str(err.value)
    assert hint in str(err.value)


def test_a_name_without_a_near_match_gets_no_hint(oxford5k, tmp_path):
    with pytest.raises(groundtruth.GroundTruthError) as err:
        _prepare(oxford5k["whole"], _oxford_with_good(tmp_path, "radcliffe_000001.jpg"))
    assert "did you mean" not in str(err.value)


@pytest.fixture(scope="module")
def duplicated(tmp_path_factory, tiny_encoder):
    """Two images named x_000001 in two folders, and one y_000001."""
    root = tmp_path_factory.mktemp("duplicated")
    make_image(root / "photos" / "a" / "x_000001.jpg", 501)
    make_image(root / "photos" / "b" / "x_000001.jpg", 502)
    make_image(root / "photos" / "a" / "y_000001.jpg", 503)
    return root / "photos", _index(root / "photos", root / "data", tiny_encoder)


def test_a_name_matching_two_items_is_an_error_naming_both(duplicated, tmp_path, tiny_encoder):
    photos, collection = duplicated
    (tmp_path / "q_query.txt").write_text("y_000001 0 0 100 100\n")
    (tmp_path / "q_good.txt").write_text("y_000001\nx_000001\n")
    (tmp_path / "q_ok.txt").write_text("")
    (tmp_path / "q_junk.txt").write_text("")
    with pytest.raises(groundtruth.GroundTruthError) as err:
        _evaluate(collection, groundtruth.load(tmp_path), tiny_encoder)
    message = str(err.value)
    assert "q_good.txt:2: 'x_000001' matches 2 collection items" in message
    assert "a/x_000001.jpg" in message and "b/x_000001.jpg" in message  # below the indexed folder
    assert str(photos) not in message  # stored runs are shown on pages: never a server path
    (tmp_path / "q_good.txt").write_text("y_000001\n")  # copies nobody names are just two wrong results
    result = _evaluate(collection, groundtruth.load(tmp_path), tiny_encoder)
    ranked = _ranked(result.queries[0])
    assert ranked.count("x_000001") == 2
    assert result.queries[0]["ap"]["standard"] == pytest.approx(oxford_compute_ap(ranked, {"y_000001"}, set()))
    assert result.queries[0]["ap"]["standard"] <= 1.0
