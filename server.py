#!/usr/bin/env python3
"""Framefinder's web server: search the collection that offline.py built.

    python server.py [--host 127.0.0.1] [--port 5000] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import logging
import sys

from app import create_app
from app.settings import FIELDS, Settings, help_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="server.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in FIELDS:  # every setting; default None: not given, so the environment or instance file may say
        parser.add_argument(f"--{f.name.replace('_', '-')}", default=None, help=help_text(f.name),
                            **({"action": "store_const", "const": True} if f.kind is bool else {}))
    return parser


def serve(settings: Settings) -> int:
    """Load the collection and the model now (not on the first query), then serve until Ctrl+C."""
    from app import eval_runs
    from app.encoders import WeightsUnavailable
    from app.search import QueryError
    from app.services import searcher
    from app.startup import check_catalogue, explain

    try:
        app = create_app(settings=settings)
        with app.extensions["sessions"].begin() as session:
            marked = eval_runs.mark_interrupted(session)  # runs of an earlier server that stopped mid-way
        if marked:
            print(f"note: {marked} evaluation run(s) of an earlier server were interrupted; marked as failed",
                  file=sys.stderr)
        with app.app_context():
            check_catalogue(app.extensions["collection"], settings)
            try:
                searcher()
            except QueryError as exc:
                print(f"note: {exc}", file=sys.stderr)
    except WeightsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a broken data dir gets a sentence; anything else re-raises
        sentence = explain(exc, settings)
        if sentence is None:
            raise
        print(f"error: {sentence}", file=sys.stderr)
        return 2
    from app.job_worker import start_job_worker
    from app.upload_store import Limits, PartialUploads

    start_job_worker(app)  # once the collection is known good; jobs an earlier server left running resume here
    PartialUploads(app.extensions["layout"], Limits.from_settings(settings)).expire()
    print(f"Framefinder serving http://{settings.host}:{settings.port}/", flush=True)
    app.run(host=settings.host, port=settings.port, threaded=True, use_reloader=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = Settings.load(vars(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
