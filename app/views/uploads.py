"""Uploading to the collection from the browser or a script, and the jobs that index what was uploaded.

    GET  /upload                     the drop zone (limits shown before anything is sent)
    OPTIONS/POST /api/uploads/tus    resumable uploads (tus 1.0: creation, checksum, termination)
    HEAD/PATCH/DELETE /api/uploads/tus/<id>
    POST /api/uploads                finished tus uploads ({"uploads": [ids]}) or multipart `files` -> 202 {"job": id}
    GET  /jobs, /jobs/<id>           the queue and one job's live progress
    GET  /api/jobs, /api/jobs/<id>   the same as JSON; POST /api/jobs/<id>/cancel, /api/jobs/<id>/retry

Every call needs an account whose role upload_roles names (session with CSRF token, or a bearer token).
"""
from __future__ import annotations

import json
import shutil

from flask import Blueprint, Response, current_app, jsonify, render_template, request, url_for
from flask_login import current_user

from app import jobs, services
from app.job_worker import job_worker
from app.jobs import FileResult, JobError
from app.numbers import is_id
from app.upload_intake import intake, new_folder
from app.upload_store import (
    CHECKSUM_ALGORITHMS,
    MAX_CHUNK,
    TUS_EXTENSIONS,
    TUS_VERSION,
    Limits,
    PartialUploads,
    UploadError,
    check_names,
    check_room,
    disk_full,
    parse_metadata,
    safe_relpath,
)
from app.views.auth import require_uploader

bp = Blueprint("uploads", __name__)


def _layout():
    return current_app.extensions["layout"]


def _limits() -> Limits:
    return Limits.from_settings(current_app.extensions["settings"])


def _partials() -> PartialUploads:
    return PartialUploads(_layout(), _limits())


@bp.before_request
def _body_limits():
    """The body limits of this blueprint's two big requests, set before anything (the CSRF check included) reads
    the body: a chunk of a resumable upload, and a multipart upload of whole files."""
    if request.endpoint == "uploads.create_job":
        request.max_content_length = _limits().max_file
    elif request.endpoint == "uploads.tus_patch":
        request.max_content_length = MAX_CHUNK


def _is_admin() -> bool:
    return current_user.is_authenticated and current_user.role == "admin"


@bp.errorhandler(UploadError)
@bp.errorhandler(JobError)
def refused(exc: UploadError | JobError):
    response = jsonify({"error": str(exc), "status": exc.status})
    response.status_code = exc.status
    response.headers["Tus-Resumable"] = TUS_VERSION
    return response


def job_json(job, with_ahead: bool = False, caught_up: bool = False) -> dict:
    """A job as the API and the pages show it (live progress included; how many jobs are before it). A done job's
    items are searchable when it says so: the served index catches up first (once per listing: `caught_up`)."""
    ahead = jobs.ahead_of(services.sessions(), job.id) if with_ahead else None
    if job.status == "done" and not caught_up:
        services.collection().catch_up()
    return jobs.as_json(job, ahead, _layout())


def jobs_json(limit: int = 100) -> list[dict]:
    """The newest jobs as the API and pages show them; the served index catches up once for the whole listing."""
    listing = jobs.listing(services.sessions(), limit)
    if any(j.status == "done" for j in listing):
        services.collection().catch_up()
    return [job_json(j, caught_up=True) for j in listing]


def _tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = TUS_VERSION
    response.headers["Cache-Control"] = "no-store"
    return response


