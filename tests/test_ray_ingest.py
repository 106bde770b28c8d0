"""Distributed ingest on Ray (`offline.py index --ray`), run as a user runs it: a Ray cluster started with
`ray start --head` (2 CPUs), offline.py as a separate process joining it, the catalogue on PostgreSQL when the run
has one. The collection it makes must equal the single-machine run's on the same media (generated clips and real
footage), a killed Ray worker or a killed driver must lose nothing, and an unreachable cluster is one sentence.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.models import Keyframe, Video
from app.sample import ShotPlan, make_video
from tests.conftest import ROOT, database_env, db_url
from tests.processes import TINY_ARGS, cli, free_port

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
RAY = str(Path(sys.executable).parent / "ray")
ARGS = [*TINY_ARGS, "--pretrained", "none", "--no-faces", "--no-detector"]


@pytest.fixture(scope="module")
def cluster():
    """A two-CPU Ray head on this machine, as `ray start --head` makes one on a real cluster's first node."""
    port = free_port()
    _start_head(port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Three generated clips with cuts and a dissolve, a damaged file, and real footage (opencv-doc's vtest.avi)."""
    root = tmp_path_factory.mktemp("ray-media")
    for seed in range(3):
        make_video(root / f"clip_{seed}.mp4", [ShotPlan(70), ShotPlan(60, dissolve_in=12), ShotPlan(50)],
                   seed=10 + seed)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    if (OPENCV_DATA / "vtest.avi").exists():
        shutil.copy(OPENCV_DATA / "vtest.avi", root / "vtest.avi")
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, media) -> Path:
    """The single-machine run (SQLite, local threads) that Ray's runs must equal."""
    data = tmp_path_factory.mktemp("ray-reference")
    done = cli("index", str(media), "--data-dir", str(data), *ARGS)
    assert done.returncode == 1, done.stderr  # the broken file fails; the rest is indexed
    return data


def _catalogue(data_dir: Path, url: str | None = None) -> dict:
    engine = create_engine(url or db_url(data_dir))
    with Session(engine) as s:
        rows = s.execute(select(Video.video_id, Keyframe.n, Keyframe.frame_idx, Keyframe.shot_id.is_not(None))
                         .join(Keyframe.video).order_by(Video.video_id, Keyframe.n)).all()
    engine.dispose()
    return {"keyframes": [tuple(r) for r in rows]}


def _files(data_dir: Path) -> dict[str, bytes]:
    """Every keyframe, shot list and keyframe map the run wrote, by path (features compared apart)."""
    out = {}
    for sub in ("keyframes", "map-keyframes", "shots"):
        for path in sorted((data_dir / sub).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(data_dir))] = path.read_bytes()
    return out


def _assert_same_collection(reference: Path, other: Path, url: str | None = None) -> None:
    assert _catalogue(other, url) == _catalogue(reference)
    ref_files, files = _files(reference), _files(other)
    assert sorted(files) == sorted(ref_files)
    assert [name for name in ref_files if files[name] != ref_files[name]] == []
    names = sorted(p.name for p in (reference / "feature").glob("*.npy"))
    assert names and names == sorted(p.name for p in (other / "feature").glob("*.npy"))
    for name in names:
        np.testing.assert_allclose(np.load(other / "feature" / name), np.load(reference / "feature" / name),
                                   atol=1e-5)
    assert not any((other / ".staging").iterdir())


def _catalogue_env(data_dir: Path):
    """PostgreSQL when the run has one (the catalogue of a cluster's collection), else the default SQLite file."""
    if os.environ.get("TEST_DATABASE_URL"):
        return database_env("postgresql", data_dir)
    return contextlib.nullcontext(None)


