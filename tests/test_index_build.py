"""Incremental index generations: added vectors are found, removed ones never come back, the rebuild triggers
(type, 2x growth, tombstones, retrain) fire, tuned knobs reach the recall target (checked by brute force here),
and a crash mid-write leaves the previous generation loadable."""
from __future__ import annotations

import numpy as np
import pytest

from app import index_build, vectors
from app.index_build import Catalogue, load_for_update, plan_update, sync_index

DIM = 32
SMALL = {"nlist": 16}


def clustered(n: int, seed: int, clusters: int = 40) -> np.ndarray:
    """A mixture of Gaussians on the unit sphere (centres shared by every seed)."""
    centres = np.random.default_rng(99).normal(size=(clusters, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.9 * rng.normal(size=(n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


POOL = clustered(4000, seed=0)


def catalogue(db_ids, tags=None, pool: np.ndarray = POOL) -> Catalogue:
    """Images whose vector is pool[db_id] (tags 0 unless given), as read_catalogue would describe them."""
    db_ids = np.asarray(db_ids, dtype=np.int64)
    tags = np.zeros(len(db_ids), np.int64) if tags is None else np.asarray(tags, np.int64)
    ids = np.stack([np.full(len(db_ids), vectors.KIND_IMAGE), db_ids], axis=1)
    return Catalogue(ids, tags, lambda pos: pool[db_ids[np.asarray(pos)]], f"sig-{db_ids.sum()}-{tags.sum()}")


def sync(folder, cat: Catalogue, kind: str, **kw) -> index_build.Outcome:
    return sync_index(folder, load_for_update(folder), cat, DIM, kind, params=SMALL if kind != "flat" else None, **kw)


def top1(folder, queries: np.ndarray) -> np.ndarray:
    bundle = vectors.load_current(folder)
    _, rows = vectors.search(bundle, queries, 1)
    return bundle.ids[rows[:, 0], 1]


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_added_vectors_are_found_without_a_rebuild(tmp_path, kind):
    first = sync(tmp_path, catalogue(range(2000)), kind)
    assert first.rebuilt and first.size == 2000
    before = vectors.load_current(tmp_path)
    out = sync(tmp_path, catalogue(range(2100)), kind)
    assert out.written and not out.rebuilt and (out.added, out.removed) == (100, 0)
    assert np.array_equal(top1(tmp_path, POOL[2000:2100]), np.arange(2000, 2100))
    after = vectors.load_current(tmp_path)
    assert after.meta["updates"] == 1 and after.meta["count"] == 2100 and after.meta["trained_size"] == 2000
    assert after.meta["params"] == before.meta["params"]  # same trained index, same knobs
    if kind == "ivfpq":  # the first segment is shared with the previous generation, not copied
        old, new = vectors.segment_paths(before)[0], vectors.segment_paths(after)[0]
        assert old.stat().st_ino == new.stat().st_ino and len(after.rerank) == 2100
        np.testing.assert_allclose(vectors.vector_of(after, 2050), POOL[2050], atol=2e-3)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_removed_vectors_are_hidden(tmp_path, kind):
    sync(tmp_path, catalogue(range(2000)), kind)
    gone = np.arange(0, 2000, 20)  # 100 rows, 5%: under the tombstone limit
    out = sync(tmp_path, catalogue(np.setdiff1d(np.arange(2000), gone)), kind)
    assert not out.rebuilt and out.removed == 100 and out.size == 1900
    bundle = vectors.load_current(tmp_path)
    _, rows = vectors.search(bundle, POOL[gone], 50)
    assert np.all(rows >= 0), "K live results, even where tombstones were nearest"
    assert not np.isin(bundle.ids[rows, 1], gone).any() and np.all(bundle.ids[rows, 0] == vectors.KIND_IMAGE)
    assert bundle.meta["tombstones"] == (0 if kind == "flat" else 100)
    assert bundle.index.ntotal == {"flat": 1900, "ivf": 1900, "ivfpq": 1900, "hnsw": 2000}[kind]
    live = np.flatnonzero(bundle.ids[:, 1] == 1001)[-1]
    np.testing.assert_allclose(vectors.vector_of(bundle, live), POOL[1001], atol=2e-3)  # "more like this"
    allowed = np.flatnonzero(np.isin(bundle.ids[:, 1], np.arange(0, 400)))  # a filter that includes removed rows
    _, rows = vectors.search(bundle, POOL[:5], 10, allowed=allowed)
    assert np.all(rows >= 0) and not np.isin(bundle.ids[rows, 1], gone).any()


def test_an_image_changed_in_place_gets_its_new_vector(tmp_path):
    sync(tmp_path, catalogue(range(1000)), "ivf")
    pool = POOL.copy()
    pool[7] = POOL[3000]
    tags = np.zeros(1000, np.int64)
    tags[7] = 1  # same (kind, id), new content hash
    out = sync_index(tmp_path, load_for_update(tmp_path), catalogue(range(1000), tags, pool), DIM, "ivf")
    assert not out.rebuilt and (out.added, out.removed) == (1, 1)
    assert top1(tmp_path, POOL[3000:3001])[0] == 7


def test_nothing_changed_writes_nothing_and_a_metadata_change_relinks(tmp_path):
    sync(tmp_path, catalogue(range(1000)), "ivfpq")
    assert not sync(tmp_path, catalogue(range(1000)), "ivfpq").written
    moved = catalogue(range(1000))
    moved.signature = "a file was renamed"
    before = vectors.load_current(tmp_path)
    out = sync_index(tmp_path, load_for_update(tmp_path), moved, DIM, "ivfpq")
    after = vectors.load_current(tmp_path)
    assert out.written and not out.rebuilt and after.generation != before.generation
    assert after.meta["signature"] == "a file was renamed"
    assert (tmp_path / after.generation / "index.faiss").stat().st_ino == \
        (tmp_path / before.generation / "index.faiss").stat().st_ino


def test_retrain_when_grown_past_twice_the_trained_size_or_asked(tmp_path):
    sync(tmp_path, catalogue(range(1000)), "ivf")
    current = load_for_update(tmp_path)
    assert plan_update(current, catalogue(range(2000)), DIM, "ivf").rebuild is None  # exactly 2x: still served
    assert "trained on" in plan_update(current, catalogue(range(2001)), DIM, "ivf").rebuild
    assert plan_update(current, catalogue(range(1000)), DIM, "ivf", retrain=True).rebuild == "retraining asked for"
    out = sync(tmp_path, catalogue(range(2001)), "ivf")
    assert out.rebuilt and vectors.load_current(tmp_path).meta["trained_size"] == 2001


def test_rebuild_on_type_change_tombstones_and_a_missing_index(tmp_path):
    assert plan_update(None, catalogue(range(10)), DIM).rebuild == "no index yet"
    sync(tmp_path, catalogue(range(1000)), "hnsw")
    current = load_for_update(tmp_path)
    assert plan_update(current, catalogue(range(1000)), DIM, "flat").rebuild == "type hnsw -> flat"
    assert plan_update(current, catalogue(range(1000)), DIM, "auto").rebuild == "type hnsw -> flat"
    assert "removed" in plan_update(current, catalogue(range(250, 1000)), DIM, "hnsw").rebuild  # 25% tombstones
    assert plan_update(current, catalogue(range(150, 1000)), DIM, "hnsw").rebuild is None  # 15%


def test_auto_keeps_its_type_near_the_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "EXACT_BELOW", 1000)
    sync_index(tmp_path, None, catalogue(range(980)), DIM, "auto")
    current = load_for_update(tmp_path)
    assert current.meta["params"]["type"] == "flat"
    assert plan_update(current, catalogue(range(1050)), DIM).rebuild is None  # within 10% past the threshold
    assert plan_update(current, catalogue(range(1200)), DIM).rebuild == "type flat -> ivf"


def brute_force_recall(bundle: vectors.IndexBundle, base: np.ndarray, queries: np.ndarray, k: int = 100) -> float:
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :k]
    _, rows = vectors.search(bundle, queries, k)
    found = bundle.ids[rows, 1]
    return float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth, strict=True)]))


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_tuned_knobs_reach_the_recall_target(tmp_path, kind):
    base, queries = clustered(8000, seed=1, clusters=80), clustered(200, seed=2, clusters=80)
    ids = np.arange(len(base))
    cat = Catalogue(np.stack([np.full(len(base), 1), ids], 1), np.zeros(len(base), np.int64), lambda p: base[p])
    sync_index(tmp_path, None, cat, DIM, kind, params={"nlist": 64, "M": 8} if kind != "hnsw" else {"M": 8})
    bundle = vectors.load_current(tmp_path)
    knob = "efSearch" if kind == "hnsw" else "nprobe"
    tuning = bundle.meta["tuning"]
    assert tuning["reached"] and tuning["target"] == 0.95 and tuning["chosen"][knob] == bundle.meta["params"][knob]
    assert brute_force_recall(bundle, base, queries) >= 0.95
    if kind != "hnsw":
        assert bundle.meta["params"]["nprobe"] < 64, "not simply every list"
        one = vectors.IndexBundle(bundle.index, bundle.ids, {"params": {**bundle.meta["params"], "nprobe": 1}}, "x",
                                  bundle.rerank)
        assert brute_force_recall(one, base, queries) < 0.95, "the set is hard enough that tuning matters"


