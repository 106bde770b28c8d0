"""/evaluation: choose a ground-truth set and a configuration, run, read the numbers, inspect failures.

A run executes in a background thread (one at a time) through the same
app.eval_runs.execute as `offline.py evaluate`; the page polls its progress.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, url_for

from app import eval_runs, face_eval, gt_sets, services, ucf_eval, weights_name
from app.baselines import BASELINES
from app.groundtruth import ANNOTATIONS_SET, PROTOCOL_HELP, PROTOCOLS, GroundTruthError, is_ucf101_layout
from app.metrics import RECALL_POINTS
from app.numbers import is_id
from app.views.auth import require_role
from app.views.query import item_url

bp = Blueprint("evaluation", __name__, url_prefix="/evaluation")


class _Jobs:
    """Runs in flight in this process and their progress (done, total)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluation")
        self.progress: dict[int, tuple[int, int]] = {}
        self.cancelled: set[int] = set()
        self.started: set[int] = set()
        self.lock = threading.Lock()

    def update(self, run_id: int, done: int, total: int) -> None:
        """Called after every query: the place where a cancel takes effect."""
        with self.lock:
            self.progress[run_id] = (done, total)
            if run_id in self.cancelled:
                raise eval_runs.Cancelled()


def _jobs() -> _Jobs:
    ext = current_app.extensions
    if "evaluation_jobs" not in ext:
        ext["evaluation_jobs"] = _Jobs()
    return ext["evaluation_jobs"]


def _root():
    return current_app.extensions["layout"].groundtruth_dir


def _configurations() -> list[tuple[str, str]]:
    snap = services.collection().snapshot()
    clip = "clip: no index yet"
    if snap is not None:
        meta = snap.bundle.meta
        clip = (f"{meta.get('model')} [{weights_name(meta.get('pretrained'))}] · "
                f"{meta.get('params', {}).get('type', 'flat')} index")
    return [("clip", clip)] + [(b, f"{b} baseline (image queries only, exact search)") for b in BASELINES]


def _page(error: str | None = None, status: int = 200):
    runs = eval_runs.listing(services.sessions())
    available = gt_sets.available(_root())
    ucf_sets = {name for name, path in available.items() if is_ucf101_layout(path)}
    return render_template("evaluation.html", sets=[ANNOTATIONS_SET, face_eval.GT_NAME, *available], ucf_sets=ucf_sets,
                           face_set=face_eval.GT_NAME, face_label=face_eval.GT_LABEL, configs=_configurations(),
                           protocols=PROTOCOLS, protocol_help=PROTOCOL_HELP, runs=runs, error=error), status


@bp.get("")
def index():
    return _page()


@bp.post("")
@require_role("admin")
def start():
    """Start a run from a chosen set or an upload; the run page then shows its progress."""
    app = current_app._get_current_object()
    upload = request.files.get("gt_file")
    if request.form.get("gt") == face_eval.GT_NAME and not (upload is not None and upload.filename):
        return _start_identity(app)
    snap = services.collection().snapshot()
    if snap is None:
        return _page("The collection has no index yet: run `python offline.py index PATH` first.", 409)
    try:
        upload = request.files.get("gt_file")
        name = request.form.get("gt", "")
        if upload is not None and upload.filename:
            name = gt_sets.save_upload(_root(), upload.filename, upload.read())
        if not name:
            raise GroundTruthError("choose a ground-truth set or upload one")
        gt = gt_sets.load_named(_root(), name, services.sessions(), current_app.extensions["layout"])
        if gt.format == ucf_eval.GT_FORMAT:
            return _start_ucf(app, gt)
        model = request.form.get("model", "clip")
        if model != "clip" and model not in BASELINES:
            raise GroundTruthError(f"unknown configuration '{model}'")
        config = eval_runs.configuration(snap, model, app.config.get("BASELINE_WEIGHTS"))
        protocol = request.form.get("protocol") or gt.protocols[0]
        if protocol not in gt.protocols:
            protocol = gt.protocols[0]
        if gt.format == "moments" and model != "clip":
            raise GroundTruthError(f"{model} answers image queries only; '{name}' holds text queries")
    except (GroundTruthError, ValueError) as exc:
        return _page(str(exc), 400)
    sessions = services.sessions()
    run_id = eval_runs.start(sessions, gt, config, protocol)
    return _submit(app, run_id, len(gt.queries), lambda progress: eval_runs.execute(
        app.extensions["layout"], sessions, snap, gt, config, lambda: services.searcher().encoder, protocol=protocol,
        baseline_weights=app.config.get("BASELINE_WEIGHTS"), device=app.config.get("DEVICE", "auto"),
        progress=progress, run_id=run_id))


def _submit(app, run_id: int, total: int, execute, mark_cancelled: bool = False):
    """Run an evaluation in the one background worker (`execute(progress)`), then show its page, which polls the
    progress. `mark_cancelled`: the run's own code does not record a cancel, so it is recorded here."""
    jobs = _jobs()
    jobs.update(run_id, 0, total)

    def work() -> None:
        with app.app_context():
            with jobs.lock:
                if run_id in jobs.cancelled:  # cancelled while it waited for the run ahead of it
                    return
                jobs.started.add(run_id)
            try:
                execute(lambda d, t: jobs.update(run_id, d, t))
            except eval_runs.Cancelled:
                if mark_cancelled:
                    eval_runs.cancel(app.extensions["sessions"], run_id)
                app.logger.info("evaluation run %s cancelled", run_id)
            except Exception:  # noqa: BLE001 - stored on the run and shown on its page
                app.logger.exception("evaluation run %s failed", run_id)

    jobs.pool.submit(work)
    return redirect(url_for("evaluation.run_page", run_id=run_id), 303)


