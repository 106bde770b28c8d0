"""Crash safety (a real SIGKILL mid-run) and the AI Challenge dataset import."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from app.paths import DataLayout
from tests.conftest import ROOT, db_url, index_args
from tests.helpers import catalogue_counts, current_index, run_offline


def _videos_committed(data) -> int:
    db = DataLayout.from_data_dir(data).instance_dir / "framefinder.db"
    if not db.exists():
        return 0
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as c:
            return c.execute(text("select count(*) from videos")).scalar() or 0
    except Exception:  # noqa: BLE001 - schema not there yet
        return 0
    finally:
        engine.dispose()


def test_sigkill_mid_run_keeps_previous_index_and_rerun_finishes_without_duplicates(tmp_path, media_dir, capsys):
    media = tmp_path / "media"
    (media / "videos").mkdir(parents=True)
    for i in range(4):
        shutil.copy(media_dir / "videos" / "cuts_and_dissolve.mp4", media / "videos" / f"v{i}.mp4")
    data = tmp_path / "data"
    run_offline(capsys, data, media_dir / "images" / "still_0.jpg")
    before = current_index(data)

    proc = subprocess.Popen([sys.executable, str(ROOT / "offline.py"), "index", str(media), *index_args(data),
                             "--verbose"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    staged = 0
    for line in proc.stderr:  # the run's own log: kill it once the second video is staged, not after a guess
        staged += " staged " in line
        if staged == 2:
            break
    assert staged == 2, "the run ended before its second video"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = _videos_committed(data)
    assert 1 <= done < 4, "the kill must land mid-run"

    after_kill = current_index(data)  # still loadable: the previous generation
    assert after_kill.generation == before.generation and after_kill.size == before.size

    code, out, _ = run_offline(capsys, data, media_dir / "images" / "still_0.jpg", media)
    assert code == 0 and f"unchanged {1 + done}" in out
    counts = catalogue_counts(data)
    assert counts["videos"] == 4 and counts["images"] == 1
    engine = create_engine(db_url(data))
    with engine.connect() as c:
        per_video = c.execute(text("select count(*) from keyframes group by video_pk")).scalars().all()
        dupes = c.execute(text("select count(*) from (select video_pk, n from keyframes group by video_pk, n "
                               "having count(*) > 1)")).scalar()
    engine.dispose()
    assert dupes == 0 and len(set(per_video)) == 1  # same video four times: same keyframes each
    assert current_index(data).size == counts["keyframes"] + 1
    assert not list((DataLayout.from_data_dir(data).keyframes_dir).glob(".*.tmp"))


def _make_aic_dataset(tmp_path, media_dir, capsys, dim: int):
    """An AI Challenge dataset made from a collection we indexed ourselves, with shipped features."""
    src = tmp_path / "src"
    run_offline(capsys, src, media_dir / "videos")
    ds = tmp_path / "aic"
    shutil.copytree(src / "keyframes", ds / "keyframes")
    shutil.copytree(src / "map-keyframes", ds / "map-keyframes")
    (ds / "clip-features-vit-b32").mkdir()
    shipped = {}
    for csv_path in (ds / "map-keyframes").glob("*.csv"):
        n = len(csv_path.read_text().strip().splitlines()) - 1
        vecs = np.random.default_rng(n).normal(size=(n, dim)).astype(np.float32)
        np.save(ds / "clip-features-vit-b32" / f"{csv_path.stem}.npy", vecs)
        shipped[csv_path.stem] = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return ds, shipped


def test_shipped_features_of_the_right_dimension_are_not_trusted_without_a_named_model(tmp_path, media_dir,
                                                                                      capsys):
    ds, shipped = _make_aic_dataset(tmp_path, media_dir, capsys, dim=64)
    data = tmp_path / "data"
    code, out, err = run_offline(capsys, data, ds)
    assert code == 0 and "added 2" in out and "which model made these features is not said" in err
    for vid, vecs in shipped.items():
        assert not np.allclose(np.load(DataLayout.from_data_dir(data).video_feature_path(vid)), vecs, atol=1e-3)
    other = tmp_path / "other"
    code, _, err = run_offline(capsys, other, ds, extra=("--features-model", "ViT-B-32 openai"))
    assert code == 0 and "were made by ViT-B-32 openai, not this collection's framefinder-tiny none" in err


@pytest.mark.parametrize("how", ["flag", "file"])
def test_ai_challenge_import_uses_shipped_features_when_their_model_is_named(tmp_path, media_dir, capsys, how):
    ds, shipped = _make_aic_dataset(tmp_path, media_dir, capsys, dim=64)
    data = tmp_path / "data"
    if how == "file":
        next(ds.glob("clip-features*")).joinpath("MODEL").write_text("framefinder-tiny none\n")
    extra = ("--features-model", "framefinder-tiny none") if how == "flag" else ()
    code, out, _ = run_offline(capsys, data, ds, extra=extra)
    assert code == 0 and "added 2" in out
    layout = DataLayout.from_data_dir(data)
    for vid, vecs in shipped.items():
        np.testing.assert_allclose(np.load(layout.video_feature_path(vid)), vecs, rtol=1e-5)
        assert (layout.keyframes_dir / vid / "001.jpg").is_file()
        assert (layout.map_dir / f"{vid}.csv").read_text() == (ds / "map-keyframes" / f"{vid}.csv").read_text()
    assert current_index(data).size == sum(len(v) for v in shipped.values())
    code, out, _ = run_offline(capsys, data, ds, extra=extra)
    assert "unchanged 2" in out


def test_ai_challenge_import_recomputes_features_of_another_dimension(tmp_path, media_dir, capsys):
    ds, shipped = _make_aic_dataset(tmp_path, media_dir, capsys, dim=512)
    data = tmp_path / "data"
    code, _, _ = run_offline(capsys, data, ds)
    assert code == 0
    for vid, vecs in shipped.items():
        mine = np.load(DataLayout.from_data_dir(data).video_feature_path(vid))
        assert mine.shape == (len(vecs), 64)


def test_ai_challenge_csv_with_missing_columns_is_reported(tmp_path, media_dir, capsys):
    ds, _ = _make_aic_dataset(tmp_path, media_dir, capsys, dim=64)
    bad = next((ds / "map-keyframes").glob("*.csv"))
    bad.write_text("n,fps\n1,25\n")
    code, _, err = run_offline(capsys, tmp_path / "data", ds)
    assert code == 1 and bad.name in err and "missing columns pts_time, frame_idx" in err


