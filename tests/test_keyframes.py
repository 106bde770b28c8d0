"""Keyframes a person would pick, on generated clips and on real footage (real TransNetV2 weights).

Expected values come from how the clips were made (which frames are black, glitched, faded)
or from simple pixel arithmetic written here, never from the selector itself.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from app.sample import Scene, render, write_video
from app.video_decode import decode_frames
from app.video_ingest import process_video
from tests.conftest import PLANS

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
needs_opencv_doc = pytest.mark.skipif(not (OPENCV_DATA / "Megamind_bugy.avi").is_file(),
                                      reason="Debian's opencv-doc is not installed (scripts/test.sh installs it)")
SIZE = (320, 180)


def _scene_frames(seed: int, n: int) -> list[np.ndarray]:
    scene = Scene(seed, SIZE)
    return [scene.frame(t) for t in range(n)]


def _title_card(n: int) -> list[np.ndarray]:
    """A flat red card with a slowly moving darker band: grey std about 6, content all the same."""
    frames = []
    for t in range(n):
        img = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
        img[:] = (30, 30, 200)
        y = 40 + t % 60
        img[y:y + 12] = (20, 20, 170)
        frames.append(img)
    return frames


def _keyframes_in(frames_range: tuple[int, int], result) -> list[int]:
    a, b = frames_range
    return [kf.frame_idx for kf in result.keyframes if a <= kf.frame_idx <= b]


def test_flat_coloured_shot_gets_a_keyframe_but_black_and_white_gaps_do_not(tmp_path, transnet):
    a = _scene_frames(1, 60)
    card = _title_card(68)  # 2.7 s at 25 fps
    black = [np.zeros_like(a[0])] * 12
    white = [np.full_like(a[0], 255)] * 12
    b = _scene_frames(2, 60)
    frames = a + card + black + b + white + _scene_frames(3, 50)
    grey = cv2.cvtColor(card[10], cv2.COLOR_BGR2GRAY)
    assert grey.std() < 10  # the case that used to be dropped as "blank"
    write_video(tmp_path / "card.avi", frames, 25.0)
    result = process_video(tmp_path / "card.avi", transnet, interval_s=10.0)
    card_range = (60, 60 + 68 - 1)
    black_range = (128, 139)
    white_range = (200, 211)
    assert _keyframes_in(card_range, result), [k.frame_idx for k in result.keyframes]
    assert not _keyframes_in(black_range, result)
    assert not _keyframes_in(white_range, result)
    for kf in result.keyframes:
        assert kf.image.mean() > 20 and kf.image.mean() < 240


def test_an_isolated_glitch_frame_is_never_chosen(tmp_path, transnet):
    """A white streak in one frame raises its Laplacian variance far above its neighbours'."""
    frames = _scene_frames(4, 75) + _scene_frames(5, 75)
    glitched = {30, 110}
    for i in glitched:
        frames[i] = frames[i].copy()
        frames[i][60:64, :] = 255
        frames[i][100:140, 200:260] = np.random.default_rng(i).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    write_video(tmp_path / "glitch.avi", frames, 25.0)
    result = process_video(tmp_path / "glitch.avi", transnet, interval_s=1.0)
    chosen = {kf.frame_idx for kf in result.keyframes}
    assert chosen and not chosen & glitched, chosen


def _odd_one_out(prev: np.ndarray, cur: np.ndarray, nxt: np.ndarray) -> bool:
    """Independent check: the frame differs from the average of its neighbours far more than they
    differ from each other (mean absolute difference on a 64x36 grey copy)."""
    small = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), (64, 36)).astype(float) for f in (prev, cur, nxt)]
    between = np.abs(small[0] - small[2]).mean()
    off = np.abs(small[1] - (small[0] + small[2]) / 2)
    return bool((off > 30).mean() > 0.01 and off.mean() > 2 * between)