def _start_identity(app):
    """Identity retrieval over the named people's faces (app.face_eval): no CLIP index, model or protocol."""
    sessions = services.sessions()
    try:
        with sessions() as session:
            n_queries = face_eval.check_ground_truth(session)
        run_id = face_eval.start(sessions)
    except face_eval.NoIdentityGroundTruth as exc:
        return _page(str(exc), 400)
    return _submit(app, run_id, n_queries, lambda progress: face_eval.execute(
        sessions, app.extensions["layout"], progress, run_id), mark_cancelled=True)


def _start_ucf(app, gt):
    """A UCF101-layout video folder (app.ucf_eval): retrieval mAP and zero-shot accuracy over the indexed clips,
    with the collection's own vectors and text encoder; configuration and protocol do not apply."""
    sessions = services.sessions()
    with sessions() as session:
        ucf_eval.check_indexed(session, gt)  # clips not indexed: a 400 here, not a failed run
    run_id = ucf_eval.start(sessions, gt)
    return _submit(app, run_id, len(gt.queries), lambda progress: ucf_eval.execute(
        sessions, app.extensions["layout"], gt, lambda: services.searcher().encoder, progress, run_id))


def _columns(run: dict) -> list[str]:
    if run["gt_format"] == ucf_eval.GT_FORMAT:
        return ucf_eval.COLUMNS
    return face_eval.COLUMNS if run["gt_format"] == face_eval.GT_FORMAT else eval_runs.summary_columns(run["gt_format"])


def _run_or_404(run_id: int) -> dict:
    run = eval_runs.load(services.sessions(), run_id)
    if run is None:
        abort(404, description=f"no evaluation run {run_id}")
    return run


@bp.post("/runs/<int:run_id>/cancel")
@require_role("admin")
def cancel(run_id: int):
    """Stop a running evaluation after its current query; a queued one never starts."""
    run = _run_or_404(run_id)
    if run["status"] == "running":
        jobs = _jobs()
        with jobs.lock:
            jobs.cancelled.add(run_id)
            running_here = run_id in jobs.started
        if not running_here:  # queued, or left over from another server process: it never runs
            eval_runs.cancel(services.sessions(), run_id)
    return redirect(url_for("evaluation.run_page", run_id=run_id), 303)


@bp.get("/runs/<int:run_id>/progress")
def progress(run_id: int):
    run = _run_or_404(run_id)
    done, total = _jobs().progress.get(run_id, (run["n_queries"], run["n_queries"]))
    return jsonify({"status": run["status"], "done": done, "total": total, "message": run["message"]})


@bp.get("/runs/<int:run_id>.json")
def run_json(run_id: int):
    run = _run_or_404(run_id)
    run["created_at"] = run["created_at"].isoformat()
    return jsonify(run)


@bp.get("/runs/<int:run_id>")
def run_page(run_id: int):
    run = _run_or_404(run_id)
    curves = [(p, row.get("pr_curve") or []) for p, row in run["summary"].items() if p != "junk"]
    return render_template("eval_run.html", run=run, columns=_columns(run), faces=face_eval.GT_FORMAT,
                           ucf=ucf_eval.GT_FORMAT,
                           protocol_help=PROTOCOL_HELP, recall_points=RECALL_POINTS.tolist(), curves=curves)


@bp.get("/runs/<int:run_id>/queries/<int:i>")
def query_page(run_id: int, i: int):
    run = _run_or_404(run_id)
    if not 0 <= i < len(run["queries"]):
        abort(404, description=f"run {run_id} has no query {i}")
    if run["gt_format"] == face_eval.GT_FORMAT:
        abort(404, description=f"run {run_id} scores named people, not queries: its page lists each person's AP")
    if run["gt_format"] == ucf_eval.GT_FORMAT:
        abort(404, description=f"run {run_id} scores video clips: its page lists each class's AP and accuracy")
    q = run["queries"][i]
    return render_template("eval_query.html", run=run, q=q, i=i, item_url=item_url)


@bp.get("/compare")
def compare():
    raw_a, raw_b = request.args.get("a", ""), request.args.get("b", "")
    if not (is_id(raw_a) and is_id(raw_b)):
        abort(400, description="choose two runs to compare (a and b)")
    a_id, b_id = int(raw_a), int(raw_b)
    a, b = _run_or_404(a_id), _run_or_404(b_id)
    if a["gt_name"] != b["gt_name"]:
        abort(400, description=f"runs {a_id} and {b_id} used different ground truth ({a['gt_name']} vs "
                               f"{b['gt_name']}); compare runs of one set")
    return render_template("eval_compare.html", a=a, b=b, rows=eval_runs.compare(a, b),
                           columns=_columns(a))


@bp.app_template_filter("metric")
def metric_filter(value) -> str:
    return "–" if value is None else f"{value:.4f}"


