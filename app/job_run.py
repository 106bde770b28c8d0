"""Running one queued job in its own process (`offline.py job ID`, started by the server's worker).

The process runs the same pipeline as `offline.py index` (the collection lock respected: it waits while another
run writes), reports each stage's counts and each file's outcome to the job row as it goes, and finishes the job.
A kill at any point leaves the collection as a killed `offline.py index` does (consistent); the worker, or the next
server start, notices and fails or requeues the job.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from app import jobs
from app.archives import archive_dest
from app.indexer import CollectionBusy, IndexOptions, RunSummary, run_index
from app.models import Job
from app.paths import DataLayout
from app.removal import Target, remove, source_path

log = logging.getLogger(__name__)
REPORT_EVERY_S = 0.5
BUSY_WAIT_S = 2.0


class JobReporter:
    """The job's ProgressListener: stage counts and per-file outcomes, written to its row at most twice a second.

    Paths the indexer reports are named as the user uploaded them: `holiday/beach.jpg` for a file of the upload,
    `photos.zip/img_001.jpg` for an entry of an uploaded zip."""

    def __init__(self, sessions: sessionmaker, job: Job, layout: DataLayout) -> None:
        self.sessions, self.job_id, self.layout = sessions, job.id, layout
        self.message = job.message
        self.stages: dict[str, int] = json.loads(job.stages_json or "{}")
        self.files: dict[str, dict] = {f["name"]: f for f in json.loads(job.files_json or "[]")}
        self.lock = threading.Lock()
        self.last = 0.0
        self.prefixes: list[tuple[str, str]] = []  # (path prefix, the name it stands for)
        self.aliases: dict[str, str] = {}  # a re-indexed item's source file -> its target ('video:<id>')
        self.paths: dict[str, str] = {}  # a reported name -> the file the index run read
        if job.folder:
            folder = (layout.uploads_dir / job.folder).resolve()
            for archive in sorted(folder.rglob("*.zip")):
                name = archive.relative_to(folder).as_posix()
                self.prefixes.append((str(archive_dest(archive, layout.archives_dir)) + "/", name + "/"))
                self.prefixes.append((str(archive) + ":", name + "/"))
            self.prefixes.append((str(folder) + "/", ""))

    def name_of(self, path: str) -> str:
        if path in self.aliases:
            return self.aliases[path]
        for prefix, name in self.prefixes:
            if path.startswith(prefix):
                return name + path[len(prefix):]
        return Path(path).name

    def stage(self, name: str, n: int) -> None:
        with self.lock:
            self.stages[name] = self.stages.get(name, 0) + n if name != "index" else n
        self.flush(force=False)

    def file(self, path: str, status: str, reason: str = "", **extra) -> None:
        name = self.name_of(path)
        reason = jobs.public_text(reason, self.layout)
        self.paths[name] = path
        with self.lock:
            self.files[name] = {"name": name, "status": status, "reason": reason, **extra}
        self.flush()  # a file's outcome is written at once (a cancel right after must not lose it)

    def settle(self) -> None:
        """At the end of a run: an uploaded zip is 'unpacked' (its entries have their own rows); a file the run never
        reported was not reached."""
        with self.lock:
            for f in self.files.values():
                if f["status"] == "waiting":
                    unpacked = f["name"].lower().endswith(".zip")
                    f["status"] = "unpacked" if unpacked else "skipped"
                    f["reason"] = "its entries are listed below" if unpacked else "not reached by the index run"

    def link_items(self, sessions: sessionmaker) -> None:
        """Each added or updated file names the item it became ('video:<id>' or 'image:<hash>'), for the job's page."""
        from sqlalchemy import select

        from app.models import Image, Video

        with sessions() as session, self.lock:
            for name, f in self.files.items():
                path = self.paths.get(name)
                if f["status"] not in ("added", "updated", "unchanged") or path is None:
                    continue
                video = session.scalar(select(Video.video_id).where(Video.path == path))
                image = None if video else session.scalar(select(Image.content_hash).where(Image.path == path))
                if video or image:
                    f["item"] = f"video:{video}" if video else f"image:{image}"

    def note(self, message: str) -> None:
        self.message = jobs.public_text(message, self.layout)
        self.flush()

    def flush(self, force: bool = True) -> None:
        """The live progress file (the job's page reads it while the job runs)."""
        with self.lock:
            now = time.monotonic()
            if not force and now - self.last < REPORT_EVERY_S:
                return
            self.last = now
            data = {"stages": dict(self.stages), "files": list(self.files.values()), "message": self.message}
        jobs.write_progress(self.layout, self.job_id, data)

    def save(self) -> None:
        """Into the job's row, once the index run has let go of the database."""
        self.flush()
        with self.lock:
            stages, files = dict(self.stages), list(self.files.values())
        jobs.report(self.sessions, self.job_id, stages=stages, files=files)


