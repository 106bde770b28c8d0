"""The long-lived objects of a running server: database sessions, the collection, the model."""
from __future__ import annotations

import threading

from flask import Flask, current_app

from app.collection import Collection
from app.db import open_database
from app.paths import DataLayout
from app.search import Searcher


def init_services(app: Flask, layout: DataLayout) -> None:
    sessions = open_database(app.config["DATABASE_URL"], layout.data_dir)
    app.extensions["sessions"] = sessions
    app.extensions["collection"] = Collection(layout, sessions, app.config["INDEX_CHECK_SECONDS"])
    app.extensions["searcher_lock"] = threading.Lock()
    if app.config.get("ENCODER") is not None:
        app.extensions["searcher"] = Searcher(app.extensions["collection"], app.config["ENCODER"])


def searcher() -> Searcher:
    """The model named by the index, loaded once on first use (it is the slow part of start-up)."""
    ext = current_app.extensions
    if "searcher" not in ext:
        with ext["searcher_lock"]:
            if "searcher" not in ext:
                ext["searcher"] = Searcher(ext["collection"], load_encoder_for_index(current_app))
    return ext["searcher"]


def load_encoder_for_index(app: Flask):
    from app.encoders import encoder_for_index, register_model_configs

    register_model_configs(app.config.get("MODEL_CONFIG"))
    snap = app.extensions["collection"].snapshot()
    if snap is None:
        from app.search import QueryError

        raise QueryError("the collection has no index yet: run `python offline.py index PATH` first")
    meta = snap.bundle.meta
    return encoder_for_index(meta, app.config.get("DEVICE", "auto"), app.extensions["settings"].text_engine,
                             snap.bundle)


def face_searcher():
    """Face search over the faces' own index (its model is loaded on first use)."""
    from app.face_search import FaceSearcher, ServedIndex

    ext = current_app.extensions
    if "face_searcher" not in ext:
        with ext["searcher_lock"]:
            if "face_searcher" not in ext:
                ext["face_searcher"] = FaceSearcher(ext["collection"], ServedIndex(ext["layout"].face_index_dir),
                                                    ext["sessions"])
    return ext["face_searcher"]


def region_searcher():
    """Search over detected objects (the regions index)."""
    from app.face_search import ServedIndex
    from app.region_search import RegionSearcher

    ext = current_app.extensions
    if "region_searcher" not in ext:
        with ext["searcher_lock"]:
            if "region_searcher" not in ext:
                ext["region_searcher"] = RegionSearcher(ext["collection"],
                                                        ServedIndex(ext["layout"].regions_index_dir), ext["sessions"])
    return ext["region_searcher"]


def collection() -> Collection:
    return current_app.extensions["collection"]


def sessions():
    return current_app.extensions["sessions"]
