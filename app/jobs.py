"""The job queue, kept in the catalogue: uploads to ingest, items to delete, items to index again.

A job is queued by a page or the API, claimed by the server's worker (app.job_worker), run by an
`offline.py job ID` process that reports its stages and per-file results here (app.job_run), and
finished by that process or, when the process dies, by the worker. Because the queue is rows, it
survives a server restart: `recover` requeues a job whose process is gone (the ingest resumes
where it stopped) and fails it after MAX_ATTEMPTS.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.models import Job
from app.paths import DataLayout

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
KINDS = ("upload", "delete", "reindex")
MAX_ATTEMPTS = 3
RESUMED = "the server stopped during this job; it was queued again and resumes where it stopped"


@dataclass
class FileResult:
    """What happened to one uploaded file (or one item of a delete/reindex job)."""

    name: str
    status: str  # waiting | added | updated | unchanged | skipped | failed | deleted
    reason: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "reason": self.reason}


def create(sessions: sessionmaker, kind: str, user_id: int | None, *, folder: str | None = None,
           targets: list[str] | None = None, files: list[FileResult] | None = None, status: str = "queued",
           message: str = "") -> int:
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    with sessions.begin() as session:
        job = Job(kind=kind, user_id=user_id, folder=folder, targets_json=json.dumps(targets or []),
                  files_json=json.dumps([f.as_dict() for f in files or []]), status=status, message=message,
                  finished_at=datetime.now(UTC) if status in FINISHED else None)
        session.add(job)
        session.flush()
        return job.id


def claim_next(sessions: sessionmaker) -> Job | None:
    """The oldest queued job, marked running; an UPDATE guarded by its status, so two workers never take one."""
    with sessions() as session:
        for job_id in session.scalars(select(Job.id).where(Job.status == "queued").order_by(Job.id).limit(5)):
            taken = session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
                status="running", started_at=datetime.now(UTC), attempts=Job.attempts + 1))
            session.commit()
            if taken.rowcount == 1:
                job = session.get(Job, job_id)
                session.expunge(job)
                return job
    return None


def set_pid(sessions: sessionmaker, job_id: int, pid: int | None) -> None:
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(pid=pid))


def report(sessions: sessionmaker, job_id: int, stages: dict | None = None, files: list[dict] | None = None,
           message: str | None = None) -> None:
    """Progress from the running process; a job cancelled meanwhile keeps its status."""
    values: dict = {}
    if stages is not None:
        values["stages_json"] = json.dumps(stages)
    if files is not None:
        values["files_json"] = json.dumps(files)
    if message is not None:
        values["message"] = message
    if values:
        with sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))


def finish(sessions: sessionmaker, job_id: int, status: str, message: str) -> bool:
    """Running -> done/failed; False when the job had left 'running' already (cancelled)."""
    assert status in FINISHED
    with sessions.begin() as session:
        done = session.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(
            status=status, message=message, finished_at=datetime.now(UTC), pid=None))
        return done.rowcount == 1


class JobError(ValueError):
    """A request about a job that cannot be done (the message says why); pages answer it with a 4xx."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def cancel(sessions: sessionmaker, job_id: int) -> Job:
    """Queued or running -> cancelled; the worker stops a running job's process. Returns the job as it was."""
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobError(f"no job {job_id}", 404)
        if job.status in FINISHED:
            raise JobError(f"job {job_id} is {job.status} already", 409)
        was = Job(id=job.id, status=job.status, pid=job.pid, kind=job.kind)
        job.status, job.finished_at = "cancelled", datetime.now(UTC)
        job.message = "cancelled by a user" + (
            "; what it had indexed before the cancel stays in the collection" if was.status == "running" else "")
        return was


def refuse_repeat(sessions: sessionmaker, kind: str, targets: list[str], folder: str | None = None) -> None:
    """A job that would do what a queued or running one does already is refused (409), so retries and re-index
    requests cannot pile up work."""
    wanted = json.dumps(targets)
    with sessions() as session:
        same = session.scalar(select(Job.id).where(Job.kind == kind, Job.status.in_(("queued", "running")),
                                                   Job.targets_json == wanted, Job.folder == folder
                                                   if folder is not None else Job.folder.is_(None)).limit(1))
    if same is not None:
        raise JobError(f"job {same} does this already (it is queued or running)", 409)