def test_a_higher_recall_target_costs_more_probes(tmp_path):
    base = clustered(8000, seed=1, clusters=80)
    cat = Catalogue(np.stack([np.full(len(base), 1), np.arange(len(base))], 1), np.zeros(len(base), np.int64),
                    lambda p: base[p])
    chosen = []
    for target in (0.9, 0.99):
        sync_index(tmp_path, None, cat, DIM, "ivf", params={"nlist": 64, "recall_target": target}, retrain=True)
        chosen.append(vectors.load_current(tmp_path).meta["params"]["nprobe"])
    assert chosen[0] < chosen[1]
    sync_index(tmp_path, load_for_update(tmp_path), cat, DIM, "ivf", retrain=True)  # a rebuild keeps the setting
    assert vectors.load_current(tmp_path).meta["params"]["recall_target"] == 0.99


def test_segments_merge_so_files_stay_few(tmp_path):
    paths = []
    for i in range(40):  # 40 adds of 10 rows after a base of 1,000
        rows = 1000 if i == 0 else 10
        item = vectors.appended_segments(paths, np.full((rows, 4), i, np.float16))
        folder = tmp_path / f"g{i}"
        folder.mkdir()
        paths, start = [], 0
        for part in item:
            path = folder / f"s{start}.npy"
            start += vectors._write_segment(path, part if isinstance(part, list) else [part])
            paths.append(path)
    store = vectors.Segments([np.load(p, mmap_mode="r") for p in paths])
    assert len(paths) <= 6 and len(store) == 1390
    expected = np.concatenate([np.full((1000, 4), 0)] + [np.full((10, 4), i) for i in range(1, 40)])
    np.testing.assert_array_equal(store[np.arange(1390)], expected)
    np.testing.assert_array_equal(store[[1389, 3, 1000]], expected[[1389, 3, 1000]])
    assert store[1005][0] == 1 and store[-1][0] == 39


