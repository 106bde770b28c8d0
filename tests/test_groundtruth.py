"""Ground-truth loaders: the four formats, and malformed files named by file and line."""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app import groundtruth, gt_sets
from app.groundtruth import GroundTruthError


def write_oxford(folder: Path, queries: dict[str, tuple[str, tuple, list, list, list]]) -> Path:
    """queries: qid -> (image, (x1, y1, x2, y2), good, ok, junk)"""
    folder.mkdir(parents=True, exist_ok=True)
    for qid, (image, box, good, ok, junk) in queries.items():
        (folder / f"{qid}_query.txt").write_text(f"{image} {' '.join(str(v) for v in box)}\n")
        for label, names in (("good", good), ("ok", ok), ("junk", junk)):
            (folder / f"{qid}_{label}.txt").write_text("".join(f"{n}\n" for n in names))
    return folder


def test_oxford_folder_gives_protocols_from_good_ok_junk(tmp_path):
    folder = write_oxford(tmp_path / "oxford", {
        "souls_1": ("oxc1_souls_000013", (136.5, 34.1, 648.5, 955.7), ["a", "b"], ["c"], ["d"])})
    gt = groundtruth.load(folder)
    assert gt.format == "oxford" and gt.protocols[0] == "standard"
    q = gt.queries[0]
    assert q.image == "oxc1_souls_000013" and q.box == (136.5, 34.1, 648.5, 955.7)
    assert q.judged("standard") == ({"a", "b", "c"}, {"d"})
    assert q.judged("good") == ({"a", "b"}, {"c", "d"})
    assert q.judged("ok") == ({"c"}, {"a", "b", "d"})
    assert gt.where["c"] == "souls_1_ok.txt:1"


def test_oxford_malformed_files_name_file_and_line(tmp_path):
    folder = write_oxford(tmp_path / "bad", {"q": ("img", (0, 0, 10, 10), ["a"], [], [])})
    (folder / "q_query.txt").write_text("img 0 0 10\n")
    with pytest.raises(GroundTruthError, match=r"q_query.txt:1: expected '<image> x1 y1 x2 y2', got 4 fields"):
        groundtruth.load(folder)
    (folder / "q_query.txt").write_text("img 0 0 10 10\n")
    (folder / "q_good.txt").write_text("a\nb c\n")
    with pytest.raises(GroundTruthError, match=r"q_good.txt:2: expected one image name"):
        groundtruth.load(folder)
    (folder / "q_good.txt").write_text("a\n")
    (folder / "q_ok.txt").unlink()
    with pytest.raises(GroundTruthError, match=r"q_ok.txt: missing"):
        groundtruth.load(folder)


def test_revisited_pickle_protocols_easy_medium_hard(tmp_path):
    cfg = {"imlist": ["x0", "x1", "x2", "x3", "x4"], "qimlist": ["q0"],
           "gnd": [{"bbx": np.array([1.0, 2.0, 30.0, 40.0]), "easy": [0, 1], "hard": np.array([2]), "junk": [3]}]}
    path = tmp_path / "gnd_rtest.pkl"
    path.write_bytes(pickle.dumps(cfg))
    gt = groundtruth.load(path)
    q = gt.queries[0]
    assert gt.format == "revisited" and gt.protocols == ("medium", "easy", "hard")
    assert q.box == (1.0, 2.0, 30.0, 40.0)
    assert q.judged("easy") == ({"x0", "x1"}, {"x2", "x3"})
    assert q.judged("medium") == ({"x0", "x1", "x2"}, {"x3"})
    assert q.judged("hard") == ({"x2"}, {"x3", "x0", "x1"})


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "gnd_evil.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [_Exploit()]}))
    with pytest.raises(GroundTruthError, match="refusing to load posix.system|refusing to load os.system"):
        groundtruth.load(path)


def test_revisited_index_outside_imlist_is_reported(tmp_path):
    path = tmp_path / "gnd_bad.pkl"
    path.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"],
                                   "gnd": [{"bbx": [0, 0, 1, 1], "easy": [5], "hard": [], "junk": []}]}))
    with pytest.raises(GroundTruthError, match=r"gnd_bad.pkl: gnd\[0\]: an image index lies outside imlist"):
        groundtruth.load(path)


def _pickle(tmp_path: Path, gnd: list[dict], imlist=("a", "b", "c")) -> Path:
    path = tmp_path / "gnd_bad.pkl"
    path.write_bytes(pickle.dumps({"imlist": list(imlist), "qimlist": ["q"] * len(gnd), "gnd": gnd}))
    return path


def test_revisited_negative_index_overlap_and_bad_boxes_are_reported(tmp_path):
    ok = {"bbx": [0, 0, 10, 10], "easy": [0], "hard": [1], "junk": [2]}
    gt = groundtruth.load(_pickle(tmp_path, [ok]))
    assert gt.database == {"a", "b", "c"} and "q" not in gt.database
    with pytest.raises(GroundTruthError, match=r"gnd\[0\]: an image index lies outside imlist"):
        groundtruth.load(_pickle(tmp_path, [{**ok, "junk": [-1]}]))  # not imlist[-1]
    with pytest.raises(GroundTruthError, match=r"gnd\[0\]: imlist\[0\] 'a' is listed as both easy and junk"):
        groundtruth.load(_pickle(tmp_path, [{**ok, "junk": [2, 0]}]))
    for bad in ([0, 0, float("inf"), 10], [0, float("nan"), 10, 10], [0, 0, 1e400, 10]):
        with pytest.raises(GroundTruthError, match=r"gnd\[0\]: malformed entry \(each bbx number must be a finite"):
            groundtruth.load(_pickle(tmp_path, [{**ok, "bbx": bad}]))
    with pytest.raises(GroundTruthError, match=r"gnd\[0\]: the bbx \[5.0, 0.0, 5.0, 10.0\] has no area"):
        groundtruth.load(_pickle(tmp_path, [{**ok, "bbx": [5, 0, 5, 10]}]))
    with pytest.raises(GroundTruthError, match=r"gnd\[0\]: malformed entry \(no 'bbx'\)"):
        groundtruth.load(_pickle(tmp_path, [{"easy": [0]}]))
    with pytest.raises(GroundTruthError, match=r"imlist\[0\] and imlist\[2\] are both 'a'"):
        groundtruth.load(_pickle(tmp_path, [ok], imlist=("a", "b", "a")))


