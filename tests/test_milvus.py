"""Vectors in Milvus (`--vectors milvus`, app.milvus_store) against Milvus Lite: the same answers as FAISS through the
same vectors.search seam (exact FLAT equals exact FAISS, filters included), incremental adds and prunes in one
collection, readers of an older generation never seeing the next one's rows, a fresh process seeing the same results,
and the faults: Milvus unreachable at start or going away mid-run (one sentence naming MILVUS_URI, CURRENT not moved,
the rerun finishes), a collection of another model or dimension refused, an index type Milvus lacks refused."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from app import index_build, milvus_store, vectors  # noqa: E402
from app.index_build import Catalogue, load_for_update, sync_index  # noqa: E402
from tests.conftest import ROOT, TINY_MODEL  # noqa: E402
from tests.processes import TINY_ARGS, cli, free_port, get, server_process  # noqa: E402
from tests.test_index_build import DIM, POOL, clustered  # noqa: E402  (the vectors of FAISS's own tests)

IDENTITY = {"model": "m", "pretrained": "p", "weights_fingerprint": "f0", "dim": DIM}
VIDEOS = np.array(["v0", 'we"ird\\ name', "v2", "", "v4"], object)  # "" : an image
FOLDERS = np.array(["/m/a", "/m/a/b", "/m/ab", "/m/c", "/m/a"], object)



def catalogue(db_ids, tags=None) -> Catalogue:
    """Keyframes (kind 0) whose vector is POOL[db_id], in video VIDEOS[db_id % 5] and folder FOLDERS[db_id % 5]."""
    db_ids = np.asarray(db_ids, dtype=np.int64)
    tags = np.zeros(len(db_ids), np.int64) if tags is None else np.asarray(tags, np.int64)
    ids = np.stack([np.full(len(db_ids), vectors.KIND_KEYFRAME), db_ids], axis=1)

    def fields(pos):
        d = db_ids[np.asarray(pos, dtype=np.int64)] % 5
        return VIDEOS[d], FOLDERS[d]
    return Catalogue(ids, tags, lambda pos: POOL[db_ids[np.asarray(pos)]], f"sig-{db_ids.sum()}-{len(db_ids)}",
                     fields)


@pytest.fixture()
def lite(tmp_path_factory):
    """A Milvus Lite file of this test (an embedded server in this process), let go afterwards."""
    uri = str(tmp_path_factory.mktemp("lite") / "milvus.db")
    yield uri
    _let_go(uri)


def _let_go(uri: str) -> None:
    from milvus_lite.server_manager import server_manager_instance

    milvus_store.reset()
    milvus_store.configure(None)
    server_manager_instance.release_server(uri)


def sync(folder: Path, cat: Catalogue, target, **kw) -> index_build.Outcome:
    return sync_index(folder, load_for_update(folder), cat, DIM, identity=IDENTITY, target=target, **kw)


def rows_of(bundle, queries, k=20, allowed=None):
    return vectors.search(bundle, queries, k, allowed)


class LiteServer:
    """`python -m milvus_lite server` in its own process (a Milvus that can go away and come back)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port, self.proc = data_dir, free_port(), None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiteServer:
        self.proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                                      "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise AssertionError("milvus_lite server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture()
def server(tmp_path_factory):
    srv = LiteServer(tmp_path_factory.mktemp("milvus-server")).start()
    yield srv
    srv.kill()
    milvus_store.reset()
    milvus_store.configure(None)