def busy_with_folder(sessions: sessionmaker, folder: str | None) -> int | None:
    """A queued or running job over this upload folder (its files must stay until it ends)."""
    if not folder:
        return None
    with sessions() as session:
        return session.scalar(select(Job.id).where(Job.folder == folder, Job.status.in_(("queued", "running")))
                              .limit(1))


def get(sessions: sessionmaker, job_id: int) -> Job | None:
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is not None:
            session.expunge(job)
        return job


def listing(sessions: sessionmaker, limit: int = 100) -> list[Job]:
    with sessions() as session:
        rows = list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))
        session.expunge_all()
        return rows


def ahead_of(sessions: sessionmaker, job_id: int) -> int:
    """How many jobs run or wait before this one."""
    with sessions() as session:
        return len(session.scalars(select(Job.id).where(Job.id < job_id, Job.status.in_(("queued", "running"))))
                   .all())


def _alive(pid: int | None) -> bool:
    """Whether an `offline.py job` process of this pid still runs (a reused pid of another program is not)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return b"offline.py" in cmdline and b"job" in cmdline


def recover(session: Session) -> tuple[int, int, list[int]]:
    """At server start-up: a running job whose process is gone is queued again (its ingest resumes), or failed after
    MAX_ATTEMPTS; one whose process still runs is left to it (the worker watches it). Returns (requeued, failed,
    ids still running); the caller commits."""
    requeued, failed, live = 0, 0, []
    for job in session.scalars(select(Job).where(Job.status == "running")):
        if _alive(job.pid):
            live.append(job.id)
        elif job.attempts >= MAX_ATTEMPTS:
            job.status, job.finished_at, job.pid = "failed", datetime.now(UTC), None
            job.message = f"the server stopped during this job {job.attempts} times; it was given up"
            failed += 1
        else:
            job.status, job.message, job.pid = "queued", RESUMED, None
            requeued += 1
    return requeued, failed, live


def public_text(text: str, layout: DataLayout) -> str:
    """A message as every uploader may read it: no server paths (the data dir's become relative), no SQL, one line.
    The job's log (instance/jobs/<id>.log) keeps the whole story for the operator."""
    text = str(text).split("\n[SQL:", 1)[0].split("\n(Background on this error", 1)[0]
    for root in sorted({str(layout.data_dir), str(layout.data_dir.resolve()), str(layout.instance_dir)}, key=len,
                       reverse=True):
        text = text.replace(root + "/", "").replace(root, "the data folder")
    return " ".join(text.split())[:1000]


def progress_path(layout: DataLayout, job_id: int) -> Path:
    """Where a running job's process keeps its live progress. A file, not the job's row: on SQLite the ingest holds
    the write lock for long stretches, and progress must never wait for it (nor make it wait)."""
    return layout.instance_dir / "jobs" / f"{job_id}.progress.json"


def write_progress(layout: DataLayout, job_id: int, data: dict) -> None:
    path = progress_path(layout, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_progress(layout: DataLayout, job_id: int) -> dict | None:
    try:
        return json.loads(progress_path(layout, job_id).read_text())
    except (OSError, ValueError):
        return None


def as_json(job: Job, ahead: int | None = None, layout: DataLayout | None = None) -> dict:
    """The API's view of a job (GET /api/jobs/<id>); a running job's live progress comes from its process's file."""
    live = read_progress(layout, job.id) if layout is not None and job.status == "running" else None
    if live:
        job = Job(**{c.name: getattr(job, c.name) for c in Job.__table__.columns})
        job.stages_json = json.dumps(live.get("stages", {}))
        job.files_json = json.dumps(live.get("files", []))
        job.message = live.get("message") or job.message
    files = json.loads(job.files_json or "[]")
    counts: dict[str, int] = {}
    for f in files:
        counts[f["status"]] = counts.get(f["status"], 0) + 1
    data = {"id": job.id, "job": job.id, "kind": job.kind, "status": job.status, "message": job.message,
            "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at), "attempts": job.attempts,
            "stages": json.loads(job.stages_json or "{}"), "files": files, "counts": counts,
            "targets": json.loads(job.targets_json or "[]"),
            "retryable": job.status in ("failed", "cancelled") or bool(counts.get("failed")),
            "progress": {"done": sum(f["status"] not in ("waiting", "unpacked") for f in files),
                         "files": sum(f["status"] != "unpacked" for f in files)}}
    if ahead is not None:
        data["ahead"] = ahead
    return data


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:  # SQLite gives naive datetimes back
        when = when.replace(tzinfo=UTC)
    return when.isoformat(timespec="seconds")