def _worker_pids(name: str) -> list[int]:
    """Ray names a worker process after the task it runs (`ray::_prepare`)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and name.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_ray_run_equals_the_single_machine_run_despite_a_killed_worker(cluster, media, reference, tmp_path):
    """A worker killed in the middle of a video is retried by Ray. The collection has the same keyframe files,
    shots, maps and catalogue rows as the single-machine run, features equal to 1e-5, and the damaged file is
    reported the same way; a second run finds every video unchanged (incremental on Ray too)."""
    data = tmp_path / "ray"
    with _catalogue_env(data) as url:
        proc = subprocess.Popen([sys.executable, str(ROOT / "offline.py"), "index", str(media), "--data-dir",
                                 str(data), *ARGS, "--ray", cluster], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
        killed = []
        deadline = time.monotonic() + 120
        while not killed and proc.poll() is None and time.monotonic() < deadline:
            for pid in _worker_pids("ray::_prepare"):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        out, err = proc.communicate(timeout=300)
        assert killed, "no video task was seen running"
        assert proc.returncode == 1, err
        assert "FAILED: " in err and "broken.mp4" in err
        _assert_same_collection(reference, data, url)
        again = cli("index", str(media), "--data-dir", str(data), *ARGS, "--ray", cluster, "--ray-workers", "1")
        assert again.returncode == 1, again.stderr
        videos = len(list(media.glob("*.avi"))) + 3
        assert f"unchanged {videos}," in again.stdout, again.stdout


def test_a_killed_driver_loses_nothing_and_the_rerun_finishes(cluster, media, reference, tmp_path):
    data = tmp_path / "killed-driver"
    proc = subprocess.Popen([sys.executable, str(ROOT / "offline.py"), "index", str(media), "--data-dir", str(data),
                             *ARGS, "--ray", cluster], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=ROOT)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list((data / "feature").glob("*.npy"))) >= 1:  # one video committed and published
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    done = cli("index", str(media), "--data-dir", str(data), *ARGS, "--ray", cluster)
    assert done.returncode == 1, done.stderr
    _assert_same_collection(reference, data)


def test_an_unreachable_cluster_is_one_sentence_and_writes_nothing(media, tmp_path):
    data = tmp_path / "unreachable"
    with _catalogue_env(data) as url:
        t0 = time.monotonic()
        done = cli("index", str(media), "--data-dir", str(data), *ARGS, "--ray", f"127.0.0.1:{free_port()}")
        assert time.monotonic() - t0 < 60
        assert done.returncode == 2
        assert done.stderr.startswith("error: cannot reach the Ray cluster at 127.0.0.1:"), done.stderr  # no model yet
        assert "(--ray)" in done.stderr and "Traceback" not in done.stderr
        assert _catalogue(data, url)["keyframes"] == []
        bad = cli("index", str(media), "--data-dir", str(data), *ARGS, "--ray", "nowhere")
        assert bad.returncode == 2 and "--ray takes auto or HOST:PORT" in bad.stderr, bad.stderr
        zero = cli("index", str(media), "--data-dir", str(data), *ARGS, "--ray", "auto", "--ray-workers", "0")
        assert zero.returncode == 2 and "--ray-workers takes 1 to 10000" in zero.stderr, zero.stderr
        alone = cli("index", str(media), "--data-dir", str(data), *ARGS, "--ray-workers", "2")
        assert alone.returncode == 2 and "give --ray auto or --ray HOST:PORT too" in alone.stderr, alone.stderr


def _start_head(port: int) -> None:
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True,
                   timeout=120, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, cwd=ROOT)


def test_a_cluster_going_away_mid_run_is_one_sentence_and_the_rerun_finishes(cluster, media, reference, tmp_path):
    """Runs last in this module: it stops the module's cluster (`ray stop`), then starts another for the rerun."""
    data = tmp_path / "gone"
    proc = subprocess.Popen([sys.executable, str(ROOT / "offline.py"), "index", str(media), "--data-dir", str(data),
                             *ARGS, "--ray", cluster], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline and not list((data / "feature").glob("*.npy")):
        time.sleep(0.05)
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert f"error: the Ray cluster at {cluster} went away during the run (--ray)" in err
    assert "Traceback" not in err
    port = free_port()
    _start_head(port)
    done = cli("index", str(media), "--data-dir", str(data), *ARGS, "--ray", f"127.0.0.1:{port}")
    assert done.returncode == 1, done.stderr
    _assert_same_collection(reference, data)