# -- the same answers as FAISS ---------------------------------------------------------------------------------------
def test_milvus_flat_answers_what_faiss_flat_answers(tmp_path, lite, monkeypatch):
    cat = catalogue(range(2000))
    sync_index(tmp_path / "faiss", None, cat, DIM, "flat", identity=IDENTITY)
    out = sync(tmp_path / "milvus", cat, milvus_store.Target(lite, "FLAT"))
    assert out.rebuilt and out.size == 2000
    faiss_b, milvus_b = vectors.load_current(tmp_path / "faiss"), vectors.load_current(tmp_path / "milvus")
    assert milvus_b.backend == "milvus" and milvus_b.index is None and milvus_b.size == 2000
    assert not (tmp_path / "milvus" / milvus_b.generation / "index.faiss").exists()
    meta = json.loads((tmp_path / "milvus" / milvus_b.generation / "meta.json").read_text())
    assert meta["backend"] == "milvus" and meta["milvus"]["uri"] == lite and meta["model"] == "m"
    queries = clustered(50, seed=5)
    (fs, fr), (ms, mr) = rows_of(faiss_b, queries), rows_of(milvus_b, queries)
    assert np.array_equal(fr, mr) and np.allclose(fs, ms, atol=1e-5)
    np.testing.assert_allclose(vectors.vector_of(milvus_b, 1234), POOL[1234], atol=2e-3)  # "more like this"
    every7 = np.arange(0, 2000, 7)
    assert np.array_equal(rows_of(faiss_b, queries, allowed=every7)[1], rows_of(milvus_b, queries, allowed=every7)[1])
    # the video and folder filters run inside Milvus on its scalar fields (a name with a quote and a backslash)
    d = np.arange(2000) % 5
    for video, folders in ((VIDEOS[1], None), (None, ("/m/a", "/m/a/b")), ("v0", ("/m/a",)), ("nope", None)):
        keep = np.ones(2000, bool) if video is None else VIDEOS[d] == video
        keep &= True if folders is None else np.isin(FOLDERS[d], folders)
        flt = vectors.Filter(np.flatnonzero(keep), video, folders)
        got = rows_of(milvus_b, queries, allowed=flt)[1]
        assert np.array_equal(got, rows_of(faiss_b, queries, allowed=np.flatnonzero(keep))[1])
        assert np.all(keep[got[got >= 0]]) and (np.all(got >= 0) if keep.any() else np.all(got < 0))
    both = (np.arange(2000) % 2 == 0) & (FOLDERS[d] == "/m/a")  # rows of a label, say, in one folder
    listed = vectors.Filter(np.flatnonzero(both), None, ("/m/a",), listed=np.arange(0, 2000, 2))
    assert np.array_equal(rows_of(milvus_b, queries, allowed=listed)[1],
                          rows_of(faiss_b, queries, allowed=np.flatnonzero(both))[1])
    monkeypatch.setattr(milvus_store, "MAX_TOPK", 50)  # deeper than Milvus answers: exact from the float16 copy
    deep = rows_of(milvus_b, queries[:5], k=250, allowed=every7)[1]
    wide = rows_of(faiss_b, queries[:5], k=250, allowed=every7)[1]
    assert np.all(deep % 7 == 0) and np.all(deep >= 0)
    assert np.mean([len(np.intersect1d(a, b)) / 250 for a, b in zip(deep, wide, strict=True)]) > 0.99


def test_hnsw_is_tuned_to_the_recall_target(tmp_path, lite):
    base = clustered(3000, seed=1)
    cat = Catalogue(np.stack([np.ones(3000, np.int64), np.arange(3000)], 1), np.zeros(3000, np.int64),
                    lambda p: base[np.asarray(p)], "s")
    sync(tmp_path, cat, milvus_store.Target(lite, "HNSW"))
    bundle = vectors.load_current(tmp_path)
    tuning = bundle.meta["tuning"]
    assert tuning["reached"] and tuning["held_out"]
    assert bundle.meta["params"]["efSearch"] == tuning["chosen"]["efSearch"]
    queries = clustered(100, seed=2)
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :100]
    found = bundle.ids[vectors.search(bundle, queries, 100)[1], 1]
    assert np.mean([len(np.intersect1d(f, t)) / 100 for f, t in zip(found, truth, strict=True)]) >= 0.95


