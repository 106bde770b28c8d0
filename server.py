#!/usr/bin/env python3
"""Framefinder's web server: search the collection that offline.py built.

    python server.py [--host 127.0.0.1] [--port 5000] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import logging
import sys

from app import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="server.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--data-dir", default=None, help="collection folder given to offline.py (default: static/)")
    parser.add_argument("--model-config", default=None, help="extra open_clip model config, as for offline.py")
    parser.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda if available)")
    parser.add_argument("--baseline-weights", default=None, metavar="PATH",
                        help="folder (or file) with torchvision's vgg16/resnet50 checkpoints for the evaluation "
                             "page's baselines (default: torchvision's cache, else download)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from app.encoders import WeightsUnavailable
    from app.paths import DataLayout
    from app.search import QueryError
    from app.services import searcher
    from app.startup import check_catalogue, explain

    try:
        app = create_app({"DATA_DIR": args.data_dir, "MODEL_CONFIG": args.model_config, "DEVICE": args.device,
                          "BASELINE_WEIGHTS": args.baseline_weights})
        with app.app_context():
            check_catalogue(app.extensions["collection"], app.extensions["layout"])
            try:
                searcher()  # load the model now, not on the first query
            except QueryError as exc:
                print(f"note: {exc}", file=sys.stderr)
    except WeightsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a broken data dir gets a sentence; anything else re-raises
        sentence = explain(exc, DataLayout.from_data_dir(args.data_dir))
        if sentence is None:
            raise
        print(f"error: {sentence}", file=sys.stderr)
        return 2
    print(f"Framefinder serving http://{args.host}:{args.port}/", flush=True)
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