class Crash(BaseException):
    """Stands for a kill: nothing after it runs, no clean-up."""


def test_a_crash_mid_write_keeps_the_previous_generation(tmp_path, monkeypatch):
    sync(tmp_path, catalogue(range(2000)), "ivfpq")
    sync(tmp_path, catalogue(range(2100)), "ivfpq")  # two generations sharing a segment
    served = vectors.load_current(tmp_path)
    shared = vectors.segment_paths(served)[0].read_bytes()
    writes = []
    real = vectors._write_segment

    def dies_on_second_segment(path, pieces):
        writes.append(path)
        if len(writes) == 2:
            raise Crash
        return real(path, pieces)

    monkeypatch.setattr(vectors, "_write_segment", dies_on_second_segment)
    with pytest.raises(Crash):
        sync(tmp_path, catalogue(range(2200)), "ivfpq")
    monkeypatch.undo()
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the half-written folder
    again = vectors.load_current(tmp_path)
    assert again.generation == served.generation and vectors.segment_paths(again)[0].read_bytes() == shared
    assert np.array_equal(top1(tmp_path, POOL[2000:2100]), np.arange(2000, 2100))
    # the next run starts from the served generation and clears the debris
    out = sync(tmp_path, catalogue(range(2200)), "ivfpq")
    assert not out.rebuilt and out.added == 100
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    # a damaged newest generation falls back to the one before it, whose shared segment is intact
    newest = vectors.load_current(tmp_path)
    (tmp_path / newest.generation / "index.faiss").write_bytes(b"broken")
    fallback = vectors.load_current(tmp_path)
    assert fallback.generation == again.generation
    assert np.array_equal(top1(tmp_path, POOL[2000:2100]), np.arange(2000, 2100))
    # and the damaged generation is replaced by a correct one from the catalogue
    out = sync(tmp_path, catalogue(range(2200)), "ivfpq")
    assert out.written and np.array_equal(top1(tmp_path, POOL[2100:2200]), np.arange(2100, 2200))