# -- incremental updates, readers, restart -----------------------------------------------------------------------
def test_adds_and_prunes_change_one_collection_and_older_readers_see_only_their_rows(tmp_path, lite):
    target = milvus_store.Target(lite, "FLAT")
    sync(tmp_path, catalogue(range(1000)), target)
    first = vectors.load_current(tmp_path)
    out = sync(tmp_path, catalogue(range(1100)), target)
    assert out.written and not out.rebuilt and (out.added, out.removed) == (100, 0)
    second = vectors.load_current(tmp_path)
    assert second.meta["milvus"]["collection"] == first.meta["milvus"]["collection"] and second.meta["updates"] == 1
    _, top = rows_of(second, POOL[1000:1100], k=1)
    assert np.array_equal(second.ids[top[:, 0], 1], np.arange(1000, 1100))
    # the generation loaded before the update still answers from its own 1,000 rows only
    _, old = rows_of(first, POOL[1000:1100], k=10)
    assert np.all((old >= 0) & (old < 1000))
    gone = np.arange(0, 1100, 25)  # 44 rows, 4%: tombstones, no rebuild
    out = sync(tmp_path, catalogue(np.setdiff1d(np.arange(1100), gone)), target)
    assert not out.rebuilt and out.removed == 44 and out.size == 1056
    third = vectors.load_current(tmp_path)
    assert third.meta["tombstones"] == 44 and len(third.ids) == 1100  # rows are never renumbered in place
    assert third.remote.count(len(third.ids)) == 1056
    _, rows = rows_of(third, POOL[gone], k=30)
    assert np.all(rows >= 0) and not np.isin(third.ids[rows, 1], gone).any()
    np.testing.assert_allclose(vectors.vector_of(third, 1099), POOL[1099], atol=2e-3)
    # nothing changed: nothing written; many removed rows: a new collection, the old one dropped a generation later
    assert not sync(tmp_path, catalogue(np.setdiff1d(np.arange(1100), gone)), target).written
    out = sync(tmp_path, catalogue(range(700, 1100)), target)
    assert out.rebuilt and "removed" in out.reason
    fourth = vectors.load_current(tmp_path)
    names = {first.meta["milvus"]["collection"], fourth.meta["milvus"]["collection"]}
    assert len(names) == 2 and set(fourth.remote.client.list_collections()) == names  # the previous one is kept
    sync(tmp_path, catalogue(range(700, 1200)), target)  # one more generation: the first collection goes
    assert fourth.remote.client.list_collections() == [fourth.meta["milvus"]["collection"]]


def test_a_fresh_process_sees_the_same_results(tmp_path, server):
    target = milvus_store.Target(server.uri, "HNSW")
    sync(tmp_path, catalogue(range(1500)), target)
    sync(tmp_path, catalogue(np.setdiff1d(np.arange(1600), [3, 5, 8])), target)
    bundle = vectors.load_current(tmp_path)
    scores, rows = rows_of(bundle, POOL[3000:3010], k=10)
    np.save(tmp_path / "queries.npy", POOL[3000:3010])
    script = ("import sys, json, numpy as np; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
              "from app import vectors; b = vectors.load_current(Path(sys.argv[2]));"
              "s, r = vectors.search(b, np.load(sys.argv[3]), 10); print(json.dumps([r.tolist(), s.tolist()]))")
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT), str(tmp_path), str(tmp_path / "queries.npy")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "MILVUS_URI": server.uri})
    assert proc.returncode == 0, proc.stderr
    other_rows, other_scores = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.array_equal(other_rows, rows) and np.allclose(other_scores, scores, atol=1e-5)


# -- faults -----------------------------------------------------------------------------------------------------------
def test_unreachable_at_start_is_one_sentence_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import offline

    monkeypatch.delenv("MILVUS_URI", raising=False)
    data = tmp_path / "data"
    code = offline.main(["index", str(tmp_path / "nothing"), "--data-dir", str(data), "--vectors", "milvus",
                         "--milvus-uri", "http://user:secret@127.0.0.1:1", "--model", TINY_MODEL, "--no-progress"])
    err = capsys.readouterr().err
    milvus_store.configure(None)
    assert code == 2 and err.count("\n") == 1 and "MILVUS_URI / --milvus-uri" in err and "http://127.0.0.1:1" in err
    assert "secret" not in err
    assert not (data / "feature" / "index").exists() or not any((data / "feature" / "index").iterdir())
    code = offline.main(["index", str(tmp_path / "nothing"), "--data-dir", str(data), "--vectors", "milvus"])
    err = capsys.readouterr().err
    milvus_store.configure(None)
    assert code == 2 and "MILVUS_URI" in err and "--milvus-uri" in err


