"""The server's job worker: one thread that runs queued jobs one at a time, each in an `offline.py job ID` process.

A process of its own keeps the server answering while a job decodes and encodes, lets a cancel stop it outright
(the ingest is crash-safe, so a killed job leaves the collection consistent), and lets a job finish even when the
server is stopped mid-way (it runs in its own session). When the server starts, jobs left running are recovered
(app.jobs.recover): requeued when their process is gone, watched until it ends when it is not.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from app import jobs
from app.paths import PROJECT_ROOT, DataLayout
from app.settings import Settings

log = logging.getLogger("framefinder.jobs")
POLL_S = 0.5
STOP_GRACE_S = 10.0


class JobWorker:
    def __init__(self, settings: Settings, sessions: sessionmaker, layout: DataLayout) -> None:
        self.settings, self.sessions, self.layout = settings, sessions, layout
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.log_dir = layout.instance_dir / "jobs"
        self.adopted: set[int] = set()  # jobs of an earlier server still running: the next waits for them

    def start(self) -> tuple[int, int]:
        """Recover what an earlier server left, then start the thread; returns (requeued, failed)."""
        with self.sessions.begin() as session:
            requeued, failed, live = jobs.recover(session)
        self.adopted = set(live)
        for job_id in live:
            threading.Thread(target=self._adopt, args=(job_id,), daemon=True, name=f"job-{job_id}").start()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="job-worker")
        self.thread.start()
        return requeued, failed

    def wake(self) -> None:
        self.wakeup.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()
        if self.thread is not None:
            self.thread.join(STOP_GRACE_S)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            if self.adopted:  # one job at a time: an earlier server's job still runs
                self.wakeup.wait(2.0)
                self.wakeup.clear()
                continue
            try:
                job = jobs.claim_next(self.sessions)
            except Exception:  # noqa: BLE001 - a database hiccup must not end the worker
                log.exception("could not read the job queue")
                job = None
            if job is None:
                self.wakeup.wait(2.0)
                self.wakeup.clear()
                continue
            try:
                self._run(job.id)
            except Exception as exc:  # noqa: BLE001 - the job fails, the worker goes on
                log.exception("job %s", job.id)
                jobs.finish(self.sessions, job.id, "failed", f"the server could not run this job: {exc}")

    def command(self, job_id: int) -> list[str]:
        s = self.settings
        cmd = [sys.executable, str(PROJECT_ROOT / "offline.py"), "job", str(job_id),
               "--data-dir", str(self.layout.data_dir), "--database-url", str(s.database_url), "--device", s.device]
        if s.model_config:
            cmd += ["--model-config", str(s.model_config)]
        return cmd

    def _run(self, job_id: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{job_id}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(self.command(job_id), stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        jobs.set_pid(self.sessions, job_id, proc.pid)
        log.info("job %s: started offline.py job (pid %s)", job_id, proc.pid)
        cancelled = False
        while proc.poll() is None:
            if self._cancelled(job_id):
                _stop(proc.pid)
                proc.wait()
                cancelled = True
                break
            time.sleep(POLL_S)
        live = jobs.read_progress(self.layout, job_id)
        if live and (cancelled or jobs.get(self.sessions, job_id).status == "running"):
            files = live.get("files", [])  # what the process reported before it stopped or died
            for f in files:
                if cancelled and f["status"] == "waiting":
                    f["status"], f["reason"] = "cancelled", "the job was cancelled before this file was done"
            jobs.report(self.sessions, job_id, stages=live.get("stages"), files=files)
        if jobs.finish(self.sessions, job_id, "failed", f"the indexing process stopped (exit status {proc.returncode})"
                                                       f": {jobs.public_text(_tail(log_path), self.layout)}"):
            log.warning("job %s: process ended without finishing the job (exit %s)", job_id, proc.returncode)

    def _cancelled(self, job_id: int) -> bool:
        job = jobs.get(self.sessions, job_id)
        return job is None or job.status == "cancelled"

    def _adopt(self, job_id: int) -> None:
        """A job whose process outlived the server that started it: watched until it ends; requeued if it ended
        without finishing the job."""
        try:
            while True:
                job = jobs.get(self.sessions, job_id)
                if job is None or job.status != "running":
                    if job is not None and job.status == "cancelled" and job.pid:
                        _stop(job.pid)
                    return
                if not jobs._alive(job.pid):
                    with self.sessions.begin() as session:
                        jobs.recover(session)
                    return
                time.sleep(POLL_S)
        finally:
            self.adopted.discard(job_id)
            self.wake()


def _stop(pid: int) -> None:
    """SIGTERM to the job's process group, SIGKILL if it is still there after STOP_GRACE_S."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return " | ".join(line.strip() for line in text[-lines:])[-600:] or "no output"


def job_worker(app) -> JobWorker | None:
    return app.extensions.get("job_worker")


def start_job_worker(app) -> JobWorker:
    """For server.py (and tests that want jobs run): one worker per app."""
    worker = JobWorker(app.extensions["settings"], app.extensions["sessions"], app.extensions["layout"])
    app.extensions["job_worker"] = worker
    requeued, failed = worker.start()
    if requeued or failed:
        print(f"note: jobs of an earlier server: {requeued} resumed, {failed} given up", file=sys.stderr)
    return worker