def test_refresh_index_follows_the_catalogue(tmp_path):
    from app.db import open_database
    from app.index_build import refresh_index
    from app.models import Image, Keyframe, Video
    from app.paths import DataLayout

    layout = DataLayout.from_data_dir(tmp_path)
    layout.ensure()
    sessions = open_database(f"sqlite:///{tmp_path / 'catalogue.db'}")
    identity = ("m", "p")

    def add_video(session, name: str, feats: np.ndarray) -> Video:
        video = Video(video_id=name, path=f"/v/{name}", source="video", content_hash=name, size=0, mtime_ns=0,
                      fps=25.0, frames=len(feats), duration=1.0)
        video.keyframes = [Keyframe(n=n, frame_idx=n, pts_time=0.0, image_path=f"k/{n}") for n in
                           range(1, len(feats) + 1)]
        session.add(video)
        np.save(layout.video_feature_path(name), feats)
        return video

    def add_image(session, path: str, vec: np.ndarray, content: str) -> Image:
        np.save(layout.image_feature_dir / f"{content}.npy", vec)
        image = session.query(Image).filter_by(path=path).one_or_none() or Image(path=path, size=0, mtime_ns=0,
                                                                                  width=1, height=1)
        image.content_hash = content
        session.add(image)
        return image

    def served_item(vec: np.ndarray) -> tuple[int, int]:
        bundle = vectors.load_current(layout.index_dir)
        _, rows = vectors.search(bundle, vec[None, :], 1)
        return tuple(bundle.ids[rows[0, 0]].tolist())

    with sessions() as s:
        add_video(s, "a", POOL[:30])
        add_video(s, "c", POOL[50:60])
        add_image(s, "/i/1.jpg", POOL[100], "h1")
        s.commit()
        assert refresh_index(s, layout, identity, DIM) == (41, True)
        assert refresh_index(s, layout, identity, DIM) == (41, False)
        assert served_item(POOL[55])[0] == vectors.KIND_KEYFRAME
        first = vectors.load_current(layout.index_dir).generation
        add_video(s, "b", POOL[200:210])
        image = add_image(s, "/i/1.jpg", POOL[300], "h2")  # edited in place: same row, new content
        s.commit()
        assert refresh_index(s, layout, identity, DIM) == (51, True)
        bundle = vectors.load_current(layout.index_dir)
        assert bundle.meta["updates"] == 1 and bundle.meta["reason"] == "11 added, 1 removed"
        assert bundle.generation != first and served_item(POOL[300]) == (vectors.KIND_IMAGE, image.id)
        kf_b5 = s.query(Keyframe).join(Video).filter(Video.video_id == "b", Keyframe.n == 5).one()
        assert served_item(POOL[204]) == (vectors.KIND_KEYFRAME, kf_b5.id)
        s.delete(s.query(Video).filter_by(video_id="a").one())
        s.commit()
        assert refresh_index(s, layout, identity, DIM) == (21, True)  # flat: closes up over the removed rows
        bundle = vectors.load_current(layout.index_dir)
        assert len(bundle.ids) == 21 and bundle.meta["updates"] == 2
        assert refresh_index(s, layout, identity, DIM, retrain=True) == (21, True)
        assert vectors.load_current(layout.index_dir).meta["updates"] == 0


def test_recall_is_measured_again_after_the_size_moved(tmp_path):
    sync(tmp_path, catalogue(range(1000)), "hnsw")
    assert vectors.load_current(tmp_path).meta["tuning"]["held_out"]
    sync(tmp_path, catalogue(range(1200)), "hnsw")  # 1.2x: the measurement stands
    assert vectors.load_current(tmp_path).meta["tuning"]["size"] == 1000
    sync(tmp_path, catalogue(range(1300)), "hnsw")  # 1.3x
    tuning = vectors.load_current(tmp_path).meta["tuning"]
    assert tuning["size"] == 1300 and not tuning["held_out"] and tuning["reached"]
