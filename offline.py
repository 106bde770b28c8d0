#!/usr/bin/env python3
"""Framefinder's offline side: index folders of videos and images into a searchable collection.

    python offline.py index PATH [PATH ...]     ingest videos, images, folders, zips, AI Challenge datasets
    python offline.py evaluate GT_PATH          score retrieval against ground truth (mAP, P@k, R@k)
    python offline.py search "TEXT" [--image F]  search from the terminal (same ranking as the server)
    python offline.py users add NAME --role R   accounts: add | list | remove | passwd | token
    python offline.py demo                      make a sample collection, index it and serve it
    python offline.py job JOB_ID                run a job queued by the server (it starts these itself)
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app.paths import PROJECT_ROOT
from app.settings import help_text
from app.vectors import EXACT_BELOW


def _add_settings_args(p: argparse.ArgumentParser, *names: str, data_dir_help: str | None = None) -> None:
    """Flags of app.settings (default None: not given, so the environment or instance file may say)."""
    p.add_argument("--data-dir", default=None, help=data_dir_help or help_text("data_dir"))
    p.add_argument("--database-url", default=None, help=help_text("database_url"))
    for name in names:
        p.add_argument(f"--{name.replace('_', '-')}", default=None, help=help_text(name))


def _settings(args: argparse.Namespace):
    """The one settings object of this run."""
    from app import milvus_store
    from app.settings import FIELDS, Settings

    settings = Settings.load({f.name: getattr(args, f.name, None) for f in FIELDS})
    milvus_store.configure(settings)  # where vectors go (FAISS files unless Milvus is asked for or already used)
    return settings


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="open_clip model name (default: the one the collection was indexed with, else ViT-B-32)")
    p.add_argument("--pretrained", default=None,
                   help="open_clip pretrained tag (default: the collection's weights, else a LAION-2B tag for the "
                        "model), a path to a local checkpoint file, or 'none' for random weights (no download; "
                        "image search works, text search means nothing)")


def _add_index_args(p: argparse.ArgumentParser, data_dir_help: str | None = None) -> None:
    _add_settings_args(p, "device", "model_config", "asr_language", data_dir_help=data_dir_help)
    _add_model_args(p)
    p.add_argument("--index", dest="index_type", default="auto", choices=["auto", "flat", "ivf", "hnsw", "ivfpq"],
                   help=f"FAISS index type (default: auto: exact below {EXACT_BELOW:,} vectors, IVF-Flat while "
                        f"float32 vectors fit 1 GB, IVF-PQ beyond; nprobe, efSearch and the IVF-PQ re-rank depth "
                        f"are tuned at build time to reach recall@100 0.95)")
    for name in ("vectors", "milvus_uri", "milvus_index"):  # vectors in Milvus (app.milvus_store)
        p.add_argument(f"--{name.replace('_', '-')}", default=None, help=help_text(name))
    p.add_argument("--retrain", action="store_true",
                   help="rebuild and retrain the index now (otherwise new vectors are added to the trained index, "
                        "and it is retrained once the collection has doubled since training)")
    p.add_argument("--keyframe-interval", type=float, default=4.0, metavar="SECONDS",
                   help="one more keyframe per this many seconds of a long shot (default: %(default)s)")
    p.add_argument("--keyframe-size", type=int, default=1280, metavar="PIXELS",
                   help="longest side of saved keyframes (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="CLIP batch size (default: %(default)s)")
    p.add_argument("--prune", action="store_true", help="remove entries whose files are gone")
    p.add_argument("--force", action="store_true",
                   help="ingest the named files again even when unchanged (after changing --keyframe-interval or "
                        "--keyframe-size); frames that carry boxes stay keyframes")
    p.add_argument("--features-model", default=None, metavar="'MODEL PRETRAINED'",
                   help="the open_clip model and weights that made an AI Challenge dataset's clip-features-* files "
                        "(or a MODEL file beside them says so); without it they are computed again, since a "
                        "matching dimension does not prove the model")
    faces = p.add_mutually_exclusive_group()
    faces.add_argument("--faces", dest="faces", action="store_true", default=None,
                       help="find faces in every keyframe and image, embed them and cluster them into people "
                            "(default: on when the face model loads here)")
    faces.add_argument("--no-faces", dest="faces", action="store_false", help="no face pass")
    p.add_argument("--face-model", default="dlib", metavar="SPEC",
                   help="dlib (the weights the face-recognition-models package ships; default), or "
                        "insightface:PATH for an InsightFace model folder such as ~/.insightface/models/buffalo_l")
    p.add_argument("--faces-redo", action="store_true",
                   help="scan every picture for faces again (needed to change --face-model on a collection)")
    p.add_argument("--vocabulary", type=Path, default=None, metavar="FILE",
                   help="action and concept labels for shots and images, one per line (default: UCF101's 101 "
                        "actions and COCO's 80 classes); labelled zero-shot with the CLIP model")
    p.add_argument("--no-concepts", dest="concepts", action="store_false", help="no action/concept labels")
    detector = p.add_mutually_exclusive_group()
    detector.add_argument("--detector", default=None, metavar="NAME",
                          help="torchvision detection model for objects (COCO classes), its weights from torchvision's "
                               "cache or downloaded (default: fasterrcnn_mobilenet_v3_large_fpn, run only when its "
                               "weights are cached already)")
    detector.add_argument("--no-detector", dest="objects", action="store_false", default=None,
                          help="no object detection")
    p.add_argument("--detector-weights", default=None, metavar="PATH",
                   help="the detector's weights: a local file, or 'none' for random weights (reproducible; boxes "
                        "mean nothing); default: torchvision's, from its cache or downloaded")
    p.add_argument("--object-threshold", type=float, default=0.5, metavar="SCORE",
                   help="keep detections scoring at least this (0 to 1; default %(default)s)")
    p.add_argument("--hierarchy", type=Path, default=None, metavar="FILE",
                   help="a YAML or JSON file of label parents (e.g. shirt: top, top: clothing); default: COCO's "
                        "supercategories")
    ocr = p.add_mutually_exclusive_group()
    ocr.add_argument("--ocr", dest="ocr", action="store_true", default=None,
                     help="read on-screen text in every keyframe and image (default: on when the OCR model loads)")
    ocr.add_argument("--no-ocr", dest="ocr", action="store_false", help="no OCR")
    p.add_argument("--ocr-model", default=None, metavar="DIR",
                   help="PP-OCR ONNX models to use instead of RapidOCR's shipped PP-OCRv4: a folder holding det.onnx, "
                        "rec.onnx, keys.txt and optionally cls.onnx")
    asr = p.add_mutually_exclusive_group()
    asr.add_argument("--asr", dest="asr", action="store_true", default=None,
                     help="transcribe the speech of every video (default: on when the speech model loads)")
    asr.add_argument("--no-asr", dest="asr", action="store_false", help="no speech recognition")
    p.add_argument("--asr-model", default=None, metavar="PATH",
                   help="a faster-whisper (CTranslate2) Whisper model folder; default: PocketSphinx's shipped US "
                        "English model (needs `pip install faster-whisper`)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="log each step (staged, committed, published) per video")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offline.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_index = sub.add_parser("index", help="ingest videos, images, folders, zip archives, AI Challenge datasets",
                             description="Ingest media into the collection. Unchanged files are skipped; "
                                         "a bad file is reported and skipped; the exit status is 1 if any failed.")
    p_index.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    _add_index_args(p_index)
    p_index.add_argument("--ray", default=None, metavar="auto|HOST:PORT",
                         help="decode videos, detect shots and choose keyframes as Ray tasks, CLIP in Ray actors "
                              "(one per GPU): auto joins the cluster `ray start` made here (or RAY_ADDRESS), else "
                              "starts one on this machine; HOST:PORT joins that cluster's head")
    p_index.add_argument("--ray-workers", type=int, default=None, metavar="N",
                         help="videos decoded at once on Ray (default: the cluster's CPUs)")
    p_eval = sub.add_parser("evaluate", help="score retrieval against a ground-truth set",
                            description="Scores the collection against ground truth: an Oxford/Paris folder of "
                                        "*_query.txt/_good/_ok/_junk files, a Revisited gnd_*.pkl, a folder of "
                                        "<label>/ image subfolders, a video-moments CSV, or a UCF101-layout folder of "
                                        "<Class>/<clip> videos (video-to-video mAP, zero-shot top-1/top-5). Prints the "
                                        "same numbers as the /evaluation page and, last, one JSON line.")
    p_eval.add_argument("gt_path", type=Path, metavar="GT_PATH",
                        help="a ground-truth file or folder, @annotations for the boxes saved on the "
                             "annotation pages, or @people for identity retrieval over the named people's faces")
    _add_settings_args(p_eval, "device", "model_config", "baseline_weights")
    p_eval.add_argument("--protocol", default=None,
                        help="headline protocol: standard|good|ok|junk (Oxford), easy|medium|hard (Revisited; "
                             "default medium)")
    p_eval.add_argument("--queries-dir", type=Path, default=None,
                        help="folder of query images kept outside the indexed collection")
    p_eval.add_argument("--model", default="clip",
                        help="clip (the served index, default), tv:vgg16 (fc6) or tv:resnet50 (pooled)")
    p_eval.add_argument("--depth", type=int, default=None,
                        help="ranking depth, 1 to 1,000,000 (default: whole collection up to 10,000 items, "
                             "else 1,000)")
    p_search = sub.add_parser("search", help="search the collection from the terminal (the server's search)",
                              description="Ranks the collection for a text and/or an image, with the same code as "
                                          "the web pages, and prints rank, similarity, video and time (or image), "
                                          "and the picture's file. --json prints everything as one JSON object.")
    p_search.add_argument("text", nargs="?", default="",
                          help='what to find, in words: plain words search the picture and the words on screen and '
                               'in speech together; "a phrase", ocr:word (on screen) and asr:word (spoken) are '
                               'required words')
    p_search.add_argument("--picture-weight", default="1", metavar="W",
                          help="how much the picture (CLIP) ranking counts in the fusion, 0 to 10 (default 1)")
    p_search.add_argument("--words-weight", default="1", metavar="W",
                          help="how much the words (OCR, speech) ranking counts, 0 to 10 (default 1)")
    p_search.add_argument("--image", type=Path, default=None, help="an image file to search by")
    p_search.add_argument("--box", default="", metavar="X,Y,W,H", help="a region of --image, in its pixels")
    p_search.add_argument("--k", default="20", help="how many results (1 to 1000, default 20)")
    p_search.add_argument("--video", default=None, help="only this video id")
    p_search.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    _add_settings_args(p_search, "device", "model_config")
    p_users = sub.add_parser("users", help="manage accounts: add, list, remove, passwd, token",
                             description="Accounts for the web pages and the API. Roles: admin (users, "
                                         "evaluations), annotator (own boxes), viewer (search only).")
    p_users.add_argument("action", choices=["add", "list", "remove", "passwd", "token"])
    p_users.add_argument("name", nargs="?")
    p_users.add_argument("--role", default="annotator", choices=["admin", "annotator", "viewer"])
    p_users.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p_users.add_argument("--revoke", action="store_true", help="with token: revoke the token instead")
    _add_settings_args(p_users)
    p_demo = sub.add_parser("demo", help="make a sample collection in demo/, index it and start the server",
                            description="Builds a sample collection (synthetic videos with known cuts, photos, and "
                                        "ground truth for /evaluation) in its own folder, demo/ (or --data-dir), "
                                        "indexes it and serves it. Without network the CLIP weights cannot be "
                                        "fetched: the demo then says so and uses random weights. Remove it with "
                                        "rm -rf demo/.")
    _add_index_args(p_demo, "the demo's folder (default: demo/ in the project)")
    p_demo.add_argument("--host", default=None, help=help_text("host"))
    p_demo.add_argument("--port", default=None, help=help_text("port"))
    p_demo.add_argument("--no-serve", action="store_true", help="index only, do not start the server")
    p_job = sub.add_parser("job", help="run one queued job of the server (an upload, a deletion, a re-index)",
                           description="Runs a job the server's worker has claimed (server.py starts these itself); "
                                       "its progress and per-file results go to the job's page.")
    p_job.add_argument("job_id", type=int, metavar="JOB_ID")
    _add_settings_args(p_job, "device", "model_config", "asr_language")
    return parser


def _options(args: argparse.Namespace, settings):
    from app.indexer import IndexOptions

    named = tuple(args.features_model.split()) if getattr(args, "features_model", None) else None
    if named is not None and len(named) != 2:
        raise ValueError("--features-model takes 'MODEL PRETRAINED' in one argument, e.g. 'ViT-B-32 openai'")
    return IndexOptions(model=args.model, pretrained=args.pretrained, device=settings.device, features_model=named,
                        index_type=args.index_type, interval_s=args.keyframe_interval,
                        keyframe_max_side=args.keyframe_size, batch_size=args.batch_size, prune=args.prune,
                        force=args.force, retrain=args.retrain, faces=args.faces, face_model=args.face_model,
                        faces_redo=args.faces_redo, concepts=args.concepts, vocabulary=args.vocabulary,
                        objects=args.objects, detector=args.detector, detector_weights=args.detector_weights,
                        object_threshold=args.object_threshold, hierarchy=args.hierarchy,
                        ocr=args.ocr, ocr_model=args.ocr_model, asr=args.asr, asr_model=args.asr_model,
                        asr_language=settings.asr_language, progress=False if args.no_progress else None,
                        ray=getattr(args, "ray", None),
                        ray_workers=_positive(getattr(args, "ray_workers", None), getattr(args, "ray", None)),
                        model_config=settings.model_config)


def _positive(value: int | None, ray: str | None = None) -> int | None:
    if value is not None and not 1 <= value <= 10_000:
        raise ValueError(f"--ray-workers takes 1 to 10000, not {value}")
    if ray is not None and not ray.strip():
        raise ValueError("--ray takes auto or HOST:PORT of a Ray cluster's head, not an empty value")
    if value is not None and not ray:
        raise ValueError("--ray-workers counts videos decoded at once on Ray: give --ray auto or --ray HOST:PORT too")
    return value


def _report(summary) -> int:
    for problem in summary.skipped:
        print(f"skipped: {problem.name}: {problem.reason}", file=sys.stderr)
    for problem in summary.failed:
        print(f"FAILED: {problem.name}: {problem.reason}", file=sys.stderr)
    print(summary.line())
    return 1 if summary.failed else 0


def cmd_index(args: argparse.Namespace, paths: list[Path]) -> int:
    from app.db import open_database
    from app.encoders import register_model_configs
    from app.indexer import run_index

    settings = _settings(args)
    register_model_configs(settings.model_config)
    layout = settings.layout
    layout.ensure()
    from app.milvus_store import preflight

    preflight(layout.index_dir)  # vectors in Milvus: unreachable is told before any work
    return _report(run_index(layout, paths, _options(args, settings),
                             open_database(settings.database_url, layout.data_dir)))


def cmd_job(args: argparse.Namespace) -> int:
    from app.db import open_database
    from app.encoders import register_model_configs
    from app.indexer import IndexOptions
    from app.job_run import run_job

    settings = _settings(args)
    register_model_configs(settings.model_config)
    layout = settings.layout
    sessions = open_database(settings.database_url, layout.data_dir)
    return run_job(sessions, layout, args.job_id, IndexOptions(device=settings.device, progress=False,
                                                               asr_language=settings.asr_language))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from app import eval_runs, evaluation, groundtruth
    from app.collection import Collection
    from app.db import open_database
    from app.encoders import encoder_for_index, register_model_configs

    settings = _settings(args)
    register_model_configs(settings.model_config)
    layout = settings.layout
    sessions = open_database(settings.database_url, layout.data_dir)
    from app import face_eval

    if str(args.gt_path) == face_eval.GT_NAME:  # identity retrieval over the faces named on the People page
        try:
            run_id, result = face_eval.execute(sessions, layout)
        except face_eval.NoIdentityGroundTruth as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("\n".join(face_eval.format_lines(result)))
        print(f"run {run_id} saved; protocol: {face_eval.PROTOCOL}")
        print(face_eval.json_line(result, run_id))
        return 0
    snap = Collection(layout, sessions).snapshot()
    if snap is None:
        print("error: the collection has no index yet: run `python offline.py index PATH` first", file=sys.stderr)
        return 2
    meta = snap.bundle.meta
    if groundtruth.is_ucf101_layout(args.gt_path):  # <Class>/<clip>.avi: retrieval mAP, zero-shot top-1/top-5
        from app import ucf_eval

        if args.model not in ("clip", meta.get("model")):
            print(f"error: a UCF101-layout folder is scored with the collection's own CLIP vectors "
                  f"({meta.get('model')}); leave out --model {args.model}", file=sys.stderr)
            return 2
        try:
            gt = groundtruth.load(args.gt_path)
            run_id, ucf = ucf_eval.execute(sessions, layout, gt, lambda: encoder_for_index(meta, settings.device))
        except groundtruth.GroundTruthError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("\n".join(ucf_eval.format_lines(ucf, gt)))
        print(f"run {run_id} saved; protocol: {ucf_eval.PROTOCOL}")
        print(ucf_eval.json_line(ucf, gt, run_id))
        return 0
    try:
        if str(args.gt_path) == groundtruth.ANNOTATIONS_SET:
            from app.gt_sets import annotations_ground_truth

            gt = annotations_ground_truth(sessions, layout)
        else:
            gt = groundtruth.load(args.gt_path, allow_pickle=True)
        config = eval_runs.configuration(snap, args.model, settings.baseline_weights)
        config.depth = evaluation.checked_depth(args.depth)  # before the run is stored: a bad flag is no run
        run_id, result = eval_runs.execute(
            layout, sessions, snap, gt, config, lambda: encoder_for_index(meta, settings.device),
            protocol=args.protocol, queries_dir=args.queries_dir, baseline_weights=settings.baseline_weights,
            device=settings.device)
    except (groundtruth.GroundTruthError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(eval_runs.describe(result))
    print(eval_runs.format_table(result.summary, result.gt_format))
    print(f"run {run_id} saved; headline protocol: {result.protocol}")
    print(result.json_line())
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from app.db import open_database
    from app.search import QueryError, parse_k, parse_weight
    from app.terminal_search import TerminalQuery, render, run

    settings = _settings(args)
    try:
        query = TerminalQuery(text=args.text.strip(), image=args.image, box=args.box, k=parse_k(args.k),
                              video=args.video, picture_weight=parse_weight(args.picture_weight, "--picture-weight"),
                              words_weight=parse_weight(args.words_weight, "--words-weight"))
        outcome, collection = run(settings, query, open_database(settings.database_url, settings.layout.data_dir))
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(outcome, collection, args.json))
    return 0


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the passwords differ")
    return first


def cmd_users(args: argparse.Namespace) -> int:
    from app import accounts
    from app.db import open_database

    settings = _settings(args)
    layout = settings.layout
    layout.ensure()
    sessions = open_database(settings.database_url, layout.data_dir)
    with sessions() as session:
        if args.action == "list":
            for user in accounts.listing(session):
                print(f"{user.name}\t{user.role}\ttoken {'set' if user.token_hash else 'none'}\t"
                      f"created {user.created_at:%Y-%m-%d}")
            return 0
        if not args.name:
            raise ValueError(f"users {args.action} needs a NAME")
        if args.action == "add":
            accounts.add(session, args.name, _password(args), args.role)
            print(f"added {args.name} ({args.role})")
        elif args.action == "remove":
            accounts.remove(session, args.name)
            print(f"removed {args.name}")
        elif args.action == "passwd":
            accounts.set_password(session, args.name, _password(args))
            print(f"password of {args.name} changed")
        elif args.revoke:
            accounts.revoke_token(session, args.name)
            print(f"token of {args.name} revoked")
        else:
            print(accounts.issue_token(session, args.name))
    return 0


DEMO_DIR = PROJECT_ROOT / "demo"


def _demo_account(settings) -> None:
    """An admin account for the demo only (evaluations and annotation need one), with a random password
    shown once here and stored only as a hash; a demo that already has accounts is left alone."""

    from app import accounts
    from app.db import open_database

    layout = settings.layout
    with open_database(settings.database_url, layout.data_dir)() as session:
        if accounts.listing(session):
            print(f"Demo accounts exist already: `.venv/bin/python offline.py users passwd demo --data-dir "
                  f"{layout.data_dir}` sets a new password for demo.")
            return
        password = accounts.random_password("demo")
        accounts.add(session, "demo", password, "admin")
    print(f"Log in as demo with the password {password} to run evaluations and draw boxes "
          f"(shown once; `.venv/bin/python offline.py users passwd demo --data-dir {layout.data_dir}` sets another).")


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo keeps to its own folder (demo/ unless --data-dir), so the everyday commands, which use
    static/ and instance/, start from an empty collection of the user's own."""
    from app.encoders import DEFAULT_MODEL, ClipEncoder, WeightsUnavailable, register_model_configs
    from app.sample import build_sample_collection, write_demo_ground_truth

    args.data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else str(DEMO_DIR)
    settings = _settings(args)
    register_model_configs(settings.model_config)
    layout = settings.layout
    sample = build_sample_collection(layout.data_dir / "sample")
    write_demo_ground_truth(layout.groundtruth_dir)
    args.model = args.model or DEFAULT_MODEL
    if args.pretrained is None:
        try:
            ClipEncoder(args.model, args.pretrained, settings.device)
        except WeightsUnavailable as exc:
            print(f"{exc}\nDemo only: continuing with random weights (--pretrained none); "
                  f"text search will not be meaningful, image search still is.", file=sys.stderr)
            args.pretrained = "none"
    status = cmd_index(args, [sample])
    _demo_account(settings)
    print(f"The demo collection is in {layout.data_dir} (its own folder: `offline.py index` and `server.py` "
          f"without --data-dir use static/ and instance/). Stop the server with Ctrl+C; remove the demo with "
          f"`rm -rf {layout.data_dir}`; serve it again with `.venv/bin/python server.py --data-dir {layout.data_dir}`.")
    if args.no_serve:
        return status
    import server

    return server.serve(settings)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from app.asr import AsrUnavailable
    from app.encoders import WeightsUnavailable
    from app.face_ingest import FaceModelMismatch
    from app.face_model import FaceModelUnavailable
    from app.indexer import CollectionBusy, ModelMismatch
    from app.objects import DetectorUnavailable
    from app.ocr import OcrUnavailable
    from app.ray_ingest import RayUnavailable

    try:
        if args.command == "index":
            return cmd_index(args, args.paths)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "users":
            return cmd_users(args)
        if args.command == "search":
            return cmd_search(args)
        if args.command == "job":
            return cmd_job(args)
        return cmd_demo(args)
    except (WeightsUnavailable, ModelMismatch, CollectionBusy, FaceModelUnavailable, FaceModelMismatch,
            DetectorUnavailable, OcrUnavailable, AsrUnavailable, RayUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a broken data dir gets a sentence; anything else re-raises
        from app.startup import explain

        try:
            settings = _settings(args)
        except ValueError:
            raise exc from None
        sentence = explain(exc, settings)
        if sentence is None:
            raise
        print(f"error: {sentence}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