def _number(name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not is_id(raw.strip(), 15):
        raise UploadError(f"{name} must be a whole number of bytes, not {raw[:40]!r}")
    return int(raw)


@bp.get("/upload")
@require_uploader
def page():
    return render_template("upload.html", limits=_limits(), max_chunk=8 * 1024 * 1024,
                           recent=jobs_json(10))


@bp.route("/api/uploads/tus", methods=["OPTIONS"])
def tus_options():
    response = Response(status=204)
    response.headers.update({"Tus-Version": TUS_VERSION, "Tus-Extension": TUS_EXTENSIONS,
                             "Tus-Max-Size": str(_limits().max_file),
                             "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS)})
    return _tus_headers(response)


@bp.post("/api/uploads/tus")
@require_uploader
def tus_create():
    length = _number("Upload-Length")
    if length is None:
        raise UploadError("Upload-Length is missing (deferred lengths are not supported)")
    meta = parse_metadata(request.headers.get("Upload-Metadata", ""))
    name = meta.get("relativePath") or meta.get("filename") or meta.get("name") or ""
    upload_id = _partials().create(current_user.id, length, name)
    response = Response(status=201)
    response.headers["Location"] = url_for("uploads.tus_patch", upload_id=upload_id)
    response.headers["Upload-Offset"] = "0"
    return _tus_headers(response)


@bp.route("/api/uploads/tus/<upload_id>", methods=["HEAD"])
@require_uploader
def tus_head(upload_id: str):
    data = _partials().info(upload_id, current_user.id)
    response = Response(status=200)
    response.headers.update({"Upload-Offset": str(data["offset"]), "Upload-Length": str(data["length"])})
    return _tus_headers(response)


@bp.route("/api/uploads/tus/<upload_id>", methods=["PATCH"])
@require_uploader
def tus_patch(upload_id: str):
    if request.mimetype != "application/offset+octet-stream":
        raise UploadError("a chunk is sent as Content-Type: application/offset+octet-stream", 415)
    offset = _number("Upload-Offset")
    if offset is None:
        raise UploadError("Upload-Offset is missing")
    new_offset = _partials().append(upload_id, current_user.id, offset, request.stream, request.content_length,
                                    request.headers.get("Upload-Checksum"))
    response = Response(status=204)
    response.headers["Upload-Offset"] = str(new_offset)
    return _tus_headers(response)


@bp.route("/api/uploads/tus/<upload_id>", methods=["DELETE"])
@require_uploader
def tus_delete(upload_id: str):
    _partials().delete(upload_id, None if _is_admin() else current_user.id)  # an admin may free anyone's space
    return _tus_headers(Response(status=204))


def _upload_ids() -> list[str]:
    if request.is_json:
        body = request.get_json(silent=True)
        ids = body.get("uploads") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise UploadError('send {"uploads": ["<upload id>", ...]} or multipart files')
        return ids
    return request.form.getlist("uploads")


def _distinct(names: list[str]) -> list[str]:
    """Multipart files sent under one name twice keep both: the second becomes 'name (2).ext' (its content is then
    checked like any other: the same bytes are skipped as a duplicate)."""
    out: list[str] = []
    for name in names:
        stem, dot, ext = name.rpartition(".")
        candidate, n = name, 1
        while candidate in out:
            n += 1
            candidate = f"{stem} ({n}){dot}{ext}"
        out.append(candidate)
    return out


@bp.post("/api/uploads")
@require_uploader
def create_job():
    """Finished resumable uploads, or files sent in this request (multipart field `files`), become one job."""
    limits = _limits()
    layout = _layout()
    ids = _upload_ids()
    storages = [] if ids else request.files.getlist("files")
    if len(ids) + len(storages) > limits.max_files:
        raise UploadError(f"{len(ids) + len(storages):,} files in one upload; the limit is {limits.max_files:,}", 413)
    names = _distinct([safe_relpath(storage.filename or "") for storage in storages])
    check_names(names)
    if storages:
        check_room(layout, limits, request.content_length or 0, "this upload")
    folder = new_folder(layout)
    try:
        files = PartialUploads(layout, limits).take_all(ids, current_user.id, folder[1]) if ids else []
        for name, storage in zip(names, storages, strict=True):
            target = folder[1] / name
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.save(target)
            files.append((name, target))
        job_id = intake(services.sessions(), layout, current_user.id, folder, files, limits)
    except OSError as exc:
        shutil.rmtree(folder[1], ignore_errors=True)
        if disk_full(exc):
            raise UploadError("the server's disk is full; nothing of this upload was kept", 507) from None
        raise
    except UploadError:
        shutil.rmtree(folder[1], ignore_errors=True)  # only files this request sent: finished uploads were put back
        raise
    worker = job_worker(current_app)
    if worker is not None:
        worker.wake()
    job = jobs.get(services.sessions(), job_id)
    body = job_json(job, True)
    body["url"] = url_for("uploads.job_page", job_id=job_id)
    return jsonify(body), 202


@bp.get("/jobs")
@require_uploader
def jobs_page():
    return render_template("jobs.html", jobs=jobs_json())


def _own(job):
    """Annotators cancel and retry their own jobs; admins any."""
    if not _is_admin() and job.user_id != current_user.id:
        raise JobError(f"job {job.id} is someone else's; its owner or an admin may change it", 403)
    return job


def _job_or_404(job_id: int):
    job = jobs.get(services.sessions(), job_id)
    if job is None:
        raise JobError(f"no job {job_id}", 404)
    return job


@bp.get("/jobs/<int:job_id>")
@require_uploader
def job_page(job_id: int):
    job = jobs.get(services.sessions(), job_id)
    if job is None:
        return render_template("error.html", status=404, message=f"There is no job {job_id}."), 404
    return render_template("job.html", job=job_json(job, True))


@bp.get("/api/jobs")
@require_uploader
def jobs_api():
    return jsonify({"jobs": jobs_json()})


@bp.get("/api/jobs/<int:job_id>")
@require_uploader
def job_api(job_id: int):
    return jsonify(job_json(_job_or_404(job_id), True))


@bp.post("/api/jobs/<int:job_id>/cancel")
@require_uploader
def cancel_job(job_id: int):
    _own(_job_or_404(job_id))
    jobs.cancel(services.sessions(), job_id)
    return jsonify(job_json(_job_or_404(job_id)))


@bp.post("/api/jobs/<int:job_id>/discard")
@require_uploader
def discard_job_files(job_id: int):
    """Remove an ended upload job's files that are not in the collection (they failed, or were never reached), so
    they stop taking space; indexed files and zips whose entries were indexed stay."""
    job = _own(_job_or_404(job_id))
    if job.kind != "upload" or job.status not in jobs.FINISHED:
        raise JobError(f"job {job_id} is not an ended upload", 409)
    busy = jobs.busy_with_folder(services.sessions(), job.folder)
    if busy is not None or jobs.progress_path(_layout(), job_id).exists() and jobs._alive(job.pid):
        raise JobError(f"job {busy or job_id} still works on these files; discard them once it has ended", 409)
    from app.upload_intake import discard_unindexed

    removed = discard_unindexed(services.sessions(), _layout(), job.folder or "")
    return jsonify({"job": job_id, "removed": removed})


def _source_name(name: str) -> str:
    """The uploaded file a result row stands for: an entry 'photos.zip/img.jpg' comes from 'photos.zip'."""
    head, sep, _ = name.partition(".zip/")
    return head + ".zip" if sep else name  # (a folder named like a zip keeps its file's own name: see retry_job)


@bp.post("/api/jobs/<int:job_id>/retry")
@require_uploader
def retry_job(job_id: int):
    """A new job for what failed: an upload's failed files (a zip's entry retries its zip), or the same targets."""
    job = _own(_job_or_404(job_id))
    if job.status not in jobs.FINISHED:
        raise JobError(f"job {job_id} is {job.status}; retry it once it has ended", 409)
    files = json.loads(job.files_json or "[]")
    if job.kind == "upload":
        folder = _layout().uploads_dir / (job.folder or "")
        whole = job.status != "done"  # a failed or cancelled job runs again over all its files (indexed: unchanged)
        names = sorted({_source_name(f["name"]) if (folder / _source_name(f["name"])).is_file() else f["name"]
                        for f in files if whole or f["status"] == "failed"})
        names = [n for n in names if (folder / n).is_file()]
        if not names:
            raise JobError("nothing to retry: no failed file of this job is still on the server (refused files are "
                           "not kept; upload them again)", 409)
        jobs.refuse_repeat(services.sessions(), "upload", names, job.folder)
        new_id = jobs.create(services.sessions(), "upload", current_user.id, folder=job.folder, targets=names,
                             files=[FileResult(n, "waiting") for n in names], message=f"retry of job {job_id}")
    else:
        targets = json.loads(job.targets_json or "[]")
        jobs.refuse_repeat(services.sessions(), job.kind, targets)
        new_id = jobs.create(services.sessions(), job.kind, current_user.id, targets=targets,
                             files=[FileResult(t, "waiting") for t in targets], message=f"retry of job {job_id}")
    worker = job_worker(current_app)
    if worker is not None:
        worker.wake()
    body = job_json(jobs.get(services.sessions(), new_id))
    body["url"] = url_for("uploads.job_page", job_id=new_id)
    return jsonify(body), 202
