"""Shot detection and keyframe choice on generated videos with known cuts (real TransNetV2 weights)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from app.sample import render
from app.shots import WINDOW, StreamingShotDetector
from app.video_ingest import process_video
from tests.conftest import PLANS, VIDEO_FILES


def boundary_scores(predicted, truth, tolerance: int = 2) -> tuple[float, float]:
    """Precision and recall of transitions; a predicted gap matches a true one when they overlap."""
    pred = [(a.end_frame, b.start_frame) for a, b in zip(predicted, predicted[1:], strict=False)]
    matched_true = set()
    hits = 0
    for p0, p1 in pred:
        for j, (t0, t1) in enumerate(truth.transitions):
            if j not in matched_true and p0 <= t1 + tolerance and t0 <= p1 + tolerance:
                matched_true.add(j)
                hits += 1
                break
    precision = hits / len(pred) if pred else 1.0
    recall = len(matched_true) / len(truth.transitions) if truth.transitions else 1.0
    return precision, recall


@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_shot_gets_a_keyframe_and_none_lies_on_a_transition(name, media_dir, truths, transnet):
    truth = truths[name]
    result = process_video(media_dir / "videos" / VIDEO_FILES[name], transnet, interval_s=2.0)
    assert result.frames == truth.frames
    frames = [kf.frame_idx for kf in result.keyframes]
    for start, end in truth.shots:
        assert any(start <= f <= end for f in frames), f"shot {start}-{end} has no keyframe: {frames}"
    for d0, d1 in truth.dissolves:
        assert not any(d0 <= f <= d1 for f in frames), f"keyframe inside dissolve {d0}-{d1}: {frames}"
    precision, recall = boundary_scores(result.shots, truth)
    print(f"{name}: shot boundary precision {precision:.2f} recall {recall:.2f}")
    assert precision >= 0.8 and recall >= 0.8


def test_long_shot_gets_several_keyframes(media_dir, transnet):
    result = process_video(media_dir / "videos" / VIDEO_FILES["long_shot"], transnet, interval_s=2.0)
    first_shot = [kf for kf in result.keyframes if kf.shot == 0]
    assert len(first_shot) >= 2  # 150 frames at 25 fps, one keyframe per 2 s


def test_blank_fade_frames_never_become_keyframes(tmp_path, transnet):
    """A shot that fades in from black keeps a sharp frame, not the black ones."""
    from app.sample import Scene, write_video

    scene_a, scene_b = Scene(1, (320, 180)), Scene(2, (320, 180))
    frames = [scene_a.frame(t) for t in range(60)]
    frames += [np.zeros_like(frames[0])] * 10
    frames += [(scene_b.frame(t) * min(1.0, (t + 1) / 20)).astype(np.uint8) for t in range(80)]
    write_video(tmp_path / "fade.avi", frames, 25.0)
    result = process_video(tmp_path / "fade.avi", transnet, interval_s=10.0)
    for kf in result.keyframes:
        grey = cv2.cvtColor(kf.image, cv2.COLOR_BGR2GRAY)
        assert grey.std() > 20, f"blank keyframe at frame {kf.frame_idx}"


def test_streaming_detector_matches_the_packages_own_windows(transnet):
    frames, _ = render(PLANS["cuts_and_dissolve"], seed=1)
    small = np.stack([cv2.cvtColor(cv2.resize(f, (48, 27), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
                      for f in frames])
    expected, _ = transnet.predict_frames(torch.from_numpy(small), quiet=True)
    detector = StreamingShotDetector(transnet, windows_per_batch=3, precision="fp32", window=WINDOW)
    got = []
    for f in small:
        got.extend(detector.push(f))
    got.extend(detector.finish())
    assert len(got) == len(frames)
    np.testing.assert_allclose([s for s, _ in got], expected.numpy(), atol=1e-4)
    # the fast path (bf16 on CPUs that have it, else fp32; 200-frame windows) keeps every boundary decision
    fast = StreamingShotDetector(transnet)
    probs = [p for f in small for p in fast.push(f)] + fast.finish()
    np.testing.assert_allclose([s for s, _ in probs], expected.numpy(), atol=0.03)
    assert [i for i, (s, _) in enumerate(probs) if s > 0.5] == np.flatnonzero(expected.numpy() > 0.5).tolist()