def test_milvus_going_away_mid_run_moves_nothing_and_the_rerun_finishes(tmp_path, server, monkeypatch):
    target = milvus_store.Target(server.uri, "FLAT")
    sync(tmp_path, catalogue(range(1000)), target)
    served = vectors.pointer(tmp_path)
    real = milvus_store.Remote.upsert

    def dies_midway(self, rows, *args):
        real(self, rows[:10], *(a[:10] for a in args))  # some rows land, then the service is gone
        server.kill()
        real(self, rows, *args)

    monkeypatch.setattr(milvus_store.Remote, "upsert", dies_midway)
    with pytest.raises(milvus_store.MilvusUnavailable, match="MILVUS_URI / --milvus-uri"):
        sync(tmp_path, catalogue(range(1100)), target)
    monkeypatch.undo()
    assert vectors.pointer(tmp_path) == served  # CURRENT did not move
    with pytest.raises(milvus_store.MilvusUnavailable, match="cannot be reached"):
        vectors.load_current(tmp_path)  # readers say so too (the server's pages answer 503 with it)
    server.start()  # back, same data, same port
    out = sync(tmp_path, catalogue(range(1100)), target)
    assert out.written and not out.rebuilt and out.added == 100
    bundle = vectors.load_current(tmp_path)
    assert bundle.remote.count(len(bundle.ids)) == 1100
    _, top = rows_of(bundle, POOL[1000:1100], k=1)
    assert np.array_equal(bundle.ids[top[:, 0], 1], np.arange(1000, 1100))


def test_a_run_stopped_after_milvus_deletes_is_rebuilt_not_trusted(tmp_path, lite, monkeypatch):
    """Killed between deleting rows in Milvus and publishing: the served generation no longer matches its collection,
    so the next run writes a new collection instead of building on it."""
    target = milvus_store.Target(lite, "FLAT")
    sync(tmp_path, catalogue(range(1000)), target)
    served = vectors.pointer(tmp_path)

    class Killed(BaseException):
        pass

    def killed(*_args):
        raise Killed

    monkeypatch.setattr(milvus_store.Remote, "upsert", killed)
    with pytest.raises(Killed):
        sync(tmp_path, catalogue(range(10, 1010)), target)  # 10 removed (deleted in Milvus), 10 to add: killed
    monkeypatch.undo()
    assert vectors.pointer(tmp_path) == served
    out = sync(tmp_path, catalogue(range(1010)), target)  # the removal was undone meanwhile
    assert out.rebuilt and "does not hold" in out.reason
    bundle = vectors.load_current(tmp_path)
    _, top = rows_of(bundle, POOL[:10], k=1)
    assert np.array_equal(bundle.ids[top[:, 0], 1], np.arange(10))


def test_a_collection_of_another_model_or_dimension_is_refused(tmp_path, lite):
    from pymilvus import DataType, MilvusClient

    sync(tmp_path, catalogue(range(500)), milvus_store.Target(lite, "FLAT"))
    name = vectors.load_current(tmp_path).meta["milvus"]["collection"]
    made = milvus_store.client(lite)
    made.alter_collection_properties(name, {milvus_store.IDENTITY_KEY: json.dumps({**IDENTITY, "model": "ViT-L-14"})})
    with pytest.raises(milvus_store.MilvusMismatch, match=r"ViT-L-14 p .*model differ.*MILVUS_URI / --milvus-uri"):
        vectors.load_current(tmp_path)
    with pytest.raises(milvus_store.MilvusMismatch):
        load_for_update(tmp_path)  # a writer is refused too ...
    assert load_for_update(tmp_path, retrain=True) is None  # ... unless asked to write a new collection
    made.drop_collection(name)  # the same name, made by something else with another dimension
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=16)
    index = made.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    made.create_collection(name, schema=schema, index_params=index,
                           properties={milvus_store.IDENTITY_KEY: json.dumps({**IDENTITY, "dim": 16})})
    with pytest.raises(milvus_store.MilvusMismatch, match="16 dimensions.*dim differ"):
        vectors.load_current(tmp_path)


def test_an_index_type_milvus_lacks_is_refused_before_anything_is_published(tmp_path, lite):
    sync(tmp_path, catalogue(range(300)), milvus_store.Target(lite, "FLAT"))
    served = vectors.pointer(tmp_path)
    with pytest.raises(milvus_store.MilvusRefused, match="DISKANN.*milvus_index / --milvus-index"):
        sync(tmp_path, catalogue(range(300)), milvus_store.Target(lite, "DISKANN"))
    assert vectors.pointer(tmp_path) == served
    # the refused collection is listed in the ledger and dropped by the next successful publish
    assert len(milvus_store.client(lite).list_collections()) == 2
    sync(tmp_path, catalogue(range(310)), milvus_store.Target(lite, "FLAT"))
    assert len(milvus_store.client(lite).list_collections()) == 1