def test_oxford_name_in_two_lists_is_an_error_naming_both_files(tmp_path):
    folder = write_oxford(tmp_path / "twice", {"q": ("img", (0, 0, 10, 10), ["a", "b"], [], ["c", "b"])})
    with pytest.raises(GroundTruthError) as err:
        groundtruth.load(folder)
    assert str(err.value) == "q_good.txt:2 and q_junk.txt:2: 'b' is listed as both good and junk for query q; " \
                             "a name belongs to one list"
    write_oxford(folder, {"q": ("img", (0, 0, 10, 10), ["a"], ["a"], [])})
    with pytest.raises(GroundTruthError, match=r"q_good.txt:1 and q_ok.txt:1: 'a' is listed as both good and ok"):
        groundtruth.load(folder)


@pytest.mark.parametrize("corner", ["inf", "-inf", "nan", "1e400"])
def test_oxford_query_box_must_be_finite(tmp_path, corner):
    folder = write_oxford(tmp_path / "box", {"q": ("img", (0, 0, corner, 10), ["a"], [], [])})
    with pytest.raises(GroundTruthError, match=r"q_query.txt:1: the box must be four finite numbers"):
        groundtruth.load(folder)


def test_labelled_folders_exclude_the_query_itself(tmp_path):
    for name in ("cat/a.jpg", "cat/b.jpg", "dog/c.jpg"):
        (tmp_path / "lab" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lab" / name).write_bytes(b"")
    gt = groundtruth.load(tmp_path / "lab")
    by_id = {q.qid: q for q in gt.queries}
    assert gt.format == "labelled"
    assert by_id["cat/a"].judged("standard") == ({"cat/b"}, set())
    assert by_id["dog/c"].judged("standard") == (set(), set())  # no positives: left out of the mean
    assert by_id["cat/a"].exclude_self


def test_moments_csv_groups_rows_per_query_and_reports_bad_lines():
    data = (b"query_id,query,video_id,start_frame,end_frame\n"
            b"1,a red car,L01_V001,10,50\n1,a red car,L01_V002,0,5\n2,a boat,L02_V001,100,120\n")
    gt = groundtruth.load_moments(data, "moments.csv")
    assert [q.qid for q in gt.queries] == ["1", "2"]
    assert [(m.video_id, m.start_frame, m.end_frame) for m in gt.queries[0].moments] == [
        ("L01_V001", 10, 50), ("L01_V002", 0, 5)]
    with pytest.raises(GroundTruthError, match=r"bad.csv:1: missing column\(s\) end_frame"):
        groundtruth.load_moments(b"query_id,query,video_id,start_frame\n1,a,b,1\n", "bad.csv")
    with pytest.raises(GroundTruthError, match=r"bad.csv:3: start_frame and end_frame must be whole numbers"):
        groundtruth.load_moments(data[:46] + b"1,a,v,1,2\n1,a,v,x,2\n", "bad.csv")
    with pytest.raises(GroundTruthError, match=r"bad.csv:2: the frame range 9-3 is empty"):
        groundtruth.load_moments(data[:46] + b"1,a,v,9,3\n", "bad.csv")


def test_empty_set_is_an_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("query_id,query,video_id,start_frame,end_frame\n")
    with pytest.raises(GroundTruthError, match="has no queries"):
        groundtruth.load(path)


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_uploads_accept_oxford_zips_and_refuse_pickles_and_escapes(tmp_path):
    root = tmp_path / "groundtruth"
    good = _zip({"set/q_query.txt": b"img 0 0 5 5\n", "set/q_good.txt": b"a\n", "set/q_ok.txt": b"",
                 "set/q_junk.txt": b""})
    name = gt_sets.save_upload(root, "my set.zip", good)
    assert name.startswith("uploads/") and name in gt_sets.available(root)
    assert gt_sets.load_named(root, name).queries[0].image == "img"
    with pytest.raises(GroundTruthError, match="never from an upload"):
        gt_sets.save_upload(root, "gnd.pkl", pickle.dumps({}))
    with pytest.raises(GroundTruthError, match="pickles are never accepted"):
        gt_sets.save_upload(root, "x.zip", _zip({"set/gnd.pkl": b"x", "set/q_query.txt": b"i 0 0 1 1\n"}))
    with pytest.raises(GroundTruthError, match="escapes"):
        gt_sets.save_upload(root, "y.zip", _zip({"../q_query.txt": b"i 0 0 1 1\n"}))
    assert not (tmp_path / "q_query.txt").exists()
    assert list(gt_sets.available(root)) == [name]  # nothing half-written is offered
    with pytest.raises(GroundTruthError, match="no ground-truth set named"):
        gt_sets.load_named(root, "../../etc")
