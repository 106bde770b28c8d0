"""Video ingest spread over a Ray cluster: decoding, shot detection and keyframe choice as Ray tasks on CPU nodes,
CLIP in Ray actors (one per GPU when the cluster has GPUs). The driver (offline.py) keeps everything that writes:
the keyframe files, the feature files and the catalogue, one video at a time and in order, exactly as without Ray,
so the incremental, resumable and bad-input rules are the same code.

Back-pressure: at most `workers * PREFETCH` videos are in flight; a finished video's keyframes (JPEG bytes) and
features are taken by the driver before the next one is sent, so the object store holds a bounded amount.
A worker killed mid-video is retried by Ray (`max_retries`); a killed actor is restarted (`max_restarts`); a killed
driver leaves only whole videos in the catalogue, and the next run skips them.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.paths import PROJECT_ROOT

log = logging.getLogger(__name__)
PREFETCH = 2  # videos in flight per worker
TASK_RETRIES = 3  # a video task whose worker died is run again this many times
ACTOR_RESTARTS = 3
CONNECT_TIMEOUT_S = 5.0
HEAD_CHECK_S = 2.0  # while waiting for a video, the head's port is tried this often
_TRANSNET = None  # per worker process: loaded by the first video task it runs


class RayUnavailable(RuntimeError):
    """The cluster named by --ray cannot be reached, or Ray is missing."""


@dataclass
class PreparedVideo:
    """What a video task sends back: the VideoResult without keyframe pixels, and each keyframe as its JPEG file's
    bytes (the actor decodes the same bytes, so CLIP sees what a reader of the file sees, as without Ray)."""

    result: object  # app.video_ingest.VideoResult, keyframes' images dropped
    jpegs: list[bytes]


def _address_reachable(address: str) -> None:
    """Fail in seconds with the setting's name, rather than Ray's own long retry loop: the head's port must accept a
    connection and speak gRPC (HTTP/2), as Ray's GCS does; another service on that port would keep Ray's client
    retrying for minutes."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:6379
    shown = address[:200]
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or len(address) > 1000:
        raise RayUnavailable(f"--ray takes auto or HOST:PORT of a Ray cluster's head (e.g. 10.0.0.5:6379), "
                             f"not '{shown}'")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no such host"
        raise RayUnavailable(f"cannot reach the Ray cluster at {shown} (--ray): {reason}. Start it "
                             f"with `ray start --head` there, or run without --ray.") from None
    import grpc

    channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        raise RayUnavailable(f"{shown} answers, but not as a Ray cluster's head (--ray): give the port `ray start "
                             f"--head` printed (6379 unless --port was given)") from None
    finally:
        channel.close()


def _token_available() -> bool:
    """Ray (2.59+) secures a cluster with the token in ~/.ray/auth_token when there is one, but a driver joining it
    sends the token only in token mode: without this, joining a `ray start` cluster of this machine fails."""
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def connect(address: str) -> None:
    """`auto`: the cluster `ray start` made on this machine (or RAY_ADDRESS), else a new local one; HOST:PORT: that
    cluster's head. Workers import this checkout (same path and virtualenv on every node, see the README)."""
    if "RAY_AUTH_MODE" not in os.environ and _token_available():
        os.environ["RAY_AUTH_MODE"] = "token"  # as `ray start` chose with the same token (read when ray is imported)
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs the ray package (pip install 'ray==2.60.0')") from None
    if ray.is_initialized():
        return
    if address != "auto":
        _address_reachable(address)
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
        p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}}
    try:
        ray.init(address=None if address == "auto" else address, runtime_env=runtime_env,
                 include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:
        raise RayUnavailable(f"could not join the Ray cluster at {address} (--ray): {exc}") from None


def _prepare(path: str, interval_s: float, keyframe_max_side: int, pinned: frozenset[int]) -> PreparedVideo:
    """A video task: one decoding pass, shots and keyframes, the keyframes as JPEG. Runs on any node."""
    global _TRANSNET
    from app.encoders import resolve_device
    from app.shots import load_transnet
    from app.store import encode_jpeg
    from app.video_ingest import process_video

    if _TRANSNET is None:
        _TRANSNET = load_transnet(resolve_device("auto"))
    result = process_video(Path(path), _TRANSNET, interval_s=interval_s, keyframe_max_side=keyframe_max_side,
                           pinned=pinned)
    jpegs = [encode_jpeg(kf.image)[0] for kf in result.keyframes]
    for kf in result.keyframes:
        kf.image = None  # the pixels travel once, as JPEG
    return PreparedVideo(result, jpegs)


class _ClipWorker:
    """A Ray actor holding one CLIP model (on its GPU when it was given one)."""

    def __init__(self, model: str, pretrained: str, batch_size: int, model_config: str | None) -> None:
        from app.encoders import ClipEncoder, register_model_configs

        register_model_configs(model_config)
        self.encoder = ClipEncoder(model, pretrained, "auto", batch_size)

    def fingerprint(self) -> str:
        return self.encoder.fingerprint

    def encode(self, prepared: PreparedVideo) -> np.ndarray:
        import cv2

        pixels = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for data in prepared.jpegs]
        if not pixels:
            return np.zeros((0, self.encoder.dim), np.float32)
        return self.encoder.encode_images(pixels)


