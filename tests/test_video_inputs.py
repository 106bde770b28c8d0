"""Real-world video files: old codecs get a playable proxy, phone rotation and variable frame rates are
honoured, and files that cannot be used are reported by name with the reason while the run goes on."""
from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from app.paths import DataLayout
from app.sample import Scene, make_video, write_h264
from tests.conftest import ShotPlan, db_url

SIZE = (320, 180)


def _write_vfr(path: Path) -> list[float]:
    """Two scenes: 50 frames 100 ms apart, then 50 frames 20 ms apart (a cut at 5.0 s). Returns frame times."""
    a, b = Scene(21, SIZE), Scene(22, SIZE)
    times = [i * 0.1 for i in range(50)] + [5.0 + i * 0.02 for i in range(50)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            img = (a if i < 50 else b).frame(i)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return times


def _write_rotated(path: Path) -> None:
    """A phone video stored landscape with a 90-degree display rotation; a white band on the stored left."""
    scene = Scene(23, SIZE)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.set_display_rotation(90)
        for t in range(60):
            img = scene.frame(t)
            img[:, :40] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        out.mux(stream.encode(None))


def _write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        for i in range(30):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.fixture(scope="module")
def odd_videos(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("odd")
    facts = {"vfr_times": _write_vfr(root / "vfr.mkv")}
    _write_rotated(root / "phone.mp4")
    _write_audio_only(root / "podcast.mp4")
    write_h264(root / "ok.mp4", [Scene(24, SIZE).frame(t) for t in range(50)], 25.0)
    (root / "bad_codec.mp4").write_bytes((root / "ok.mp4").read_bytes().replace(b"avc1", b"zzzz"))
    make_video(root / "full.avi", [ShotPlan(100)], seed=25)
    data = (root / "full.avi").read_bytes()
    (root / "cut_short.avi").write_bytes(data[: len(data) // 2])  # header says 100 frames, about 45 remain
    (root / "full.avi").unlink()
    return root, facts


@pytest.fixture(scope="module")
def odd_indexed(odd_videos, tmp_path_factory):
    root, facts = odd_videos
    data = tmp_path_factory.mktemp("odd-collection")
    import io
    from contextlib import redirect_stderr, redirect_stdout

    import offline
    from tests.conftest import index_args

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = offline.main(["index", str(root), *index_args(data)])
    return data, code, out.getvalue(), err.getvalue(), facts


def test_unusable_files_are_reported_by_name_and_the_run_goes_on(odd_indexed):
    data, code, out, err, _ = odd_indexed
    assert code == 1  # some files failed
    assert "added 3" in out  # ok, phone, vfr
    reasons = {line.split(": ", 2)[1].rsplit("/", 1)[-1]: line.split(": ", 2)[2]
               for line in err.splitlines() if line.startswith("FAILED: ")}
    assert "no video stream" in reasons["podcast.mp4"] and "audio" in reasons["podcast.mp4"]
    assert "codec" in reasons["bad_codec.mp4"]
    assert "truncated" in reasons["cut_short.avi"] and "100" in reasons["cut_short.avi"]
    assert set(reasons) == {"podcast.mp4", "bad_codec.mp4", "cut_short.avi"}


def test_variable_frame_rate_keeps_true_times(odd_indexed):
    data, _, _, _, facts = odd_indexed
    times = facts["vfr_times"]
    rows = list(csv.DictReader(open(DataLayout.from_data_dir(data).map_dir / "vfr.csv")))
    assert len(rows) >= 2
    for r in rows:
        assert float(r["pts_time"]) == pytest.approx(times[int(r["frame_idx"])], abs=1e-3)
    assert any(int(r["frame_idx"]) >= 50 for r in rows)  # the second scene is there, after 5.0 s


def test_phone_rotation_is_applied(odd_indexed):
    data, _, _, _, _ = odd_indexed
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from app.models import Video

    layout = DataLayout.from_data_dir(data)
    engine = create_engine(db_url(layout.data_dir))
    with Session(engine) as s:
        video = s.scalar(select(Video).where(Video.video_id == "phone"))
        assert (video.width, video.height) == (180, 320)
    engine.dispose()
    img = cv2.imread(str(layout.keyframes_dir / "phone" / "001.jpg"))
    assert img.shape[:2] == (320, 180)
    # turned 90 degrees counterclockwise for display, the stored left band lies at the bottom
    assert img[-30:].mean() > 240 and img[:40].mean() < 230


def test_old_codec_gets_a_browser_playable_proxy_served_with_ranges(app, client, indexed):
    """The test collection's cuts_and_dissolve.mp4 is MPEG-4 Part 2 (browsers cannot play it)."""
    layout = DataLayout.from_data_dir(indexed)
    proxy = layout.proxy_path("cuts_and_dissolve")
    assert proxy.is_file()
    with av.open(str(proxy)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    assert not layout.proxy_path("long_shot").exists()  # VP8 WebM plays as it is
    whole = client.get("/video/cuts_and_dissolve")
    assert whole.status_code == 200 and whole.mimetype == "video/mp4"
    part = client.get("/video/cuts_and_dissolve", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.data) == 100 and part.data == whole.data[:100]
    webm = client.get("/video/long_shot", headers={"Range": "bytes=10-19"})
    assert webm.status_code == 206 and len(webm.data) == 10