@needs_opencv_doc
def test_real_clip_with_corrupted_frames_keeps_clean_keyframes(transnet):
    """OpenCV's Megamind_bugy.avi: decoding errors left streaks and black blocks in single frames."""
    path = OPENCV_DATA / "Megamind_bugy.avi"
    frames = [f.image() for f in decode_frames(path, 1280, [])]
    bad = {i for i in range(1, len(frames) - 1) if _odd_one_out(frames[i - 1], frames[i], frames[i + 1])}
    assert len(bad) >= 5  # the clip really has them
    result = process_video(path, transnet)
    chosen = {kf.frame_idx for kf in result.keyframes}
    assert len(result.shots) >= 3 and chosen
    assert not chosen & bad, sorted(chosen & bad)
    for shot in result.shots:
        if (shot.end_frame - shot.start_frame + 1) / result.fps >= 1.0:
            assert any(shot.start_frame <= f <= shot.end_frame for f in chosen), shot


@pytest.mark.parametrize("name", sorted(PLANS))
def test_keyframes_keep_away_from_shot_boundaries(name, media_dir, transnet):
    from tests.conftest import VIDEO_FILES

    result = process_video(media_dir / "videos" / VIDEO_FILES[name], transnet, interval_s=2.0)
    margin = round(0.3 * result.fps)
    for kf in result.keyframes:
        shot = result.shots[kf.shot]
        if shot.end_frame - shot.start_frame + 1 > 2 * margin + 1:
            assert shot.start_frame + margin <= kf.frame_idx <= shot.end_frame - margin, (kf.frame_idx, shot)


@pytest.mark.parametrize("name", sorted(PLANS))
def test_gradual_transitions_belong_to_neither_shot(name, truths, media_dir, transnet):
    """The shots CSV ends a shot where a dissolve begins and starts the next where it ends."""
    from tests.conftest import VIDEO_FILES

    truth = truths[name]
    result = process_video(media_dir / "videos" / VIDEO_FILES[name], transnet, interval_s=2.0)
    assert truth.dissolves
    for d0, d1 in truth.dissolves:
        inner = set(range(d0 + 1, d1))  # the first and last mixed frames are 95% one shot
        for shot in result.shots:
            overlap = inner & set(range(shot.start_frame, shot.end_frame + 1))
            assert not overlap, f"shot {shot} holds dissolve frames {sorted(overlap)}"
    # and the clean shots are still found whole, to within a frame or two
    for start, end in truth.shots:
        assert any(abs(s.start_frame - start) <= 2 and abs(s.end_frame - end) <= 2 for s in result.shots), \
            (start, end, result.shots)


def test_a_pan_over_one_scene_is_one_shot_with_spaced_keyframes(transnet, tmp_path):
    frames, _ = render([PLANS["long_shot"][0]], seed=3)
    write_video(tmp_path / "pan.avi", frames, 25.0)
    result = process_video(tmp_path / "pan.avi", transnet, interval_s=2.0)
    assert len(result.shots) == 1
    idx = [kf.frame_idx for kf in result.keyframes]
    assert len(idx) >= 2
    assert all(b - a >= 25 for a, b in zip(idx, idx[1:], strict=False))  # at least half an interval apart


@needs_opencv_doc
def test_sparse_real_clip_is_whole_and_gets_keyframes_through_its_length(transnet):
    """OpenCV's tree.avi (Cinepak) declares 444 frames at 15 fps but holds 68 that span all of its 29.6 s:
    not a truncated file; keyframes are spaced by time, not by frame count."""
    result = process_video(OPENCV_DATA / "tree.avi", transnet, interval_s=4.0)
    assert result.frames == 68 and result.duration == pytest.approx(29.6, abs=0.6)
    times = [kf.pts_time for kf in result.keyframes]
    assert len(times) >= 5 and times[-1] - times[0] > 20, times


@needs_opencv_doc
def test_indexing_real_footage_keeps_the_thread_count_flat(transnet):
    """PyAV gives each frame its own scaler with a thread per core by default; the keyframe candidates held those
    threads, 518 of them for vtest.avi on 2 cores, and thread creation failed on a 16-core machine. The count of
    this process's threads (from /proc) must stay near where it started, whatever the number of cores."""
    import os
    import threading
    import time

    def count() -> int:
        return len(os.listdir("/proc/self/task"))

    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], count())
            time.sleep(0.005)

    start = count()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = process_video(OPENCV_DATA / "vtest.avi", transnet)
    finally:
        done.set()
        watcher.join()
    assert result.keyframes
    assert peak[0] - start <= 8 + (os.cpu_count() or 1), (start, peak[0])
