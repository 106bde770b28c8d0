"""offline.py index end to end, with the tiny random-weight CLIP model (pipeline behaviour only)."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np

from app.archives import extract_archive
from app.paths import DataLayout
from tests.conftest import ROOT
from tests.helpers import catalogue_counts, copy_media, current_index, run_offline


def test_index_writes_ai_challenge_layout_catalogue_and_faiss(tmp_path, media_dir, capsys):
    data = tmp_path / "data"
    code, out, _ = run_offline(capsys, data, media_dir)
    assert code == 0
    assert "files seen 5, added 5" in out and "failed 0" in out
    layout = DataLayout.from_data_dir(data)
    for vid in ("cuts_and_dissolve", "long_shot"):
        rows = list(csv.DictReader(open(layout.map_dir / f"{vid}.csv")))
        assert list(rows[0]) == ["n", "pts_time", "fps", "frame_idx"]
        assert [int(r["n"]) for r in rows] == list(range(1, len(rows) + 1))
        for r in rows:
            assert (layout.keyframes_dir / vid / f"{int(r['n']):03d}.jpg").is_file()
            assert abs(float(r["pts_time"]) - int(r["frame_idx"]) / 25.0) < 1e-3
        shots = list(csv.DictReader(open(layout.shots_dir / f"{vid}.csv")))
        assert list(shots[0]) == ["shot", "start_frame", "end_frame"]
        feats = np.load(layout.video_feature_path(vid))
        assert feats.dtype == np.float32 and feats.shape == (len(rows), 64)
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    counts = catalogue_counts(data)
    assert counts["videos"] == 2 and counts["images"] == 3
    bundle = current_index(data)
    assert bundle.size == counts["keyframes"] + counts["images"]
    assert bundle.meta["model"] == "framefinder-tiny" and bundle.meta["pretrained"] == "none"
    # an exact keyframe finds itself first
    first = np.load(layout.video_feature_path("long_shot"))[:1]
    _, ids = bundle.index.search(first, 1)
    kind, _ = bundle.ids[ids[0, 0]]
    assert kind == 0


def test_rerun_does_no_work_then_add_change_and_prune(tmp_path, media_dir, capsys):
    media = copy_media(media_dir, tmp_path / "media")
    data = tmp_path / "data"
    run_offline(capsys, data, media)
    generation = current_index(data).generation
    code, out, _ = run_offline(capsys, data, media)
    assert code == 0 and "added 0, updated 0, unchanged 5" in out
    assert current_index(data).generation == generation  # same index, untouched

    shutil.copy(media / "images" / "still_0.jpg", media / "images" / "new.jpg")
    (media / "images" / "still_1.jpg").write_bytes((media / "images" / "still_2.jpg").read_bytes())
    os.utime(media / "images" / "still_1.jpg", (1, 1))
    code, out, _ = run_offline(capsys, data, media)
    assert "added 1, updated 1, unchanged 4" in out
    assert catalogue_counts(data)["images"] == 4

    (media / "images" / "new.jpg").unlink()
    shutil.rmtree(media / "videos")
    code, out, _ = run_offline(capsys, data, media, extra=("--prune",))
    assert "pruned 3" in out
    counts = catalogue_counts(data)
    assert counts == {"videos": 0, "keyframes": 0, "images": 3}
    assert current_index(data).size == 3
    assert not (DataLayout.from_data_dir(data).keyframes_dir / "long_shot").exists()


def _zip(path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def test_bad_inputs_are_reported_by_name_and_the_rest_is_indexed(tmp_path, media_dir, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    good_image = (media_dir / "images" / "still_0.jpg").read_bytes()
    video = (media_dir / "videos" / "cuts_and_dissolve.mp4").read_bytes()
    (bad / "corrupt.mp4").write_bytes(os.urandom(50_000))
    (bad / "empty.mkv").write_bytes(b"")
    (bad / "truncated.mp4").write_bytes(video[: len(video) // 2])
    (bad / "broken.jpg").write_bytes(good_image[:200])
    (bad / "notes.txt").write_text("not media")
    _zip(bad / "evil.zip", {"../escape.jpg": good_image, "/abs/path.jpg": good_image, "fine/inner.jpg": good_image})
    _zip(bad / "bomb.zip", {"zeros.jpg": b"\0" * 30_000_000})
    code, out, err = run_offline(capsys, tmp_path / "data", bad, media_dir / "images" / "still_1.jpg")
    assert code == 1
    for name, reason in [("corrupt.mp4", "corrupt"), ("empty.mkv", "empty"), ("truncated.mp4", ""),
                         ("broken.jpg", ""), ("../escape.jpg", "escapes"), ("/abs/path.jpg", "absolute"),
                         ("zeros.jpg", "zip bomb")]:
        line = next((ln for ln in err.splitlines() if name in ln), None)
        assert line is not None and line.startswith("FAILED") and reason in line, (name, err)
    assert "skipped: " in err and "notes.txt" in err
    assert "failed 7" in out
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "data" / "escape.jpg").exists()
    # the good image and the safe zip entry are indexed
    assert catalogue_counts(tmp_path / "data")["images"] == 2
    assert current_index(tmp_path / "data").size == 2


def test_zip_over_the_declared_size_limit_is_refused_whole(tmp_path):
    _zip(tmp_path / "a.zip", {"a.jpg": b"x" * 5000, "b.jpg": b"y" * 5000})
    files, failed, _ = extract_archive(tmp_path / "a.zip", tmp_path / "out", max_total=4000)
    assert files == [] and "over the limit" in failed[0].reason
    assert not (tmp_path / "out").exists()


def test_other_model_is_refused_before_any_work(tmp_path, media_dir, capsys):
    data = tmp_path / "data"
    run_offline(capsys, data, media_dir / "images")
    import offline
    from tests.conftest import TINY_CONFIG

    code = offline.main(["index", str(media_dir / "videos"), "--data-dir", str(data), "--model", "framefinder-tiny",
                         "--model-config", str(TINY_CONFIG), "--pretrained", "other-weights.pt", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to mix" in err
    assert catalogue_counts(data)["videos"] == 0


def test_without_network_the_default_weights_fail_with_one_sentence_naming_the_flag(tmp_path, media_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "c"))
    proc = subprocess.run([sys.executable, str(ROOT / "offline.py"), "index", str(media_dir / "videos"),
                           "--data-dir", str(tmp_path / "data"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "--pretrained PATH" in proc.stderr
    assert "--pretrained none" in proc.stderr  # the way to try it without weights is named too
    assert not any((tmp_path / "data" / "keyframes").glob("*"))


def test_help_describes_every_option():
    proc = subprocess.run([sys.executable, str(ROOT / "offline.py"), "index", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--model", "--pretrained", "--device", "--index", "--prune", "--data-dir", "--keyframe-interval"):
        assert flag in proc.stdout
    from app.vectors import EXACT_BELOW, choose_type

    # the help states the same threshold as the code that picks the index type
    assert f"exact below {EXACT_BELOW:,} vectors" in " ".join(proc.stdout.split())
    assert choose_type(EXACT_BELOW - 1) == "flat" and choose_type(EXACT_BELOW) != "flat"