def _wait_for_lock(run, reporter: JobReporter):
    """Run `run()`; while another offline.py holds the collection, wait (the job says so) instead of failing."""
    waiting = False
    while True:
        try:
            return run()
        except CollectionBusy as exc:
            if not waiting:
                reporter.note(f"waiting: {exc}")
                waiting = True
            time.sleep(BUSY_WAIT_S)


def _summary_message(summary: RunSummary, reporter: JobReporter) -> str:
    """What the job's page says when it is done: its files' outcomes and the index, in words (the index run's full
    line, with its command-line advice, is in the job's log)."""
    log.info("%s", summary.line())
    counts: dict[str, int] = {}
    for f in reporter.files.values():
        counts[f["status"]] = counts.get(f["status"], 0) + 1
    order = ("added", "updated", "unchanged", "skipped", "failed", "deleted")
    said = ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
    return f"{said or 'nothing indexed'}; the index holds {summary.index_size:,} vectors ({summary.seconds:.0f} s)"


def run_job(sessions: sessionmaker, layout: DataLayout, job_id: int, options: IndexOptions) -> int:
    """Run a claimed job to its end; the exit status of `offline.py job` (0 done, 1 failed, 2 not runnable)."""
    job = jobs.get(sessions, job_id)
    if job is None or job.status != "running":
        print(f"job {job_id} is {'missing' if job is None else job.status}; only a running job is run")
        return 2
    reporter = JobReporter(sessions, job, layout)
    reporter.message = {"upload": "indexing the uploaded files", "reindex": "indexing again",
                        "delete": "deleting"}.get(job.kind, "running")
    reporter.flush()
    options.listener = reporter
    try:
        message = _run(sessions, layout, job, options, reporter)
    except Exception as exc:  # noqa: BLE001 - whatever stopped it, the job says so (the log has the traceback)
        reporter.save()
        jobs.finish(sessions, job_id, "failed", jobs.public_text(f"{type(exc).__name__}: {exc}", layout))
        log.exception("job %s failed", job_id)
        return 1
    reporter.settle()
    reporter.link_items(sessions)
    reporter.save()
    failed = sum(f["status"] == "failed" for f in reporter.files.values())
    jobs.finish(sessions, job_id, "done", message + (f" ({failed} file(s) failed; retry them from the job's page)"
                                                     if failed else ""))
    return 0


def _run(sessions: sessionmaker, layout: DataLayout, job: Job, options: IndexOptions, reporter: JobReporter) -> str:
    targets = json.loads(job.targets_json or "[]")
    if job.kind == "upload":
        folder = layout.uploads_dir / (job.folder or "")
        paths = [folder / t for t in targets] if targets else [folder]  # a retry names its files
        waiting = [f for f in reporter.files.values() if f["status"] == "waiting"]
        if not waiting and not targets:
            return "nothing to index: every file was refused (see each file's reason)"
        summary = _wait_for_lock(lambda: run_index(layout, paths, options, sessions), reporter)
        return _summary_message(summary, reporter)
    if job.kind == "reindex":
        with sessions() as session:
            paths = [source_path(session, Target.parse(t)) for t in targets]
        reporter.aliases = {str(p.resolve()): t for p, t in zip(paths, targets, strict=True)}
        options.force = True
        summary = _wait_for_lock(lambda: run_index(layout, paths, options, sessions), reporter)
        return _summary_message(summary, reporter)
    return _delete(sessions, layout, targets, options, reporter)


def _delete(sessions: sessionmaker, layout: DataLayout, targets: list[str], options: IndexOptions,
            reporter: JobReporter) -> str:
    """Remove the items under the collection lock, then let an index run with no new paths drop their vectors."""
    from app.indexer import collection_lock

    def remove_all() -> list:
        done = []
        with collection_lock(layout), sessions() as session:
            for text in targets:
                removed = remove(session, layout, Target.parse(text))
                reporter.file(text, "deleted", f"{removed.name}; {len(removed.orphaned)} box(es) kept as orphans",
                              boxes=removed.orphaned)
                done.append(removed)
        return done

    from app.indexer import collection_identity

    with sessions() as session:
        known = collection_identity(session)
    if known is not None and options.model is None:  # the collection's model, even when this empties it
        options.model, options.pretrained = known
    removed = _wait_for_lock(remove_all, reporter)
    reporter.flush()
    orphaned = [box for r in removed for box in r.orphaned]
    summary = _wait_for_lock(lambda: run_index(layout, [], options, sessions), reporter)
    names = ", ".join(r.name for r in removed)
    return (f"deleted {names}; {len(orphaned)} box(es) that named it kept as orphans; "
            f"index {summary.index_size} vectors")