def test_settings_choose_the_backend_and_a_collection_keeps_its_own(tmp_path, lite):
    from app.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="vectors from FRAMEFINDER_VECTORS must be faiss or milvus"):
        Settings.load({"data_dir": tmp_path}, {"FRAMEFINDER_VECTORS": "qdrant"})
    settings = Settings.load({"data_dir": tmp_path}, {"FRAMEFINDER_VECTORS": "milvus", "MILVUS_URI": lite,
                                                      "FRAMEFINDER_MILVUS_INDEX": "flat"})
    milvus_store.configure(settings)
    assert milvus_store.target_for(None) == milvus_store.Target(lite, "FLAT")
    milvus_store.configure(None)
    assert milvus_store.target_for(None) is None  # a new collection starts in FAISS
    held = {"backend": "milvus", "milvus": {"uri": lite, "index": "HNSW"}}
    assert milvus_store.target_for(held) == milvus_store.Target(lite, "HNSW")  # one in Milvus stays there
    assert milvus_store.target_for(held, milvus_store.Choice("faiss")) is None  # unless told otherwise
    assert milvus_store.public_uri("https://root:pw@db.example:19530/framefinder?token=x") == \
        "https://db.example:19530/framefinder"


# -- through offline.py and the API -----------------------------------------------------------------------------
def test_the_api_answers_the_same_from_faiss_and_from_milvus(tmp_path, media_dir, tiny_encoder, server):
    """The test media indexed by `offline.py index` (FAISS), then moved into Milvus by running it again with
    --vectors milvus (files unchanged: only the index is written again); /api/search gives the same results,
    filters by video and folder included, from a fresh app each time."""
    from urllib.parse import quote

    from app import create_app

    data = tmp_path / "data"
    proc = cli("index", str(media_dir), "--data-dir", str(data), "--pretrained", "none", *TINY_ARGS)
    assert proc.returncode == 0, proc.stderr
    images, everything = quote(str(media_dir / "images")), quote(str(media_dir))
    queries = ["like={like}&k=12", "q=a+red+car&k=12", "like={like}&video=long_shot&k=5",
               f"like={{like}}&folder={images}&k=5", f"q=sky&folder={everything}&k=8"]

    def answers() -> list:
        app = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True})
        client = app.test_client()
        like = client.get("/api/search?q=shot&k=1").get_json()["results"][0]["item"]
        got = []
        for query in queries:
            body = client.get("/api/search?" + query.format(like=quote(like))).get_json()
            got.append([(r["item"], round(r["score"], 4)) for r in body["results"]])
        return got

    before = answers()
    assert all(before) and {i.split("@")[0] for i, _ in before[2]} == {"long_shot"}
    assert len(before[3]) == 3 and all(i.startswith("image:") for i, _ in before[3])  # the three stills
    proc = cli("index", str(media_dir), "--data-dir", str(data), "--pretrained", "none", "--vectors", "milvus",
               "--milvus-uri", server.uri, "--milvus-index", "FLAT", *TINY_ARGS)
    assert proc.returncode == 0, proc.stderr
    bundle = vectors.load_current(data / "feature" / "index")
    assert bundle.backend == "milvus" and bundle.meta["reason"].startswith("type flat -> milvus")
    milvus_store.configure(None)
    after = answers()
    assert [[i for i, _ in a] for a in after] == [[i for i, _ in b] for b in before]
    assert all(abs(s1 - s2) <= 1e-3 for a, b in zip(after, before, strict=True)
               for (_, s1), (_, s2) in zip(a, b, strict=True))
    with server_process(data) as base:  # and server.py, a process of its own, answers the same from Milvus
        status, _, body = get(f"{base}/api/search?{queries[2].format(like=quote(before[0][0][0]))}")
    assert status == 200 and [r["item"] for r in json.loads(body)["results"]] == [i for i, _ in after[2]]
    # Milvus going away while serving: a 503 naming the setting, and answers again once it is back
    client = create_app({"DATA_DIR": str(data), "ENCODER": tiny_encoder, "TESTING": True}).test_client()
    query = "/api/search?" + queries[2].format(like=quote(before[0][0][0]))
    assert client.get(query).status_code == 200
    server.kill()
    down = client.get(query)
    assert down.status_code == 503 and "MILVUS_URI / --milvus-uri" in down.get_json()["error"]
    server.start()
    assert [r["item"] for r in client.get(query).get_json()["results"]] == [i for i, _ in after[2]]


