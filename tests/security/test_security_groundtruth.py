"""Ground-truth uploads are bounded and leave nothing behind when refused; runs can be cancelled (finding 12)."""
from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

from app import gt_sets
from app.paths import DataLayout
from tests.conftest import csrf_of, login


def _admin(env):
    client = env["app"].test_client()
    login(client, "boss")
    return client


def _upload(client, name: str, data: bytes):
    return client.post("/evaluation", data={"csrf_token": csrf_of(client), "model": "clip",
                                            "gt_file": (io.BytesIO(data), name)})


def _uploads_dir(env) -> Path:
    return DataLayout.from_data_dir(env["data"]).groundtruth_dir / gt_sets.UPLOADS


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def _zip_with(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, "still_0 1 1 5 5\n")
    return buf.getvalue()


def _oxford_zip(box: str = "10 10 100 100") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("set/q1_query.txt", f"still_0 {box}\n")
        zf.writestr("set/q1_good.txt", "still_0\n")
        zf.writestr("set/q1_ok.txt", "")
        zf.writestr("set/q1_junk.txt", "")
    return buf.getvalue()


def test_the_same_zip_twice_in_one_second_gives_two_sets(hostile):
    client = _admin(hostile)
    data = _oxford_zip()
    first, second = _upload(client, "same.zip", data), _upload(client, "same.zip", data)
    assert first.status_code == 303 and second.status_code == 303
    assert first.headers["Location"] != second.headers["Location"]
    names = [n for n in gt_sets.available(DataLayout.from_data_dir(hostile["data"]).groundtruth_dir) if "same" in n]
    assert len(names) == 2
    assert not [p for p in _uploads_dir(hostile).iterdir() if p.name.startswith(".")]


def test_refused_uploads_leave_nothing_behind(hostile):
    client = _admin(hostile)
    before = _snapshot(_uploads_dir(hostile))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("set/q1_query.txt", "still_0 1 1 5 5\n")
        zf.writestr("set/q1_good.txt", "still_0\n" + "x" * (40 * 1024 * 1024))  # 40 MB of text, 40 KB zipped
    cases = [
        ("broken.csv", b"query_id,query,video_id,start_frame,end_frame\nq1,words,cuts_and_dissolve,5,1\n", "empty"),
        ("nul.csv", b"query_id,query\x00,video_id\n\x00\x00", ""),
        ("bomb.zip", bomb.getvalue(), "limit"),
        ("inf.zip", _oxford_zip("inf 0 10 10"), "finite"),
        ("nan.zip", _oxford_zip("nan nan 10 10"), "finite"),
        ("huge.csv", b"query_id,query,video_id,start_frame,end_frame\n" + b"q,w,v,1,2\n" * 600_000, "at most"),
        ("longname.zip", _zip_with("set/" + "l" * 300 + "_query.txt"), "long"),
    ]
    for name, data, words in cases:
        r = _upload(client, name, data)
        assert r.status_code == 400, (name, r.status_code)
        assert words in r.get_data(as_text=True), name
    assert _snapshot(_uploads_dir(hostile)) == before
    listed = gt_sets.available(DataLayout.from_data_dir(hostile["data"]).groundtruth_dir)
    assert not [n for n in listed if any(c[0].split(".")[0] in n for c in cases)]


def test_an_upload_with_too_many_queries_is_refused(hostile):
    client = _admin(hostile)
    rows = "".join(f"q{i},words {i},cuts_and_dissolve,1,5\n" for i in range(gt_sets.MAX_QUERIES + 1))
    r = _upload(client, "many.csv", ("query_id,query,video_id,start_frame,end_frame\n" + rows).encode())
    assert r.status_code == 400 and "at most" in r.get_data(as_text=True)


def test_a_long_run_can_be_cancelled(hostile):
    root = DataLayout.from_data_dir(hostile["data"]).groundtruth_dir
    root.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"q{i},words number {i},cuts_and_dissolve,1,5\n" for i in range(20_000))
    (root / "long.csv").write_text("query_id,query,video_id,start_frame,end_frame\n" + rows)
    client = _admin(hostile)
    r = client.post("/evaluation", data={"csrf_token": csrf_of(client), "gt": "long.csv", "model": "clip"})
    assert r.status_code == 303
    run_page = r.headers["Location"]
    run_id = int(run_page.rstrip("/").split("/")[-1])
    page = client.get(run_page).get_data(as_text=True)
    assert 'id="cancel-run"' in page
    r = client.post(f"/evaluation/runs/{run_id}/cancel", data={"csrf_token": csrf_of(client)})
    assert r.status_code == 303
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = client.get(f"/evaluation/runs/{run_id}/progress").get_json()
        if state["status"] != "running":
            break
        time.sleep(0.2)
    assert state["status"] == "cancelled" and state["done"] < 20_000
    assert 'id="run-cancelled"' in client.get(run_page).get_data(as_text=True)
    (root / "long.csv").unlink()


def test_a_queued_run_that_is_cancelled_never_starts(hostile):
    root = DataLayout.from_data_dir(hostile["data"]).groundtruth_dir
    rows = "".join(f"q{i},words number {i},cuts_and_dissolve,1,5\n" for i in range(20_000))
    (root / "long2.csv").write_text("query_id,query,video_id,start_frame,end_frame\n" + rows)
    client = _admin(hostile)
    ids = []
    for _ in range(2):
        r = client.post("/evaluation", data={"csrf_token": csrf_of(client), "gt": "long2.csv", "model": "clip"})
        ids.append(int(r.headers["Location"].rstrip("/").split("/")[-1]))
    first, queued = ids
    client.post(f"/evaluation/runs/{queued}/cancel", data={"csrf_token": csrf_of(client)})
    assert client.get(f"/evaluation/runs/{queued}/progress").get_json()["status"] == "cancelled"
    client.post(f"/evaluation/runs/{first}/cancel", data={"csrf_token": csrf_of(client)})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and client.get(f"/evaluation/runs/{first}/progress").get_json()["status"] \
            == "running":
        time.sleep(0.2)
    time.sleep(1.0)
    state = client.get(f"/evaluation/runs/{queued}/progress").get_json()
    assert state["status"] == "cancelled" and state["done"] == 0
    (root / "long2.csv").unlink()
