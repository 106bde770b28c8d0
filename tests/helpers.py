"""Small helpers shared by the tests: run offline.py in-process, read the catalogue."""
from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

import offline
from app import vectors
from app.models import Image, Keyframe, Video
from app.paths import DataLayout
from tests.conftest import db_url, index_args


def run_offline(capsys, data_dir: Path, *paths: Path, extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    code = offline.main(["index", *map(str, paths), *index_args(data_dir), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def offline_main(capsys, *args: str):
    """`offline.py ARGS` through its own entry point in this process: the same exit status and messages as the
    command, without an interpreter start-up (for refusals and other quick answers; real runs use processes)."""
    import subprocess

    code = offline.main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def run_together(work, n: int) -> None:
    """work(0) ... work(n-1), each in its own thread, all started before any is waited for (races on purpose)."""
    import threading

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def catalogue_counts(data_dir: Path) -> dict[str, int]:
    engine = create_engine(db_url(data_dir))
    with Session(engine) as s:
        counts = {"videos": s.scalar(select(func.count(Video.id))),
                  "keyframes": s.scalar(select(func.count(Keyframe.id))),
                  "images": s.scalar(select(func.count(Image.id)))}
    engine.dispose()
    return counts


def current_index(data_dir: Path) -> vectors.IndexBundle:
    bundle = vectors.load_current(DataLayout.from_data_dir(data_dir).index_dir)
    assert bundle is not None, "no loadable index"
    return bundle


def copy_media(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
