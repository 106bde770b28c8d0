"""Running Framefinder as a user does: offline.py and server.py as separate processes, HTTP over a socket."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import NO_WORDS, ROOT, TINY_CONFIG, TINY_MODEL

MODEL_ARGS = ["--model", TINY_MODEL, "--model-config", str(TINY_CONFIG), "--device", "cpu", "--no-progress"]
TINY_ARGS = [*MODEL_ARGS, *NO_WORDS]  # words (OCR, speech) are read in tests/test_words.py


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python offline.py ARGS` in a fresh process."""
    return subprocess.run([sys.executable, str(ROOT / "offline.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(data_dir: Path, *extra: str, ready_timeout: float = 120):
    """`python server.py --data-dir DIR` on a free port; yields its base URL, stops it afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--data-dir", str(data_dir), "--port",
                             str(port), "--model-config", str(TINY_CONFIG), "--device", "cpu", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server.py exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                urllib.request.urlopen(base + "/login", timeout=5).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise AssertionError("server.py did not answer in time") from None
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post_image(url: str, image: Path, fields: dict[str, str] | None = None) -> tuple[int, dict]:
    """A multipart POST with the file as `image` plus form fields; returns (status, JSON body)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + image.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, data=b"".join(parts), method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