def test_a_uri_or_index_type_milvus_cannot_have_is_refused_before_anything_starts(tmp_path):
    """Typos are named as typos (pymilvus would call them unreachable), with the setting to change; credentials a
    user typed without a scheme are not repeated back."""
    from app.settings import Settings, SettingsError

    for uri in ("milvus.example:19530", "user:secret@milvus:19530", "ftp://milvus:19530", "milvus.sqlite"):
        with pytest.raises(SettingsError, match="MILVUS_URI / --milvus-uri takes a Milvus URL") as refused:
            Settings.load({"data_dir": tmp_path, "milvus_uri": uri})
        assert "secret" not in str(refused.value)
    for uri in ("http://127.0.0.1:19530", "https://user:pw@milvus.example:443", "tcp://m:19530", "unix:/run/m.sock",
                str(tmp_path / "m.db")):
        Settings.load({"data_dir": tmp_path, "milvus_uri": uri})
    with pytest.raises(SettingsError, match=r"milvus_index \(--milvus-index, FRAMEFINDER_MILVUS_INDEX\) names no"):
        Settings.load({"data_dir": tmp_path, "milvus_index": "FOO; drop"})
    assert Settings.load({"data_dir": tmp_path, "milvus_index": "hnsw"}).milvus_index == "hnsw"


def _served_collection(data: Path) -> dict:
    return milvus_store.current_meta(data / "feature" / "index").get("milvus") or {}


def test_a_lost_collection_or_a_damaged_current_generation_is_rebuilt_in_milvus(tmp_path, media_dir, server):
    """From the attack: a plain re-run after the served collection was lost (dropped by hand, or CURRENT's meta.json
    naming none) rebuilt into FAISS, or kept the damaged generation because an older one still loaded. Both must
    be rebuilt where the vectors were, in Milvus, and CURRENT must then name a collection that exists."""
    from pymilvus import MilvusClient

    data = tmp_path / "data"
    args = ["--data-dir", str(data), *TINY_ARGS, "--pretrained", "none", "--no-faces", "--no-detector"]
    first = cli("index", str(media_dir / "images"), *args, "--vectors", "milvus", "--milvus-uri", server.uri)
    assert first.returncode == 0, first.stderr
    made = MilvusClient(uri=server.uri)
    made.drop_collection(_served_collection(data)["collection"])  # lost behind Framefinder's back
    again = cli("index", str(media_dir / "images"), *args)
    assert again.returncode == 0, again.stderr
    meta = milvus_store.current_meta(data / "feature" / "index")
    assert meta.get("backend") == "milvus" and made.has_collection(meta["milvus"]["collection"])
    more = cli("index", str(media_dir), *args)  # a second generation, so an older one can load
    assert more.returncode == 0, more.stderr
    current = data / "feature" / "index" / (data / "feature" / "index" / "CURRENT").read_text().strip()
    damaged = json.loads((current / "meta.json").read_text())
    damaged["milvus"]["collection"] = "framefinder_gone"
    (current / "meta.json").write_text(json.dumps(damaged))
    repaired = cli("index", str(media_dir), *args)
    assert repaired.returncode == 0, repaired.stderr
    meta = milvus_store.current_meta(data / "feature" / "index")
    assert meta.get("backend") == "milvus" and made.has_collection(meta["milvus"]["collection"])
    made.close()


def test_a_copied_data_dir_never_drops_the_originals_collection(tmp_path, server):
    """From the attack: a copy carries the original's ledger of collections, and its rebuild dropped the collection
    the original still serves. Only the index folder that made a collection may drop it."""
    import shutil

    target = milvus_store.Target(server.uri, "FLAT")
    original, copy = tmp_path / "original", tmp_path / "copy"
    sync(original, catalogue(range(300)), target)
    served = vectors.load_current(original).meta["milvus"]["collection"]
    shutil.copytree(original, copy)
    sync(copy, catalogue(range(300)), target, retrain=True)  # a new collection for the copy; the old one unnamed there
    sync(copy, catalogue(range(310)), target, retrain=True)  # and again, so the copy retires what it no longer names
    assert milvus_store.client(server.uri).has_collection(served)
    _, top = rows_of(vectors.load_current(original), POOL[:5], k=1)
    assert top[:, 0].tolist() == [0, 1, 2, 3, 4]