class RayVideoPool:
    """Sends videos to the cluster and hands back (PreparedVideo, features) in the order they were sent."""

    def __init__(self, address: str, encoder, model_config: str | None = None, workers: int | None = None) -> None:
        connect(address)
        import ray

        self.address, self.head = address, ray.get_runtime_context().gcs_address

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.workers = max(1, int(workers or resources.get("CPU", 1)))
        self._task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_prepare)
        actor = ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES)(_ClipWorker)
        # with GPUs: one actor per GPU; without: one actor that takes no CPU slot, so one CPU still runs tasks
        options = [{"num_gpus": 1, "num_cpus": 0}] * min(gpus, 8) if gpus else [{"num_cpus": 0}]
        self.actors = [actor.options(**o).remote(encoder.model_name, encoder.pretrained, encoder.batch_size,
                                                 model_config) for o in options]
        for found in ray.get([a.fingerprint.remote() for a in self.actors]):
            if found != encoder.fingerprint:
                raise RayUnavailable(f"a Ray node loaded other CLIP weights (fingerprint {found}, here "
                                     f"{encoder.fingerprint}): give every node the same --pretrained file")
        self._turn = 0
        log.info("ray: %d CPU, %d GPU, %d video workers, %d CLIP actors", resources.get("CPU", 0), gpus,
                 self.workers, len(self.actors))

    @property
    def in_flight(self) -> int:
        return self.workers * PREFETCH

    def submit(self, path: Path, interval_s: float, keyframe_max_side: int, pinned: frozenset[int]):
        prepared = self._task.remote(str(path), interval_s, keyframe_max_side, pinned)
        actor = self.actors[self._turn % len(self.actors)]
        self._turn += 1
        return prepared, actor.encode.remote(prepared)

    def result(self, handle) -> tuple[PreparedVideo, np.ndarray]:
        """Wait for one video. The file's own problems (BadMediaFile, an OSError reading it) come back as themselves,
        so the run reports the file and goes on; anything else (a bug, a node lost past its retries) stops the run,
        which the next run resumes. The head is checked while waiting: Ray's own client would end the process a
        minute after losing it, without a word the user can act on."""
        import ray
        from ray.exceptions import RayTaskError

        from app.media import BadMediaFile

        refs = list(handle)
        while True:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=HEAD_CHECK_S)
            if len(done) == len(refs):
                break
            self._check_head()
        try:
            prepared, features = ray.get(refs)
        except RayTaskError as exc:
            if isinstance(exc.cause, BadMediaFile | OSError):
                raise exc.cause from None
            raise
        return prepared, features

    def _check_head(self) -> None:
        host, _, port = self.head.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
                return
        except OSError:
            pass
        raise RayUnavailable(f"the Ray cluster at {self.address} went away during the run (--ray); the videos "
                             f"committed before are kept: run the same command again when it is back")
